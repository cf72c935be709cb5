""""Written" entries committed by their own event loop, on real SQLite files.

While the writer thread sleeps with nothing queued, a loop commits the
"written" entries its requests appended during one turn itself, in one
transaction, instead of handing them to the writer and waiting for it to hand
them back. Order, cancellation and failure must come out as the writer's.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pacd.audit import AuditEntry, AuditLog
from pacd.errors import AuditError
from tests.unit.test_audit_pipelined_sync import PROMPT_S, Fsync, fsync, stored

__all__ = ["fsync"]  # the fixture, shared with the pipelined-sync tests

KEY = bytes(range(32))


def _written(log: AuditLog, target: str, *, durable: bool = False) -> asyncio.Task[AuditEntry]:
    return asyncio.ensure_future(log.append_async(
        "owner:uid=1", "session.current", target, "allow", "ok", durable=durable))


def test_written_entries_of_one_loop_turn_are_committed_by_the_loop_in_one_transaction(
        tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit.sqlite3", KEY, None)
    committed_on: list[int] = []
    log.add_listener(lambda _entry: committed_on.append(threading.get_ident()))

    async def main() -> tuple[int, list[AuditEntry]]:
        entries = await asyncio.gather(*(_written(log, str(i)) for i in range(20)))
        return threading.get_ident(), list(entries)

    try:
        loop_thread, entries = asyncio.run(main())
    finally:
        log.close()
    assert [e.seq for e in entries] == list(range(1, 21))
    assert {e.time for e in entries} == {entries[0].time}  # one batch, one time
    assert committed_on == [loop_thread] * 20  # not the writer's thread
    assert log.verify().ok


def test_a_written_entry_waits_behind_a_durable_one_queued_before_it(
        tmp_path: Path, fsync: Fsync) -> None:
    """The loop commits only when nothing is queued: an entry queued earlier (here a
    durable one waiting for the fsync in progress) keeps the lower seq."""
    path = tmp_path / "audit.sqlite3"
    log = AuditLog.open(path, KEY, None, fsync=fsync)
    fsync.hold()

    async def main() -> list[tuple[str, int]]:
        first = asyncio.create_task(log.append_async("agent", "data.read", "k1", "allow", "ok"))
        assert await asyncio.to_thread(fsync.started.wait, PROMPT_S)
        second = asyncio.create_task(log.append_async("agent", "data.read", "k2", "allow", "ok"))
        await asyncio.sleep(0)  # waits-on: nothing; the task runs up to its wait: queued
        read = await asyncio.wait_for(_written(log, "/v1/sessions/current"), PROMPT_S)
        assert not second.done()  # a written entry is not held up by the fsync
        fsync.release()
        durable = await asyncio.wait_for(asyncio.gather(first, second), PROMPT_S)
        return [(e.target, e.seq) for e in (*durable, read)]

    try:
        assert asyncio.run(main()) == [("k1", 1), ("k2", 2), ("/v1/sessions/current", 3)]
    finally:
        fsync.release()
        log.close()
    assert stored(path) == [(1, "data.read"), (2, "data.read"), (3, "session.current")]


@pytest.mark.parametrize("durable", [False, True], ids=["written", "durable"])
def test_an_entry_cancelled_before_its_loop_turn_ends_is_never_written(
        tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "audit.sqlite3"
    log = AuditLog.open(path, KEY, None)

    async def main() -> None:
        gone = _written(log, "gone", durable=durable)
        await asyncio.sleep(0)  # waits-on: nothing; the task appends, the commit is next turn
        gone.cancel()
        kept = await _written(log, "kept")
        assert kept.seq == 1
        with pytest.raises(asyncio.CancelledError):
            await gone

    try:
        asyncio.run(main())
    finally:
        log.close()
    assert stored(path) == [(1, "session.current")]


def test_a_written_entry_whose_appender_is_cancelled_after_the_commit_is_noted(
        tmp_path: Path) -> None:
    """Committed, then its request gone: the log must not show a plain "allow" for it."""
    path = tmp_path / "audit.sqlite3"
    log = AuditLog.open(path, KEY, None)

    async def main() -> None:
        task = _written(log, "late")
        await asyncio.sleep(0)  # waits-on: nothing; the task appends
        await asyncio.sleep(0)  # waits-on: nothing; the loop commits and wakes the task
        assert log.head()[0] == 1
        task.cancel()  # before the task runs again
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
        # The note is the writer's, on its thread: a durable append after it waits its turn.
        log.append("pacd", "daemon.stop", "", "info", "stopped")
        entries = log.entries()
    finally:
        log.close()
    assert [(e.seq, e.action) for e in entries] == [
        (1, "session.current"), (2, "audit.abandoned"), (3, "daemon.stop")]
    assert entries[1].details == {"seqs": [1]}


def test_a_failed_commit_on_the_loop_fails_its_appenders_and_the_log_recovers(
        tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    log = AuditLog.open(path, KEY, None)
    blocker = sqlite3.connect(path, isolation_level=None, timeout=0)

    async def main() -> None:
        log._conn.execute("PRAGMA busy_timeout = 0")  # another writer holds the file: fail now
        blocker.execute("BEGIN IMMEDIATE")
        results = await asyncio.gather(_written(log, "a"), _written(log, "b"),
                                       return_exceptions=True)
        assert [type(r) for r in results] == [AuditError, AuditError]
        blocker.execute("ROLLBACK")
        after = await _written(log, "c")
        assert after.seq == 1

    try:
        asyncio.run(main())
    finally:
        blocker.close()
        log.close()
    assert stored(path) == [(1, "session.current")]


def test_entries_gathered_when_the_log_closes_fail_instead_of_hanging(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit.sqlite3", KEY, None)

    async def main() -> list[object]:
        late = [_written(log, "w"), _written(log, "d", durable=True)]
        await asyncio.sleep(0)  # waits-on: nothing; both append, the turn's end is next
        log.close()
        return await asyncio.wait_for(asyncio.gather(*late, return_exceptions=True), PROMPT_S)

    outcomes = asyncio.run(main())
    assert [type(o) for o in outcomes] == [AuditError, AuditError]
    assert all("closed" in str(o) for o in outcomes)


def _eventually(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + PROMPT_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)  # polling the writer's state; nothing signals this step
    return True


def test_a_note_held_while_a_loop_commits_is_written_once_the_loop_is_done(
        tmp_path: Path) -> None:
    """The writer found a seq to note as abandoned while a loop held its role: the
    loop's release must send it back to it, not leave the note for whatever wakes
    it next (here nothing would: no fsync of the written entry is due meanwhile)."""
    log = AuditLog.open(tmp_path / "audit.sqlite3", KEY, None, written_sync_s=3600.0)

    async def main() -> None:
        task = _written(log, "late")
        await asyncio.sleep(0)  # waits-on: nothing; the task appends
        await asyncio.sleep(0)  # waits-on: nothing; the loop commits and wakes the task
        assert log._take_inline()  # another turn's commit on the loop is under way
        try:
            task.cancel()  # the first entry's request goes away: it must be noted
            with pytest.raises(asyncio.CancelledError):
                await task
            assert _eventually(lambda: not log._gave_up)  # the writer took it, and waits
        finally:
            log._release_inline()
        assert _eventually(lambda: log.head()[0] == 2), "the note was never written"

    try:
        asyncio.run(main())
        entries = log.entries()
    finally:
        log.close()
    assert [(e.seq, e.action) for e in entries] == [(1, "session.current"),
                                                     (2, "audit.abandoned")]
