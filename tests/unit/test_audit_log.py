"""The audit log on real SQLite files, with the real passphrase keystore for checkpoints.

tests/system/test_keychain_audit.py runs the checkpoint through gnome-keyring.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacd.audit import (
    CHECKPOINT_FAILURE_LIMIT,
    AuditEntry,
    AuditLog,
    checkpoint_name,
    read_checkpoint,
)
from pacd.audit.entry import canonical_entry
from pacd.audit.writer import _ChainKey, _entry_parts, _splice
from pacd.core.canonical import canonical_json
from pacd.errors import AuditError, InvalidRequest
from pacd.vault import PassphraseSecretStore

KEY = bytes(range(32))


@pytest.fixture
def secrets(tmp_path: Path) -> PassphraseSecretStore:
    return PassphraseSecretStore(tmp_path / "keys.sealed", b"pw")


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.sqlite3"


@pytest.fixture
def audit(log_path: Path, secrets: PassphraseSecretStore) -> Iterator[AuditLog]:
    log = AuditLog.open(log_path, KEY, secrets)
    yield log
    log.close()


def fill(log: AuditLog, n: int) -> list[AuditEntry]:
    return [
        log.append(f"agent-{i % 3}", "data.read", f"home/personal/k{i}",
                   ("allow", "deny", "info")[i % 3], f"reason {i}", {"i": i, "tags": ["a"]})
        for i in range(n)
    ]


def tamper(path: Path, sql: str, params: tuple[object, ...] = ()) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(sql, params)


def test_append_and_read_back(audit: AuditLog) -> None:
    entries = fill(audit, 5)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert audit.head() == (5, entries[-1].mac)
    read = audit.entries(after=2, limit=2)
    assert [e.seq for e in read] == [3, 4]
    assert read[0] == entries[2]
    doc = read[0].to_json()
    assert {"seq", "time", "actor", "action", "target", "decision", "reason", "details"} <= set(doc)
    assert doc["details"] == {"i": 2, "tags": ["a"]}
    assert audit.verify().ok
    assert audit.verify().entries == 5


def test_entries_survive_reopen_and_chain_continues(
    log_path: Path, secrets: PassphraseSecretStore
) -> None:
    log = AuditLog.open(log_path, KEY, secrets)
    fill(log, 3)
    log.close()
    log = AuditLog.open(log_path, KEY, secrets)
    assert log.head()[0] == 3
    assert log.append("owner", "container.start", "home", "allow", "ok").seq == 4
    result = log.verify()
    log.close()
    assert (result.ok, result.entries, result.first_bad_seq) == (True, 4, None)


def test_wrong_key_fails_at_the_first_entry(log_path: Path) -> None:
    log = AuditLog.open(log_path, KEY, None)
    fill(log, 3)
    log.close()
    other = AuditLog.open(log_path, bytes(32), None)
    result = other.verify()
    other.close()
    assert (result.ok, result.first_bad_seq) == (False, 1)


def test_invalid_entries_are_refused(audit: AuditLog) -> None:
    with pytest.raises(InvalidRequest, match="decision"):
        audit.append("a", "b", "c", "maybe", "r")
    with pytest.raises(InvalidRequest, match="details"):
        audit.append("a", "b", "c", "allow", "r", {"x": object()})
    with pytest.raises(InvalidRequest, match="details"):
        audit.append("a", "b", "c", "allow", "r", {"x": float("nan")})
    with pytest.raises(InvalidRequest, match="actor"):
        audit.append(1, "b", "c", "allow", "r")  # type: ignore[arg-type]
    # refused entries consume no seq
    assert audit.append("a", "b", "c", "info", "r").seq == 1


COLUMN_EDITS = {
    "actor": "UPDATE audit_log SET actor = 'agent-X' WHERE seq = ?",
    "action": "UPDATE audit_log SET action = 'data.reaD' WHERE seq = ?",
    "target": "UPDATE audit_log SET target = target || ' ' WHERE seq = ?",
    "decision": "UPDATE audit_log SET decision = 'allow' WHERE seq = ? AND decision != 'allow'",
    "reason": "UPDATE audit_log SET reason = 'reason 99' WHERE seq = ?",
    "details": "UPDATE audit_log SET details = replace(details, '\"i\":', '\"i\": ') WHERE seq = ?",
    "details-value": "UPDATE audit_log SET details = replace(details, '[\"a\"]', '[\"b\"]')"
                     " WHERE seq = ?",
    "time": "UPDATE audit_log SET time = time + 0.000001 WHERE seq = ?",
    "mac": "UPDATE audit_log SET mac = zeroblob(32) WHERE seq = ?",
    "mac-one-bit": "UPDATE audit_log SET mac = (SELECT mac FROM audit_log WHERE seq = 1)"
                   " WHERE seq = ?",
}


@pytest.mark.parametrize("column", sorted(COLUMN_EDITS))
def test_edited_column_is_detected_at_its_seq(
    log_path: Path, secrets: PassphraseSecretStore, column: str
) -> None:
    log = AuditLog.open(log_path, KEY, secrets)
    fill(log, 10)
    log.close()
    target = 5 if column != "decision" else 6  # seq 6 is "deny", so the edit changes it
    with sqlite3.connect(log_path) as conn:
        changed = conn.execute(COLUMN_EDITS[column], (target,)).rowcount
    assert changed == 1
    log = AuditLog.open(log_path, KEY, secrets)
    result = log.verify()
    log.close()
    assert (result.ok, result.entries, result.first_bad_seq) == (False, 10, target)
    assert str(target) in result.problem


def test_single_flipped_byte_anywhere_in_a_row(log_path: Path) -> None:
    log = AuditLog.open(log_path, KEY, None)
    fill(log, 6)
    log.close()
    with sqlite3.connect(log_path) as conn:
        actor, details = conn.execute(
            "SELECT actor, details FROM audit_log WHERE seq = 4").fetchone()
    for column, text in (("actor", actor), ("details", details)):
        for i in range(len(text)):
            flipped = text[:i] + chr(ord(text[i]) ^ 1) + text[i + 1:]
            tamper(log_path, f"UPDATE audit_log SET {column} = ? WHERE seq = 4", (flipped,))
            log = AuditLog.open(log_path, KEY, None)
            assert log.verify().first_bad_seq == 4, (column, i)
            log.close()
            tamper(log_path, f"UPDATE audit_log SET {column} = ? WHERE seq = 4", (text,))
    log = AuditLog.open(log_path, KEY, None)
    assert log.verify().ok
    log.close()


def test_deleted_middle_entry_names_the_missing_seq(
    log_path: Path, secrets: PassphraseSecretStore
) -> None:
    log = AuditLog.open(log_path, KEY, secrets)
    fill(log, 10)
    log.close()
    tamper(log_path, "DELETE FROM audit_log WHERE seq = 4")
    log = AuditLog.open(log_path, KEY, secrets)
    result = log.verify()
    log.close()
    assert (result.ok, result.entries, result.first_bad_seq) == (False, 9, 4)
    assert "missing" in result.problem


def test_deleted_and_renumbered_entry_is_detected(log_path: Path) -> None:
    log = AuditLog.open(log_path, KEY, None)
    fill(log, 8)
    log.close()
    with sqlite3.connect(log_path) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = 3")
        for seq in range(4, 9):
            conn.execute("UPDATE audit_log SET seq = ? WHERE seq = ?", (seq - 1, seq))
    log = AuditLog.open(log_path, KEY, None)
    result = log.verify()
    log.close()
    assert (result.ok, result.first_bad_seq) == (False, 3)


def test_reordered_entries_are_detected_at_the_first_moved_seq(log_path: Path) -> None:
    log = AuditLog.open(log_path, KEY, None)
    fill(log, 10)
    log.close()
    with sqlite3.connect(log_path) as conn:  # swap rows 3 and 7 (contents change places)
        conn.execute("UPDATE audit_log SET seq = -1 WHERE seq = 3")
        conn.execute("UPDATE audit_log SET seq = 3 WHERE seq = 7")
        conn.execute("UPDATE audit_log SET seq = 7 WHERE seq = -1")
    log = AuditLog.open(log_path, KEY, None)
    result = log.verify()
    log.close()
    assert (result.ok, result.entries, result.first_bad_seq) == (False, 10, 3)


def test_truncated_tail_is_detected_by_the_checkpoint(
    log_path: Path, secrets: PassphraseSecretStore
) -> None:
    log = AuditLog.open(log_path, KEY, secrets)
    entries = fill(log, 10)
    log.close()
    stored = secrets.get(checkpoint_name(log_path))
    assert stored is not None and b'"seq":10' in stored and entries[-1].mac.hex().encode() in stored
    tamper(log_path, "DELETE FROM audit_log WHERE seq > 7")

    # Without the checkpoint the shortened chain is still a valid chain ...
    blind = AuditLog.open(log_path, KEY, None)
    assert blind.verify().ok
    blind.close()
    # ... with it, the removal is named, and the log is untrusted from the first removed seq.
    log = AuditLog.open(log_path, KEY, secrets)
    result = log.verify()
    assert (result.ok, result.entries, result.first_bad_seq) == (False, 7, 8)
    assert log.untrusted is not None and log.untrusted.first_bad_seq == 8
    assert "8..10 were removed" in log.untrusted.found
    assert log.health().refusing
    # It keeps recording, but never moves the checkpoint over the evidence.
    log.append("a", "b", "c", "info", "r", checkpoint=True)
    log.close()
    assert read_checkpoint(secrets, checkpoint_name(log_path)) == (10, entries[-1].mac)


def test_missing_checkpoint_of_a_non_empty_log_is_untrusted(
    log_path: Path, secrets: PassphraseSecretStore
) -> None:
    log = AuditLog.open(log_path, KEY, secrets)
    fill(log, 4)
    log.close()
    secrets.delete(checkpoint_name(log_path))
    log = AuditLog.open(log_path, KEY, secrets)
    try:
        assert log.untrusted is not None and log.untrusted.first_bad_seq == 1
        assert "no checkpoint" in log.untrusted.found
        result = log.verify()
        assert (result.ok, result.first_bad_seq) == (False, 1)
        entry = log.append("owner", "approval.audit.reanchor.approve", "x", "allow", "ok")
        log.reanchor(entry.seq)
        assert log.untrusted is None and not log.health().refusing
        assert read_checkpoint(secrets, checkpoint_name(log_path)) == (entry.seq, entry.mac)
        assert log.verify().ok
    finally:
        log.close()


def test_rewritten_entry_at_the_checkpoint_is_untrusted(
    log_path: Path, secrets: PassphraseSecretStore
) -> None:
    log = AuditLog.open(log_path, KEY, secrets)
    fill(log, 5)
    log.close()
    # A rewritten tail: the last entry replaced by a validly chained different one.
    tamper(log_path, "DELETE FROM audit_log WHERE seq = 5")
    blind = AuditLog.open(log_path, KEY, None)
    blind.append("x", "y", "z", "info", "replacement")
    blind.close()
    log = AuditLog.open(log_path, KEY, secrets)
    try:
        assert log.untrusted is not None and log.untrusted.first_bad_seq == 5
        assert "differs" in log.untrusted.found
    finally:
        log.close()


def test_new_empty_log_without_checkpoint_is_trusted(
    log_path: Path, secrets: PassphraseSecretStore
) -> None:
    log = AuditLog.open(log_path, KEY, secrets)
    try:
        assert log.untrusted is None and not log.health().refusing
    finally:
        log.close()


def test_checkpointed_append_is_covered_before_it_returns(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "keys.sealed", b"pw")
    path = tmp_path / "audit.sqlite3"
    log = AuditLog.open(path, KEY, store)
    try:
        for i in range(20):
            # Back to back, well inside the 0.25 s spacing of ordinary writes.
            entry = log.append("owner", "approval.x.deny", str(i), "deny", "no", checkpoint=True)
            assert read_checkpoint(store, checkpoint_name(path)) == (entry.seq, entry.mac)
        health = log.health()
        assert health.checkpoint_seq == 20 and health.checkpoint_age_s is not None
    finally:
        log.close()


def test_failed_checkpoint_writes_are_counted_and_refuse_after_the_limit(
    tmp_path: Path,
) -> None:
    store = PassphraseSecretStore(tmp_path / "keys" / "keys.sealed", b"pw")
    path = tmp_path / "audit.sqlite3"
    log = AuditLog.open(path, KEY, store)
    sealed = tmp_path / "keys" / "keys.sealed"
    try:
        log.append("owner", "first", "", "info", "r", checkpoint=True)
        # The keystore file becomes a directory: every write now fails in os.replace.
        sealed.rename(tmp_path / "keys.moved")
        sealed.mkdir()
        for i in range(CHECKPOINT_FAILURE_LIMIT):
            with pytest.raises(AuditError, match="checkpoint"):
                log.append("owner", "approval.x.deny", str(i), "deny", "no", checkpoint=True)
            health = log.health()
            assert health.checkpoint_failures == i + 1
            assert health.checkpoint_error is not None and "keys.sealed" in health.checkpoint_error
            assert health.refusing == (i + 1 >= CHECKPOINT_FAILURE_LIMIT)
        sealed.rmdir()
        (tmp_path / "keys.moved").rename(sealed)
        log.append("owner", "again", "", "info", "r", checkpoint=True)
        assert log.health().checkpoint_failures == 0 and not log.health().refusing
    finally:
        log.close()


def test_truncate_everything_is_detected(log_path: Path, secrets: PassphraseSecretStore) -> None:
    log = AuditLog.open(log_path, KEY, secrets)
    fill(log, 3)
    log.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(log_path) + suffix).unlink(missing_ok=True)
    log = AuditLog.open(log_path, KEY, secrets)
    result = log.verify()
    log.close()
    assert (result.ok, result.entries, result.first_bad_seq) == (False, 0, 1)


def test_group_commit_shares_transactions_and_keeps_seqs_contiguous(log_path: Path) -> None:
    # Every entry of one batch gets the time read once per batch; a clock that
    # ticks on every read shows how many batches (transactions) there were.
    ticks = itertools.count()
    log = AuditLog.open(log_path, KEY, None, clock=lambda: float(next(ticks)))
    per_thread: dict[int, list[int]] = {}
    start = threading.Barrier(8)

    def writer(n: int) -> None:
        start.wait()
        per_thread[n] = [
            log.append(f"t{n}", "x", "y", "info", str(i)).seq for i in range(150)
        ]

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_seqs = sorted(s for seqs in per_thread.values() for s in seqs)
    assert all_seqs == list(range(1, 1201))
    assert all(seqs == sorted(seqs) for seqs in per_thread.values())
    entries = [e for after in range(0, 1200, 1000) for e in log.entries(after, 1000)]
    batches = len({e.time for e in entries})
    assert batches < 1200  # some transactions carried several entries
    result = log.verify()
    log.close()
    assert (result.ok, result.entries) == (True, 1200)


def test_append_async_does_not_block_the_loop(log_path: Path) -> None:
    # Entries are committed on the loop when the writer is idle, but their fsync
    # is not: held here, the loop keeps running while 200 entries wait for it.
    released = threading.Event()
    released.set()

    def held_fsync(fd: int) -> None:
        released.wait(30)
        os.fsync(fd)

    log = AuditLog.open(log_path, KEY, None, fsync=held_fsync)
    released.clear()

    async def main() -> tuple[list[int], int, bool]:
        appends = asyncio.gather(*(
            log.append_async("agent", "data.read", f"k{i}", "allow", "connected")
            for i in range(200)
        ))
        ticks = 0
        while ticks < 50:
            ticks += 1
            await asyncio.sleep(0)
        waiting = not appends.done()
        released.set()
        entries = await appends
        return [e.seq for e in entries], ticks, waiting

    try:
        seqs, ticks, waiting = asyncio.run(main())
    finally:
        released.set()
    assert sorted(seqs) == list(range(1, 201))
    assert ticks == 50 and waiting  # the loop ran on while entries were being made durable
    assert log.synced_seq == 200
    assert log.verify().ok
    log.close()


def test_listeners_run_after_commit(log_path: Path) -> None:
    log = AuditLog.open(log_path, KEY, None)
    seen: list[tuple[int, int]] = []

    def listener(entry: AuditEntry) -> None:
        with sqlite3.connect(log_path) as conn:  # the entry must already be durable
            count = conn.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0]
        seen.append((entry.seq, count))

    def broken(entry: AuditEntry) -> None:
        raise RuntimeError("listener bug")

    log.add_listener(broken)
    log.add_listener(listener)
    fill(log, 3)
    log.close()
    assert [s for s, _ in seen] == [1, 2, 3]
    assert all(count >= seq for seq, count in seen)


def test_closed_log_refuses_appends(audit: AuditLog) -> None:
    audit.close()
    with pytest.raises(AuditError, match="closed"):
        audit.append("a", "b", "c", "info", "r")


FULL_DISK_WRITER = """
import asyncio, json, os, resource, signal, sys
from pathlib import Path
from pacd.audit import AuditLog
from pacd.errors import AuditError

path = Path(sys.argv[1])
log = AuditLog.open(path, bytes(range(32)), None)
acked = [log.append("w", "before", str(i), "info", "r").seq for i in range(3)]
# From here on no file of this process may grow: the next WAL frame cannot be written.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(str(path) + "-wal"), hard))
errors = []
for attempt in range(2):
    try:
        log.append("owner", "container.create", "home", "allow", "biometric")
        errors.append(None)
    except AuditError as exc:
        errors.append(str(exc))
try:
    asyncio.run(log.append_async("owner", "container.create", "home", "allow", "x"))
    errors.append(None)
except AuditError as exc:
    errors.append(str(exc))
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
after = log.append("owner", "retry", "home", "info", "after failure").seq
log.close()
print(json.dumps({"acked": acked, "errors": errors, "after": after}))
"""


def test_append_that_cannot_be_made_durable_raises(log_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK_WRITER, str(log_path)],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    report = json.loads(out)
    assert report["acked"] == [1, 2, 3]
    assert len(report["errors"]) == 3
    assert all(e is not None and "durably" in e for e in report["errors"]), report
    # space is back: the log continues right after the last durable entry
    assert report["after"] == 4
    log = AuditLog.open(log_path, KEY, None)
    result = log.verify()
    kept = log.entries()
    log.close()
    assert (result.ok, result.entries) == (True, 4)
    assert [e.action for e in kept] == ["before"] * 3 + ["retry"]


CRASH_WRITER = """
import sys, threading
from pathlib import Path
from pacd.audit import AuditLog
from pacd.vault import PassphraseSecretStore

log = AuditLog.open(Path(sys.argv[1]), bytes(range(32)),
               PassphraseSecretStore(Path(sys.argv[2]), b"pw"))
lock = threading.Lock()

def writer(n):
    i = 0
    while True:
        entry = log.append(f"w{n}", "crash.test", str(i), "info", "r", {"n": n, "i": i})
        with lock:
            sys.stdout.write(f"{entry.seq}\\n")
            sys.stdout.flush()
        i += 1

for n in range(4):
    threading.Thread(target=writer, args=(n,), daemon=True).start()
threading.Event().wait()
"""


def test_every_acknowledged_append_survives_kill_9(tmp_path: Path, log_path: Path) -> None:
    keys = tmp_path / "keys.sealed"
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_WRITER, str(log_path), str(keys)],
        stdout=subprocess.PIPE, text=True,
    )
    acknowledged: list[int] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while len(acknowledged) < 400 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acknowledged.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acknowledged.extend(int(line) for line in proc.stdout.read().split())
    assert len(acknowledged) >= 400

    log = AuditLog.open(log_path, KEY, PassphraseSecretStore(keys, b"pw"))
    result = log.verify()
    present = {e.seq for after in range(0, log.head()[0], 1000) for e in log.entries(after, 1000)}
    # the checkpoint never runs ahead of the database, so the log accepts new entries
    next_seq = log.append("owner", "after.crash", "", "info", "restart").seq
    log.close()
    assert result.ok, result
    stored = PassphraseSecretStore(keys, b"pw").get(checkpoint_name(log_path))
    assert stored is not None
    checkpoint = json.loads(stored)
    assert checkpoint["seq"] == next_seq  # caught up at reopen, then moved with the append
    assert set(acknowledged) <= present
    assert present == set(range(1, len(present) + 1))
    assert next_seq == len(present) + 1


# The writer splices seq and time into a pre-built canonical entry; verify()
# recomputes the entry with canonical_json. They must agree byte for byte.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300)
@given(
    texts=st.lists(st.text(), min_size=4, max_size=4),
    decision=st.sampled_from(["allow", "deny", "info"]),
    details=st.dictionaries(st.text(), json_values, max_size=4),
    seq=st.integers(min_value=1, max_value=2**62),
    when=st.floats(allow_nan=False, allow_infinity=False),
)
def test_spliced_entry_equals_canonical_json(
    texts: list[str], decision: str, details: dict[str, object], seq: int, when: float
) -> None:
    actor, action, target, reason = texts
    prefix, middle = _entry_parts(actor, action, target, decision, reason,
                                  canonical_json(details).decode("utf-8"))
    assert _splice(prefix, seq, middle, when) == canonical_entry(
        seq, when, actor, action, target, decision, reason, details)


@settings(max_examples=200)
@given(key=st.binary(min_size=32, max_size=200), prev=st.binary(min_size=32, max_size=32),
       canonical=st.binary(max_size=3000))
def test_writer_mac_equals_the_standard_hmac(key: bytes, prev: bytes, canonical: bytes) -> None:
    # The writer keys HMAC once per log; verify() uses hmac.digest. Any
    # divergence would make verify reject every entry the writer made.
    assert _ChainKey(key).link(prev, canonical) == hmac.digest(key, prev + canonical, "sha256")


def reference_rows(n: int, key: bytes) -> list[tuple[object, ...]]:
    """Rows as the format defines them, computed without pacd.audit's writer."""
    rows: list[tuple[object, ...]] = []
    mac = bytes(32)
    for seq in range(1, n + 1):
        entry = {"seq": seq, "time": 1_700_000_000.25 + seq, "actor": f"agent-{seq % 3}",
                 "action": "data.read", "target": f"home/\u00e9t\u00e9/{seq}",
                 "decision": ("allow", "deny", "info")[seq % 3], "reason": 'quote " and \\',
                 "details": {"n": seq, "x": [1.5, None, "\u2603"]} if seq % 2 else {}}
        mac = hmac.digest(key, mac + canonical_json(entry), "sha256")
        rows.append((seq, entry["time"], entry["actor"], entry["action"], entry["target"],
                     entry["decision"], entry["reason"],
                     canonical_json(entry["details"]).decode("utf-8"), mac))
    return rows


def test_log_written_by_the_format_definition_verifies_and_continues(log_path: Path) -> None:
    AuditLog.open(log_path, KEY, None).close()  # creates the table
    with sqlite3.connect(log_path) as conn:
        conn.executemany("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         reference_rows(40, KEY))
    log = AuditLog.open(log_path, KEY, None)
    assert log.verify().ok
    assert log.append("owner", "after", "x", "info", "r").seq == 41
    result = log.verify()
    log.close()
    assert (result.ok, result.entries) == (True, 41)


def test_writer_rows_match_an_independent_recomputation(log_path: Path) -> None:
    log = AuditLog.open(log_path, KEY, None)

    async def many() -> None:
        await asyncio.gather(*(
            log.append_async(f"a{i % 5}", "data.read", f"k\u00e9{i}", "allow", "r",
                             {"i": i, "f": i / 7} if i % 2 else None)
            for i in range(300)))

    asyncio.run(many())
    log.close()
    with sqlite3.connect(log_path) as conn:
        rows = conn.execute("SELECT * FROM audit_log ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == list(range(1, 301))
    mac = bytes(32)
    for seq, when, actor, action, target, decision, reason, details, stored in rows:
        entry = {"seq": seq, "time": when, "actor": actor, "action": action, "target": target,
                 "decision": decision, "reason": reason, "details": json.loads(details)}
        mac = hmac.digest(KEY, mac + canonical_json(entry), "sha256")
        assert stored == mac, seq


def block_writes(path: Path) -> sqlite3.Connection:
    """Hold the database's write lock from another connection, as a stuck writer would."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


async def taken_by_the_writer(log: AuditLog, count: int = 1) -> None:
    """Return once the writer has taken ``count`` appends (and is stuck behind the lock)."""
    deadline = time.monotonic() + 10
    while log.writing < count:
        assert time.monotonic() < deadline, f"the writer took {log.writing} of {count}"
        await asyncio.sleep(0.005)


def test_one_batch_larger_than_an_insert_chunk(log_path: Path) -> None:
    ticks = itertools.count()
    log = AuditLog.open(log_path, KEY, None, clock=lambda: float(next(ticks)))
    blocker = block_writes(log_path)

    async def many() -> list[AuditEntry]:
        tasks = [asyncio.create_task(log.append_async("a", "b", str(i), "info", "r"))
                 for i in range(700)]
        await asyncio.sleep(0)  # each task runs up to its wait: all 700 are queued
        await taken_by_the_writer(log)  # ... and the writer is stuck behind the held lock
        blocker.execute("COMMIT")
        return await asyncio.gather(*tasks)

    entries = asyncio.run(many())
    blocker.close()
    assert sorted(e.seq for e in entries) == list(range(1, 701))
    assert [e.seq for e in entries] == sorted(e.seq for e in entries)  # submission order
    # one clock read per batch: the one stuck behind the lock, then the rest (> 256) at once
    assert len({e.time for e in entries}) <= 2
    result = log.verify()
    log.close()
    assert (result.ok, result.entries) == (True, 700)


def test_append_async_times_out_oldest_first_while_the_writer_is_stuck(log_path: Path) -> None:
    log = AuditLog.open(log_path, KEY, None, append_timeout_s=0.8)
    blocker = block_writes(log_path)

    async def main() -> tuple[str, bool, str]:
        first = asyncio.create_task(log.append_async("a", "first", "", "info", "r"))
        await asyncio.sleep(0.5)  # waits-on: external clock — staggers the two deadlines
        second = asyncio.create_task(log.append_async("a", "second", "", "info", "r"))
        with pytest.raises(AuditError, match="did not confirm") as exc:
            await first
        still_waiting = not second.done()  # its own deadline is 0.5 s later
        with pytest.raises(AuditError, match="did not confirm") as exc2:
            await second
        return str(exc.value), still_waiting, str(exc2.value)

    first_error, second_was_waiting, _ = asyncio.run(main())
    assert "0.8 s" in first_error
    assert second_was_waiting
    assert log._loop_waiters == {}  # the timer and the loop's registration are gone
    blocker.execute("COMMIT")
    blocker.close()
    # "first" was being written when its waiter gave up: it lands, followed by the
    # entry saying so. "second" was still queued: withdrawn, never written.
    assert log.append("a", "third", "", "info", "r").seq == 3
    entries = log.entries()
    assert [e.action for e in entries] == ["first", "audit.abandoned", "third"]
    assert entries[1].details == {"seqs": [1]} and entries[1].decision == "info"
    assert log.verify().ok
    log.close()


def test_blocking_append_times_out_while_the_writer_is_stuck(log_path: Path) -> None:
    log = AuditLog.open(log_path, KEY, None, append_timeout_s=0.3)
    blocker = block_writes(log_path)
    with pytest.raises(AuditError, match="did not confirm"):
        log.append("a", "stuck", "", "info", "r")
    blocker.execute("COMMIT")
    blocker.close()
    assert log.append("a", "after", "", "info", "r").seq == 3
    assert [(e.action, e.details) for e in log.entries()] == [
        ("stuck", {}), ("audit.abandoned", {"seqs": [1]}), ("after", {})]
    assert log.verify().ok
    log.close()


def test_cancelled_waiter_leaves_the_others_alone(log_path: Path) -> None:
    log = AuditLog.open(log_path, KEY, None)
    blocker = block_writes(log_path)

    async def main() -> list[AuditEntry | BaseException]:
        # The first is taken by the writer (stuck behind the lock); the rest stay queued.
        tasks = [asyncio.create_task(log.append_async("a", "b", "0", "info", "r"))]
        await taken_by_the_writer(log)
        tasks += [asyncio.create_task(log.append_async("a", "b", str(i), "info", "r"))
                  for i in range(1, 10)]
        await asyncio.sleep(0)  # each runs up to its wait: queued
        assert log.writing == 1
        tasks[3].cancel()
        blocker.execute("COMMIT")
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    blocker.close()
    assert isinstance(results[3], asyncio.CancelledError)
    done = [r for r in results if isinstance(r, AuditEntry)]
    assert len(done) == 9
    assert log._loop_waiters == {}
    # the cancelled caller's entry was still queued: withdrawn, the others contiguous
    assert [e.target for e in log.entries()] == ["0", "1", "2", "4", "5", "6", "7", "8", "9"]
    assert log.verify().entries == 9
    log.close()


def test_a_closed_loop_with_a_waiter_is_forgotten(log_path: Path) -> None:
    log = AuditLog.open(log_path, KEY, None)
    blocker = block_writes(log_path)
    loop = asyncio.new_event_loop()
    task = loop.create_task(log.append_async("a", "b", "c", "info", "r"))
    loop.run_until_complete(taken_by_the_writer(log))  # and stuck behind the lock
    assert loop in log._loop_waiters
    task.cancel()
    loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    loop.close()
    blocker.execute("COMMIT")
    blocker.close()
    # the writer handled seq 1 and noted that its waiter had gone
    assert log.append("a", "next", "", "info", "r").seq == 3
    assert [e.action for e in log.entries()] == ["b", "audit.abandoned", "next"]
    assert log._loop_waiters == {}
    log.close()


def test_timed_out_appends_queued_behind_a_stuck_writer_never_appear(log_path: Path) -> None:
    # The writer has taken "held" and is stuck behind another connection's
    # write lock; everything submitted after it waits in the queue. Those
    # appenders fail on timeout, so their "allow"s must never reach the log.
    log = AuditLog.open(log_path, KEY, None, append_timeout_s=0.4)
    blocker = block_writes(log_path)
    held_outcome: list[BaseException | AuditEntry] = []

    def hold() -> None:
        try:
            held_outcome.append(log.append("a", "held", "", "allow", "r"))
        except AuditError as exc:
            held_outcome.append(exc)

    held = threading.Thread(target=hold)
    held.start()
    deadline = time.monotonic() + 5
    while log.writing != 1 and time.monotonic() < deadline:  # taken, stuck behind the lock
        time.sleep(0.01)
    assert log.writing == 1

    async def queued() -> list[BaseException | AuditEntry]:
        return await asyncio.gather(
            log.append_async("a", "queued-async-1", "", "allow", "r"),
            log.append_async("a", "queued-async-2", "", "allow", "r"),
            return_exceptions=True)

    with pytest.raises(AuditError, match="did not confirm"):
        log.append("a", "queued-sync", "", "allow", "r")
    results = asyncio.run(queued())
    assert all(isinstance(r, AuditError) for r in results), results
    held.join()
    assert len(held_outcome) == 1 and isinstance(held_outcome[0], AuditError)
    blocker.execute("COMMIT")
    blocker.close()
    assert log.append("a", "after", "", "info", "r").seq == 3
    entries = log.entries()
    assert [e.action for e in entries] == ["held", "audit.abandoned", "after"]
    assert entries[1].details == {"seqs": [1]}
    assert log.verify().ok
    log.close()


def test_cancelled_waiter_of_an_entry_being_written_is_noted(log_path: Path) -> None:
    log = AuditLog.open(log_path, KEY, None)
    blocker = block_writes(log_path)

    async def main() -> None:
        task = asyncio.create_task(log.append_async("a", "held", "", "allow", "r"))
        await taken_by_the_writer(log)  # and stuck behind the lock
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    blocker.execute("COMMIT")
    blocker.close()
    log.close()  # drains the note
    reopened = AuditLog.open(log_path, KEY, None)
    assert [(e.seq, e.action, e.details) for e in reopened.entries()] == [
        (1, "held", {}), (2, "audit.abandoned", {"seqs": [1]})]
    assert reopened.verify().ok
    reopened.close()


def test_str_subclasses_are_stored_as_their_value(log_path: Path) -> None:
    class Decision(enum.StrEnum):
        ALLOW = "allow"

    class Loud(str):
        def __str__(self) -> str:
            return "not what was passed"

    log = AuditLog.open(log_path, KEY, None)
    entry = log.append(Loud("agent"), "data.read", "t", Decision.ALLOW, "r")
    assert (type(entry.actor), entry.actor, type(entry.decision)) == (str, "agent", str)
    stored = log.entries()[0]
    assert (stored.actor, stored.decision) == ("agent", "allow")
    assert log.verify().ok
    log.close()


def test_listeners_get_the_entry_the_appender_gets(log_path: Path) -> None:
    log = AuditLog.open(log_path, KEY, None)
    seen: list[AuditEntry] = []
    log.add_listener(seen.append)
    returned = log.append("a", "b", "c", "info", "r")
    log.close()
    assert seen == [returned]
    assert seen[0] is returned


class CountingStore(PassphraseSecretStore):
    """The real passphrase store, counting checkpoint writes."""

    def __init__(self, path: Path, passphrase: bytes) -> None:
        super().__init__(path, passphrase)
        self.writes: list[float] = []

    def set(self, name: str, value: bytes) -> None:
        self.writes.append(time.monotonic())
        super().set(name, value)


def test_checkpoint_writes_are_spaced_but_flush_catches_up(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "keys.sealed", b"pw")
    log = AuditLog.open(tmp_path / "audit.sqlite3", KEY, store)
    try:
        started = time.monotonic()
        for i in range(300):
            log.append("owner", "probe", f"t{i}", "allow", "spacing")
        elapsed = time.monotonic() - started
        # One write may start at once; the rest are at least 0.25 s apart.
        assert len(store.writes) <= 2 + elapsed / 0.25
        gaps = [b - a for a, b in zip(store.writes, store.writes[1:], strict=False)]
        assert all(gap >= 0.2 for gap in gaps)
        assert log.flush_checkpoint(timeout=10)
        seq, mac = log.head()
        stored = read_checkpoint(store, checkpoint_name(tmp_path / "audit.sqlite3"))
        assert stored == (seq, mac) and seq == 300
    finally:
        log.close()
