"""Presence tokens: hashed storage, binding, expiry on two clocks, single use."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacd.core.models import SecurityLevel
from pacd.errors import (
    NotFound,
    PacdError,
    PresenceRequired,
    TokenExpired,
    TokenRevoked,
    Unauthorized,
)
from pacd.integrity import RowSealer
from pacd.presence.clock import SettableClock
from pacd.presence.owner import OwnerRegistry
from pacd.presence.tokens import TokenInfo, TokenService
from pacd.store import Store


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock()


@pytest.fixture
def store(tmp_path: Path, clock: SettableClock) -> Store:
    s = Store(tmp_path / "state.sqlite3")
    OwnerRegistry(s).create_owner("Ada", clock.wall())
    return s


@pytest.fixture
def tokens(store: Store, clock: SettableClock) -> TokenService:
    return TokenService(store, clock, lifetime_s=3600)


def test_token_is_random_and_stored_only_hashed(tokens: TokenService, store: Store,
                                                tmp_path: Path) -> None:
    issued = tokens.issue(SecurityLevel.enhanced)
    other = tokens.issue(SecurityLevel.enhanced)
    assert issued.token != other.token and len(issued.token) >= 43  # 256 bits, base64url
    rows = store.query("SELECT * FROM presence_tokens")
    assert len(rows) == 2
    row = next(r for r in rows if r["token_id"] == issued.token_id)
    assert bytes(row["token_hash"]) == hashlib.sha256(issued.token.encode()).digest()
    for r in rows:
        assert issued.token not in [str(v) for v in tuple(r)]
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("state.sqlite3*"))
    assert issued.token.encode() not in raw


def test_check_returns_binding(tokens: TokenService, store: Store) -> None:
    issued = tokens.issue("biometric", scope="containers")
    info = tokens.check(issued.token, SecurityLevel.enhanced, scope="containers")
    owner = OwnerRegistry(store).get_owner()
    assert owner is not None
    assert (info.owner_id, info.level, info.scope) == (owner.id, SecurityLevel.biometric,
                                                       "containers")
    assert info.expires_at == issued.expires_at


def test_missing_and_unknown_tokens(tokens: TokenService) -> None:
    with pytest.raises(Unauthorized) as missing:
        tokens.check(None, SecurityLevel.enhanced)
    assert missing.value.code == "unauthorized"
    with pytest.raises(Unauthorized, match="unknown"):
        tokens.check("not-a-token", SecurityLevel.enhanced)


def test_level_too_low_names_the_required_level(tokens: TokenService) -> None:
    issued = tokens.issue(SecurityLevel.enhanced)
    with pytest.raises(PresenceRequired) as low:
        tokens.check(issued.token, SecurityLevel.biometric)
    assert low.value.required_level == "biometric"
    assert low.value.to_wire()["error"]["required_level"] == "biometric"


def test_scope_is_bound(tokens: TokenService) -> None:
    issued = tokens.issue(SecurityLevel.biometric, scope="container:c1")
    tokens.check(issued.token, SecurityLevel.biometric, scope="container:c1")
    with pytest.raises(PresenceRequired, match="another action"):
        tokens.check(issued.token, SecurityLevel.biometric, scope="container:c2")


def test_expires_after_one_hour(tokens: TokenService, clock: SettableClock) -> None:
    issued = tokens.issue(SecurityLevel.biometric)
    assert issued.expires_at == clock.wall() + 3600
    clock.advance(3599)
    tokens.check(issued.token, SecurityLevel.biometric)
    clock.advance(2)  # 1 h + 1 s
    with pytest.raises(TokenExpired) as expired:
        tokens.check(issued.token, SecurityLevel.biometric)
    assert expired.value.code == "token_expired"


def test_wall_clock_set_back_does_not_extend_a_token(tokens: TokenService,
                                                     clock: SettableClock) -> None:
    issued = tokens.issue(SecurityLevel.enhanced)
    start = clock.wall()
    clock.advance(3601)
    clock.set_wall(start)  # someone sets the system time back an hour
    with pytest.raises(TokenExpired):
        tokens.check(issued.token, SecurityLevel.enhanced)


def test_wall_time_governs_across_restarts(store: Store, clock: SettableClock) -> None:
    issued = TokenService(store, clock).issue(SecurityLevel.enhanced)
    # New process: monotonic clock restarted from an unrelated value.
    later = SettableClock(wall=clock.wall() + 1800, monotonic=5.0)
    restarted = TokenService(store, later)
    restarted.check(issued.token, SecurityLevel.enhanced)
    start_wall = later.wall()
    later.advance(1801)
    later.set_wall(start_wall)  # wall set back after the restart: monotonic still counts
    with pytest.raises(TokenExpired):
        restarted.check(issued.token, SecurityLevel.enhanced)
    after = SettableClock(wall=clock.wall() + 3601, monotonic=1.0)
    with pytest.raises(TokenExpired):
        TokenService(store, after).check(issued.token, SecurityLevel.enhanced)


def test_carbon_proof_token_works_once(tokens: TokenService) -> None:
    issued = tokens.issue(SecurityLevel.carbonProof, scope="link:abc")
    assert issued.single_use
    info = tokens.check(issued.token, SecurityLevel.carbonProof, scope="link:abc")
    assert info.level == SecurityLevel.carbonProof
    with pytest.raises(TokenRevoked, match="already used"):
        tokens.check(issued.token, SecurityLevel.carbonProof, scope="link:abc")


def test_single_use_consumed_atomically_under_concurrency(tokens: TokenService) -> None:
    issued = tokens.issue(SecurityLevel.carbonProof)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def use() -> None:
        barrier.wait()
        try:
            tokens.check(issued.token, SecurityLevel.carbonProof)
            outcomes.append("ok")
        except TokenRevoked:
            outcomes.append("refused")

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] + ["refused"] * 7


def test_revoke_and_revoke_all(tokens: TokenService) -> None:
    a = tokens.issue(SecurityLevel.enhanced)
    b = tokens.issue(SecurityLevel.biometric)
    c = tokens.issue(SecurityLevel.biometric)
    tokens.revoke(a.token_id)
    with pytest.raises(TokenRevoked) as revoked:
        tokens.check(a.token, SecurityLevel.enhanced)
    assert revoked.value.code == "token_revoked"
    tokens.check(b.token, SecurityLevel.enhanced)
    assert tokens.revoke_all() == 2
    for t in (b, c):
        with pytest.raises(TokenRevoked):
            tokens.check(t.token, SecurityLevel.enhanced)
    with pytest.raises(NotFound):
        tokens.revoke("nope")


def test_issue_needs_an_owner(tmp_path: Path, clock: SettableClock) -> None:
    with pytest.raises(NotFound, match="owner"):
        TokenService(Store(tmp_path / "empty.sqlite3"), clock).issue(SecurityLevel.enhanced)


def test_an_edit_cannot_undo_a_use_a_revocation_or_raise_a_level(
        tokens: TokenService, store: Store) -> None:
    used = tokens.issue(SecurityLevel.carbonProof)
    tokens.check(used.token, SecurityLevel.carbonProof)
    revoked = tokens.issue(SecurityLevel.biometric)
    tokens.revoke(revoked.token_id)
    weak = tokens.issue(SecurityLevel.enhanced)
    with store.transaction() as conn:
        conn.execute("UPDATE presence_tokens SET consumed_at = NULL, revoked_at = NULL")
        conn.execute("UPDATE presence_tokens SET level = 'carbonProof' WHERE token_id = ?",
                     (weak.token_id,))
    for token in (used.token, revoked.token, weak.token):
        with pytest.raises(Unauthorized, match="unknown token"):
            tokens.check(token, SecurityLevel.enhanced)
    assert {f["key"] for f in store.integrity.failures()} == {
        used.token_id, revoked.token_id, weak.token_id}
    # revoke_all leaves rows that fail their MAC as they are: nothing is repaired.
    assert tokens.revoke_all() == 0
    with pytest.raises(Unauthorized):
        tokens.check(weak.token, SecurityLevel.enhanced)


def _check_in_thread(tokens: TokenService, token: str, level: SecurityLevel
                     ) -> tuple[threading.Thread, threading.Event, list[object]]:
    done = threading.Event()
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(tokens.check(token, level))
        except Exception as exc:  # handed to the test, which asserts on it
            outcome.append(exc)
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, done, outcome


def test_a_token_check_does_not_queue_behind_another_connections_write_lock(
        tokens: TokenService, tmp_path: Path) -> None:
    issued = tokens.issue(SecurityLevel.enhanced)
    other = sqlite3.connect(tmp_path / "state.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds SQLite's write lock, like a commit mid-fsync
    other.execute("DELETE FROM presence_tokens")  # uncommitted: the check must not see it
    try:
        thread, done, outcome = _check_in_thread(tokens, issued.token, SecurityLevel.enhanced)
        # A check that took the write lock would wait for the busy timeout (30 s).
        assert done.wait(5), "the token check waited for another connection's write lock"
        assert [type(o) for o in outcome] == [TokenInfo]
    finally:
        other.execute("ROLLBACK")
        other.close()
    thread.join()


class _Undone(Exception):
    pass


@contextlib.contextmanager
def _write_held_open(store: Store, sql: str) -> Iterator[None]:
    """Another thread's write transaction that ran ``sql`` and stays open (as a handler's
    that writes state and waits for its audit entry's fsync) until the block ends; then
    it fails, so the rows stay as they were (and MAC-valid)."""
    inside, release = threading.Event(), threading.Event()

    def writer() -> None:
        with contextlib.suppress(_Undone), store.transaction() as conn:
            conn.execute(sql)
            inside.set()
            release.wait(30)
            raise _Undone

    holder = threading.Thread(target=writer)
    holder.start()
    try:
        assert inside.wait(10)
        yield
    finally:
        release.set()
        holder.join()


def test_a_token_check_does_not_queue_behind_a_write_transaction_waiting_on_its_fsync(
        tokens: TokenService, store: Store) -> None:
    issued = tokens.issue(SecurityLevel.enhanced)
    with _write_held_open(store, "UPDATE presence_tokens SET scope = 'other'"):
        thread, done, outcome = _check_in_thread(tokens, issued.token, SecurityLevel.enhanced)
        assert done.wait(5), "the token check waited for another request's write transaction"
        # It saw the committed state, not the writer's uncommitted change.
        assert [type(o) for o in outcome] == [TokenInfo]
        assert isinstance(outcome[0], TokenInfo) and outcome[0].scope == "*"
    thread.join()


def test_a_single_use_token_is_consumed_by_a_write_that_waits_for_the_lock(
        tokens: TokenService, tmp_path: Path) -> None:
    issued = tokens.issue(SecurityLevel.carbonProof)
    other = sqlite3.connect(tmp_path / "state.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        thread, done, outcome = _check_in_thread(tokens, issued.token, SecurityLevel.carbonProof)
        # Consuming is a write: it waits for the lock (up to the busy timeout)...
        assert not done.wait(0.5)  # waits-on: external clock — proves it is still blocked
    finally:
        other.execute("ROLLBACK")
        other.close()
    thread.join(30)
    # ...and, once it has it, uses the token up.
    assert [type(o) for o in outcome] == [TokenInfo]
    with pytest.raises(TokenRevoked, match="already used"):
        tokens.check(issued.token, SecurityLevel.carbonProof)


# -- the check on the event loop (check_if_quick) -------------------------------------


def test_a_quick_check_refuses_every_token_a_full_check_refuses(
        tokens: TokenService, clock: SettableClock) -> None:
    revoked = tokens.issue(SecurityLevel.biometric)
    tokens.revoke(revoked.token_id)
    low = tokens.issue(SecurityLevel.enhanced)
    scoped = tokens.issue(SecurityLevel.biometric, scope="containers")
    used = tokens.issue(SecurityLevel.carbonProof)
    tokens.check(used.token, SecurityLevel.carbonProof)
    cases: list[tuple[str | None, str]] = [
        (None, "enhanced"), ("not-a-token", "enhanced"), ("\udcff" * 10, "enhanced"),
        (revoked.token, "enhanced"), (low.token, "biometric"), (scoped.token, "enhanced"),
        (used.token, "carbonProof"), ("expired", "enhanced")]
    for token, level in cases:
        if token == "expired":
            clock.advance(3601)
            token = scoped.token
        with pytest.raises(PacdError) as full:
            tokens.check(token, level)
        with pytest.raises(PacdError) as quick:
            tokens.check_if_quick(token, level)
        assert quick.value.to_wire() == full.value.to_wire(), token
    assert isinstance(quick.value, TokenExpired)  # the last case: past its hour


def test_a_revoked_token_is_refused_on_the_loop(tokens: TokenService) -> None:
    issued = tokens.issue(SecurityLevel.enhanced)
    info = tokens.check_if_quick(issued.token, SecurityLevel.enhanced)
    assert info is not None and info.token_id == issued.token_id
    tokens.revoke(issued.token_id)
    with pytest.raises(TokenRevoked, match="revoked"):
        tokens.check_if_quick(issued.token, SecurityLevel.enhanced)


def test_a_quick_check_leaves_a_single_use_token_to_the_full_check(
        tokens: TokenService) -> None:
    issued = tokens.issue(SecurityLevel.carbonProof)
    # Its use is a write transaction: not on the loop, and not used up by asking.
    assert tokens.check_if_quick(issued.token, SecurityLevel.carbonProof) is None
    assert tokens.check_if_quick(issued.token, SecurityLevel.carbonProof) is None
    assert tokens.check(issued.token, SecurityLevel.carbonProof).single_use
    with pytest.raises(TokenRevoked, match="already used"):
        tokens.check_if_quick(issued.token, SecurityLevel.carbonProof)


def test_a_quick_check_never_waits_for_a_busy_read_connection(
        tokens: TokenService, store: Store) -> None:
    issued = tokens.issue(SecurityLevel.enhanced)
    inside, release = threading.Event(), threading.Event()

    def reader() -> None:  # another request's check, in a worker thread
        with store.read():
            inside.set()
            release.wait(30)

    holder = threading.Thread(target=reader)
    holder.start()
    try:
        assert inside.wait(10)
        quick: list[object] = []
        asker = threading.Thread(
            target=lambda: quick.append(tokens.check_if_quick(issued.token, "enhanced")))
        asker.start()
        asker.join(5)
        assert not asker.is_alive(), "the quick check waited for the read connection"
        assert quick == [None]  # busy: the caller falls back to check() in a thread
        # ...and that fallback answers as soon as the connection is free.
        thread, done, outcome = _check_in_thread(tokens, issued.token, SecurityLevel.enhanced)
    finally:
        release.set()
        holder.join()
    assert done.wait(10)
    thread.join()
    assert [type(o) for o in outcome] == [TokenInfo]
    assert tokens.check_if_quick(issued.token, SecurityLevel.enhanced) is not None


def test_a_quick_check_does_not_see_an_uncommitted_write(
        tokens: TokenService, store: Store) -> None:
    issued = tokens.issue(SecurityLevel.enhanced)
    with _write_held_open(store, "UPDATE presence_tokens SET revoked_at = 1"):
        info = tokens.check_if_quick(issued.token, SecurityLevel.enhanced)
        assert info is not None and info.scope == "*"


# -- what a quick check remembers between requests -------------------------------------


def test_a_remembered_token_is_read_again_after_an_outside_edit_of_its_row(
        tokens: TokenService, store: Store, tmp_path: Path) -> None:
    """An edit by another process (no MAC key) is seen by the next check, not hidden
    behind what the check before it found."""
    issued = tokens.issue(SecurityLevel.enhanced)
    assert tokens.check_if_quick(issued.token, SecurityLevel.enhanced) is not None
    outside = sqlite3.connect(tmp_path / "state.sqlite3")
    try:
        with outside:
            outside.execute("UPDATE presence_tokens SET revoked_at = 1")
    finally:
        outside.close()
    with pytest.raises(Unauthorized, match="unknown token"):  # its MAC no longer checks
        tokens.check_if_quick(issued.token, SecurityLevel.enhanced)


def test_a_remembered_token_is_refused_once_another_process_revokes_it(
        tokens: TokenService, store: Store, clock: SettableClock, tmp_path: Path) -> None:
    issued = tokens.issue(SecurityLevel.enhanced)
    assert tokens.check_if_quick(issued.token, SecurityLevel.enhanced) is not None
    other = Store(tmp_path / "state.sqlite3")
    try:
        other.integrity = store.integrity  # the same vault key, as a second daemon
        TokenService(other, clock).revoke(issued.token_id)
    finally:
        other.close()
    with pytest.raises(TokenRevoked, match="revoked"):
        tokens.check_if_quick(issued.token, SecurityLevel.enhanced)


def test_a_remembered_token_still_expires_and_keeps_its_level_and_scope(
        tokens: TokenService, clock: SettableClock) -> None:
    issued = tokens.issue(SecurityLevel.enhanced, scope="containers")
    assert tokens.check_if_quick(issued.token, SecurityLevel.enhanced, "containers")
    with pytest.raises(PresenceRequired, match="proves only enhanced"):
        tokens.check_if_quick(issued.token, SecurityLevel.biometric, "containers")
    with pytest.raises(PresenceRequired, match="another action"):
        tokens.check_if_quick(issued.token, SecurityLevel.enhanced, "plugins")
    clock.advance(3601)
    with pytest.raises(TokenExpired):
        tokens.check_if_quick(issued.token, SecurityLevel.enhanced, "containers")


def test_a_remembered_token_is_not_trusted_under_another_row_key(
        tokens: TokenService, store: Store) -> None:
    issued = tokens.issue(SecurityLevel.enhanced)
    assert tokens.check_if_quick(issued.token, SecurityLevel.enhanced) is not None
    store.integrity = RowSealer.ephemeral()  # rows sealed before no longer check
    with pytest.raises(Unauthorized):
        tokens.check_if_quick(issued.token, SecurityLevel.enhanced)


def test_a_repeated_quick_check_reads_only_whether_the_database_changed(
        tokens: TokenService, store: Store) -> None:
    issued = tokens.issue(SecurityLevel.enhanced)
    statements: list[str] = []
    reader = store._reader  # the connection the loop's checks read through
    assert tokens.check_if_quick(issued.token, SecurityLevel.enhanced) is not None
    reader.set_trace_callback(statements.append)
    try:
        for _ in range(3):
            assert tokens.check_if_quick(issued.token, SecurityLevel.enhanced) is not None
    finally:
        reader.set_trace_callback(None)
    assert statements == ["PRAGMA data_version"] * 3
