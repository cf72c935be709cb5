"""Commits that only write the WAL, and the fsync that answers them, on real SQLite files.

The writer thread commits without waiting for the disk; a sync thread fsyncs
the WAL and answers durable entries. The disk of this machine never fails or
stalls an fsync on demand, so the log's ``fsync`` seam gets one that can be
held or made to fail; everything else is real.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacd.audit import AuditEntry, AuditLog, checkpoint_name, read_checkpoint
from pacd.errors import AuditError
from pacd.vault import PassphraseSecretStore

KEY = bytes(range(32))
#: bounds a wait that must end at once; reaching it is the failure being tested for
PROMPT_S = 10.0


class Fsync:
    """``os.fsync`` that can be held (a disk slow to sync) or made to fail (a failing one)."""

    def __init__(self) -> None:
        self._released = threading.Event()
        self._released.set()
        #: set when an fsync has started (and, if held, is waiting)
        self.started = threading.Event()
        self.failure: OSError | None = None
        self.calls = 0

    def hold(self) -> None:
        self._released.clear()
        self.started.clear()

    def release(self) -> None:
        self._released.set()

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.started.set()
        if not self._released.wait(PROMPT_S * 3):
            raise AssertionError("an fsync was held and never released")
        if self.failure is not None:
            raise self.failure
        os.fsync(fd)


@pytest.fixture
def fsync() -> Iterator[Fsync]:
    gate = Fsync()
    yield gate
    gate.release()  # never leave the sync thread stuck, whatever the test did


def stored(path: Path) -> list[tuple[int, str]]:
    """What another connection reads from the log file right now."""
    with sqlite3.connect(path) as conn:
        return [(int(seq), action) for seq, action
                in conn.execute("SELECT seq, action FROM audit_log ORDER BY seq")]


def test_written_entry_is_in_the_file_before_the_answer_while_no_fsync_can_finish(
    tmp_path: Path, fsync: Fsync,
) -> None:
    path = tmp_path / "audit.sqlite3"
    log = AuditLog.open(path, KEY, None, fsync=fsync, written_sync_s=0)
    fsync.hold()  # no fsync can finish: the answer cannot have waited for one

    async def main() -> tuple[AuditEntry, list[tuple[int, str]]]:
        entry = await asyncio.wait_for(log.append_async(
            "owner:uid=1", "session.current", "/v1/sessions/current", "allow", "ok",
            durable=False), PROMPT_S)
        return entry, stored(path)

    try:
        entry, in_file = asyncio.run(main())
        assert in_file == [(entry.seq, "session.current")]
        assert log.synced_seq == 0  # answered before any fsync covered it
    finally:
        fsync.release()
        log.close()
    assert log.synced_seq == entry.seq


def test_durable_entry_is_answered_only_after_its_fsync_and_commits_go_on_meanwhile(
    tmp_path: Path, fsync: Fsync,
) -> None:
    path = tmp_path / "audit.sqlite3"
    log = AuditLog.open(path, KEY, None, fsync=fsync)
    fsync.hold()

    async def main() -> None:
        first = asyncio.create_task(log.append_async("agent", "data.read", "k1", "allow", "ok"))
        assert await asyncio.to_thread(fsync.started.wait, PROMPT_S)  # its fsync is under way
        assert stored(path) == [(1, "data.read")]  # committed ...
        await asyncio.sleep(0)  # waits-on: nothing; lets a wrongly early answer arrive
        assert not first.done()  # ... but not answered before the fsync
        assert log.synced_seq == 0
        # While that fsync is held, the writer commits on (an fsync never stalls commits)
        second = asyncio.create_task(log.append_async("agent", "data.read", "k2", "allow", "ok"))
        read = await asyncio.wait_for(log.append_async(
            "owner:uid=1", "container.list", "/v1/containers", "allow", "ok", durable=False),
            PROMPT_S)
        assert read.seq == 3
        assert stored(path) == [(1, "data.read"), (2, "data.read"), (3, "container.list")]
        assert not second.done()
        fsync.release()
        entries = await asyncio.wait_for(asyncio.gather(first, second), PROMPT_S)
        assert [e.seq for e in entries] == [1, 2]
        assert log.synced_seq >= 2

    try:
        asyncio.run(main())
    finally:
        fsync.release()
        log.close()
    assert log.synced_seq == 3


def test_failed_fsync_fails_every_waiting_durable_appender_and_notes_their_entries(
    tmp_path: Path, fsync: Fsync,
) -> None:
    path = tmp_path / "audit.sqlite3"
    secrets = PassphraseSecretStore(tmp_path / "keys.sealed", b"pw")
    log = AuditLog.open(path, KEY, secrets, fsync=fsync)
    try:
        before = log.append("pacd", "daemon.start", "", "info", "started")
        fsync.failure = OSError(errno.EIO, "Input/output error")

        async def main() -> list[AuditEntry | BaseException]:
            return await asyncio.wait_for(asyncio.gather(
                *(log.append_async("owner:uid=1", "container.start", f"c{i}", "allow", "ok")
                  for i in range(5)),
                return_exceptions=True), PROMPT_S)

        results = asyncio.run(main())
        assert all(isinstance(r, AuditError) and "durably" in str(r) for r in results), results
        # the checkpoint never names what no fsync covered
        assert log.synced_seq == before.seq
        assert log.flush_checkpoint(timeout=PROMPT_S)
        assert read_checkpoint(secrets, checkpoint_name(path)) == (before.seq, before.mac)
        fsync.failure = None
        after = log.append("owner:uid=1", "container.stop", "c0", "allow", "ok")
    finally:
        log.close()
    entries = log.entries()
    # The failed entries are in the file; the writer says their actions failed
    # (the notes of a failing disk are not durable either, and are not noted).
    failed = [e.seq for e in entries if e.action == "container.start"]
    assert len(failed) == 5
    notes = [e for e in entries if e.action == "audit.abandoned"]
    assert sorted(s for n in notes for s in n.details["seqs"]) == failed
    assert entries[-1].seq == after.seq
    assert log.verify().ok


def test_checkpoint_never_names_a_committed_entry_before_its_fsync(
    tmp_path: Path, fsync: Fsync,
) -> None:
    path = tmp_path / "audit.sqlite3"
    secrets = PassphraseSecretStore(tmp_path / "keys.sealed", b"pw")
    log = AuditLog.open(path, KEY, secrets, fsync=fsync)
    try:
        first = log.append("pacd", "daemon.start", "", "info", "started")
        fsync.hold()

        async def main() -> None:
            held = asyncio.create_task(log.append_async("agent", "data.read", "k", "allow", "ok"))
            assert await asyncio.to_thread(fsync.started.wait, PROMPT_S)
            assert log.head()[0] == 2  # committed, its fsync held
            assert await asyncio.to_thread(log.flush_checkpoint, PROMPT_S)
            assert read_checkpoint(secrets, checkpoint_name(path)) == (first.seq, first.mac)
            fsync.release()
            entry = await asyncio.wait_for(held, PROMPT_S)
            assert await asyncio.to_thread(log.flush_checkpoint, PROMPT_S)
            assert read_checkpoint(secrets, checkpoint_name(path)) == (entry.seq, entry.mac)

        asyncio.run(main())
    finally:
        fsync.release()
        log.close()


def test_appender_that_times_out_waiting_for_its_fsync_fails_and_is_noted(
    tmp_path: Path, fsync: Fsync,
) -> None:
    path = tmp_path / "audit.sqlite3"
    log = AuditLog.open(path, KEY, None, fsync=fsync, append_timeout_s=0.3)
    fsync.hold()

    async def main() -> None:
        with pytest.raises(AuditError, match="did not confirm"):
            await log.append_async("owner:uid=1", "container.start", "c", "allow", "ok")

    try:
        asyncio.run(main())
        assert log.synced_seq == 0  # its fsync is still held: it was never answered
    finally:
        fsync.release()
        log.close()
    reopened = AuditLog.open(path, KEY, None)
    try:
        assert [(e.seq, e.action, e.details) for e in reopened.entries()] == [
            (1, "container.start", {}), (2, "audit.abandoned", {"seqs": [1]})]
        assert reopened.verify().ok
    finally:
        reopened.close()


def test_log_reached_through_a_symlink_fsyncs_the_wal_sqlite_writes(tmp_path: Path) -> None:
    # SQLite keeps the WAL next to the file the link names, not next to the link.
    (tmp_path / "disk").mkdir()
    link = tmp_path / "audit.sqlite3"
    link.symlink_to(tmp_path / "disk" / "audit.sqlite3")
    log = AuditLog.open(link, KEY, None)
    try:
        entry = asyncio.run(log.append_async("owner:uid=1", "container.start", "c", "allow",
                                             "ok"))
        assert log.synced_seq == entry.seq
        assert (tmp_path / "disk" / "audit.sqlite3-wal").exists()
    finally:
        log.close()


def test_durable_entry_queued_during_an_fsync_is_committed_when_that_fsync_ends(
    tmp_path: Path, fsync: Fsync,
) -> None:
    # While an fsync runs the writer leaves durable entries queued (they would
    # wait for the next fsync anyway); its end must send the writer back to them.
    log = AuditLog.open(tmp_path / "audit.sqlite3", KEY, None, fsync=fsync)
    fsync.hold()

    async def main() -> list[int]:
        first = asyncio.create_task(log.append_async("agent", "data.read", "k1", "allow", "ok"))
        assert await asyncio.to_thread(fsync.started.wait, PROMPT_S)
        second = asyncio.create_task(log.append_async("agent", "data.read", "k2", "allow", "ok"))
        await asyncio.sleep(0)  # waits-on: nothing; the task runs up to its wait: queued
        fsync.release()
        entries = await asyncio.wait_for(asyncio.gather(first, second), PROMPT_S)
        return [e.seq for e in entries]

    try:
        assert asyncio.run(main()) == [1, 2]
    finally:
        fsync.release()
        log.close()


def test_every_fsync_goes_through_one_description_of_the_wal_held_since_the_first(
    tmp_path: Path,
) -> None:
    # Linux reports a failed write-back once to each open description that existed
    # when it failed; SQLite's own checkpoint fsync may take that report and ignore
    # it. A description opened for each fsync would then see a clean one: the log
    # keeps one open. Each description that reaches the seam is marked (O_NONBLOCK,
    # a flag of the open description and meaningless to fsync): unmarked = new.
    descriptions: list[int] = []

    def marking_fsync(fd: int) -> None:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        wal = os.readlink(f"/proc/self/fd/{fd}").endswith("-wal")
        if wal and not flags & os.O_NONBLOCK:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
            descriptions.append(fd)
        os.fsync(fd)

    path = tmp_path / "audit.sqlite3"
    log = AuditLog.open(path, KEY, None, fsync=marking_fsync)
    try:
        opened = len(descriptions)  # the one-off sync of what a killed daemon left
        for i in range(20):
            log.append("owner:uid=1", "container.start", f"c{i}", "allow", "ok")
    finally:
        log.close()
    assert len(descriptions) - opened == 1, descriptions


def test_a_sync_that_fails_with_anything_fails_its_appender_at_once(tmp_path: Path) -> None:
    # Not only an OSError: whatever stops an fsync, its entries are not known to be
    # durable, and a sync thread that died of it would leave appenders to time out.
    broken = threading.Event()

    def failing_fsync(fd: int) -> None:
        if broken.is_set():
            raise RuntimeError("the disk driver fell over")
        os.fsync(fd)

    path = tmp_path / "audit.sqlite3"
    log = AuditLog.open(path, KEY, None, fsync=failing_fsync, append_timeout_s=PROMPT_S * 3)
    try:
        broken.set()
        with pytest.raises(AuditError, match="fsync: RuntimeError: the disk driver fell over"):
            log.append("owner:uid=1", "container.start", "c0", "allow", "ok")
        broken.clear()
        after = log.append("owner:uid=1", "container.stop", "c0", "allow", "ok")
    finally:
        log.close()
    assert after.action == "container.stop"


def test_the_directory_of_a_new_wal_is_synced_before_its_entries_are_answered(
    tmp_path: Path,
) -> None:
    # The WAL's name must survive a power loss with its frames: the directory that
    # holds it is fsynced when the log first syncs that file.
    synced: list[str] = []

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        os.fsync(fd)

    path = tmp_path / "audit.sqlite3"
    log = AuditLog.open(path, KEY, None, fsync=recording_fsync)
    try:
        del synced[:]  # the one-off sync at open
        log.append("owner:uid=1", "container.start", "c0", "allow", "ok")
    finally:
        log.close()
    assert synced[:2] == [str(tmp_path), f"{path}-wal"], synced


def test_the_wal_is_synced_with_fdatasync_and_its_directory_with_fsync(tmp_path: Path) -> None:
    # A durable entry's answer waits for the WAL's sync: fdatasync (its data and
    # size, as SQLite syncs on Linux) is 0.24 against 0.30 ms p50 here. A new
    # WAL's directory keeps fsync, the one POSIX says makes its name durable.
    from pacd.audit.writer import _HeldWal

    held = _HeldWal(str(tmp_path / "audit.sqlite3-wal"), None)
    assert held._sync_file is getattr(os, "fdatasync", os.fsync)
    assert held._sync_dir is os.fsync
    if sys.platform.startswith("linux"):
        assert held._sync_file is os.fdatasync
