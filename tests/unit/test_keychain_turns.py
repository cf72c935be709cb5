"""The keychain's calls take turns (pacd.vault.keychain._Turns): a call given up by its
caller is never made once its turn comes, and one that hangs gives its turn away."""

from __future__ import annotations

import threading
import time

from pacd.vault.keychain import _Turn, _Turns


def _soon(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


def test_a_call_given_up_while_waiting_is_never_made() -> None:
    # Its caller has reported a failure: making the call later (a write landing
    # after "the keychain did not answer") would contradict it.
    turns = _Turns()
    holder, waiter = _Turn(), _Turn()
    assert turns.take(holder, _soon())
    taken: list[bool] = []
    thread = threading.Thread(target=lambda: taken.append(turns.take(waiter, _soon())))
    thread.start()
    turns.give_up(waiter)
    thread.join(10)
    assert taken == [False]
    turns.end(holder)
    assert turns.take(_Turn(), _soon(0.5))


def test_a_hung_call_given_up_frees_its_turn() -> None:
    turns = _Turns()
    hung = _Turn()
    assert turns.take(hung, _soon())
    turns.give_up(hung)  # its caller timed out; the call itself may never return
    nxt = _Turn()
    assert turns.take(nxt, _soon(0.5))
    turns.end(hung)  # returning at last does not end another call's turn
    assert not turns.take(_Turn(), time.monotonic() + 0.05)
    turns.end(nxt)
    assert turns.take(_Turn(), _soon(0.5))


def test_a_turn_not_come_by_its_deadline_is_not_taken() -> None:
    turns = _Turns()
    assert turns.take(_Turn(), _soon())
    started = time.monotonic()
    assert not turns.take(_Turn(), started + 0.1)
    assert time.monotonic() - started >= 0.1
