"""The two durability classes of an audit entry, on real SQLite files and real processes.

*Durable* entries are answered after their fsync. *Written* entries (reads of
metadata) are answered once they are in the log's file, so a killed daemon
keeps them, and the writer fsyncs them by itself within 10 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pacd.audit import AuditLog, checkpoint_name, read_checkpoint
from pacd.vault import PassphraseSecretStore

KEY = bytes(range(32))
#: long enough that the writer's own deferred fsync cannot happen during a test
NEVER_S = 3600.0


def test_written_entry_is_answered_before_its_fsync_and_never_checkpointed_early(
    tmp_path: Path,
) -> None:
    secrets = PassphraseSecretStore(tmp_path / "keys.sealed", b"pw")
    path = tmp_path / "audit.sqlite3"
    log = AuditLog.open(path, KEY, secrets, written_sync_s=NEVER_S)
    try:
        first = log.append("pacd", "daemon.start", "", "info", "started")
        assert log.synced_seq == first.seq  # durable: answered after its fsync
        read = log.append("owner:uid=1", "session.current", "/v1/sessions/current", "allow",
                          "ok", durable=False)
        listed = asyncio.run(log.append_async("owner:uid=1", "container.list", "/v1/containers",
                                              "allow", "ok", durable=False))
        assert log.head()[0] == listed.seq == read.seq + 1
        # answered although nothing has fsynced them yet
        assert log.synced_seq == first.seq
        # the keychain checkpoint names only what is on the disk
        assert log.flush_checkpoint(timeout=30)
        assert read_checkpoint(secrets, checkpoint_name(path)) == (first.seq, first.mac)
        # the next durable batch's fsync covers the written entries before it
        change = log.append("owner:uid=1", "container.start", "home", "allow", "ok")
        assert log.synced_seq == change.seq
        assert log.flush_checkpoint(timeout=30)
        assert read_checkpoint(secrets, checkpoint_name(path)) == (change.seq, change.mac)
        last = log.append("owner:uid=1", "audit.read", "/v1/audit", "allow", "ok",
                          durable=False)
    finally:
        log.close()
    assert log.synced_seq == last.seq  # close fsyncs what is only written


def test_an_entry_the_checkpoint_must_cover_cannot_be_only_written(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit.sqlite3", KEY, None)
    try:
        with pytest.raises(ValueError, match="durable"):
            log.append("owner:uid=1", "approval.x.approve", "a", "allow", "ok",
                       checkpoint=True, durable=False)
        assert log.head()[0] == 0
    finally:
        log.close()


WRITTEN_THEN_KILLED = """
import asyncio, json, sys, threading
from pathlib import Path
from pacd.audit import AuditLog
from pacd.vault import PassphraseSecretStore

log = AuditLog.open(Path(sys.argv[1]), bytes(range(32)),
                    PassphraseSecretStore(Path(sys.argv[2]), b"pw"), written_sync_s=3600.0)
log.append("pacd", "daemon.start", "", "info", "started", checkpoint=True)
args = ("owner:uid=1", "session.current", "/v1/sessions/current", "allow", "ok")
committed_on = []
log.add_listener(lambda _entry: committed_on.append(threading.get_ident()))
if sys.argv[3] == "loop":  # committed by the event loop itself (the writer was idle)
    entry = asyncio.run(log.append_async(*args, durable=False))
else:
    entry = log.append(*args, durable=False)
print(json.dumps({"seq": entry.seq, "synced": log.synced_seq,
                  "on_caller": committed_on[-1] == threading.get_ident()}), flush=True)
sys.stdin.read()  # killed here, before any fsync of the written entry
"""


@pytest.mark.parametrize("appender", ["thread", "loop"])
def test_written_entry_survives_kill_9_right_after_append_returns(
        tmp_path: Path, appender: str) -> None:
    path = tmp_path / "audit.sqlite3"
    keys = tmp_path / "keys.sealed"
    proc = subprocess.Popen([sys.executable, "-c", WRITTEN_THEN_KILLED, str(path), str(keys),
                             appender],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        reported = json.loads(proc.stdout.readline())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # The daemon answered before the fsync: only the kernel held the entry.
    assert reported == {"seq": 2, "synced": 1, "on_caller": appender == "loop"}

    log = AuditLog.open(path, KEY, PassphraseSecretStore(keys, b"pw"))
    try:
        kept = log.entries()
        result = log.verify()
        assert log.untrusted is None  # the checkpoint never got ahead of the disk
        assert log.synced_seq == 2  # open fsyncs what the killed writer left written
    finally:
        log.close()
    assert [(e.seq, e.action) for e in kept] == [(1, "daemon.start"), (2, "session.current")]
    assert (result.ok, result.entries) == (True, 2), result


def test_written_entries_are_fsynced_within_10_ms_without_another_append(
    tmp_path: Path,
) -> None:
    log = AuditLog.open(tmp_path / "audit.sqlite3", KEY, None)
    lags = []
    try:
        for i in range(7):
            entry = log.append("owner:uid=1", "session.current", str(i), "allow", "ok",
                               durable=False)
            deadline = time.monotonic() + 10
            while log.synced_seq < entry.seq and time.monotonic() < deadline:
                time.sleep(0.0005)
            assert log.synced_seq == entry.seq, "the writer did not fsync the entry by itself"
            lag = log.written_sync_lag_s
            assert lag is not None
            lags.append(lag)
    finally:
        log.close()
    # The writer starts the fsync at most 5 ms after the commit; the fsync's own
    # time is the disk's, and on a shared machine one can take longer than the
    # rest: the median of seven says what the log does, not what one fsync did.
    assert statistics.median(lags) <= 0.010, lags
