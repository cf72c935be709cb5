"""The group-commit writer: entries get their seq and MAC and are committed in order,
then one fsync makes everything committed before it durable.

The log lives in its own SQLite file (WAL). A commit (``synchronous=NORMAL``)
only writes the WAL file; a sync thread fsyncs that file (:func:`_fsync_wal`)
and an entry is acknowledged only once such an fsync covers it. Commits never
wait for an fsync: while one runs, the next commits gather for the one after,
so many concurrent writers share each fsync (a pipelined group commit). If an
entry cannot be committed, or its fsync fails, every waiter concerned gets
:class:`~pacd.errors.AuditError` so the action it was logging fails closed.

One writer thread drains a queue of pending entries, assigns seqs and MACs in
order and writes each batch in one transaction. An event loop hands over what
its requests appended during one turn together, at the turn's end
(:meth:`AuditLog._end_of_turn`): one lock and one wake-up per turn, and the
writer does not compete for the GIL with a loop still serving that turn's
requests. Durable entries always go to the writer: on a busy daemon each SQLite
call on the event loop releases the GIL and queues for it again, which costs
the loop (and every request on it) more than the hand-off does, and those
entries wait for an fsync anyway. The one exception is a turn of *written*
entries only while the writer sleeps with nothing queued: the loop commits them
itself, in one transaction. They are next in line then, so order is kept, and
their answer does not wait for two thread wake-ups (writer, then loop), which
took longer than the commit. Whoever commits holds the writer's role
(``_inline`` or ``_writer_busy``, under the queue lock), so only one of them
uses the connection at a time. A commit on the loop may also run SQLite's
automatic WAL checkpoint (every ~1000 pages: a few hundred to a thousand
commits), which copies the WAL into the database and fsyncs both files; the
loop serves nothing meanwhile (on a stalled disk, until the disk answers),
where the writer thread would have made only the audited requests wait.

Two durability classes (``append(..., durable=...)``). *Durable* (the
default; actions that change state or release data): answered only after the
fsync, as above. *Written* (reads of metadata): answered once committed to the
WAL file, without waiting for an fsync, so a killed daemon keeps the entry (the
kernel has it) but a power loss within the next few milliseconds may not; the
sync thread fsyncs the WAL at most ``written_sync_s`` after such a commit, or
sooner with the next durable entry, sharing one fsync among everything written
meanwhile. The keychain checkpoint only ever names fsynced entries
(:attr:`AuditLog.synced_seq`).

Under load the writer, not the disk, is the limit, so the per-entry work is
kept small: callers pre-encode their entry, the writer splices in only seq and
time (:func:`_entry_parts`, checked against :func:`pacd.audit.entry.canonical_entry`
by a property test and by every ``verify``), and each event loop is woken once
per batch or fsync with all of its results (its waiters' timeouts share one
timer instead of one timer each).

An appender that stops waiting (its timeout passed, or it was cancelled) has
failed, so its action does not happen. Its entry is then withdrawn if the
writer has not taken it yet; if it was already being written, or waits for its
fsync, it is durable anyway, and the writer follows it with an
``audit.abandoned`` entry naming its seq, so the log never shows an "allow" for
an action that was not done without also saying so. Entries whose fsync failed
are named the same way.

While the log is untrusted (see :mod:`pacd.audit.checkpoint`) the checkpoint
is not moved until the owner re-anchors it with a carbonProof approval whose
own entry is the first the new checkpoint covers (:meth:`AuditLog.reanchor`).
The daemon refuses every action above *basic* while the health refuses.

The checkpoint normally trails the database by up to 0.25 s (see
:class:`~pacd.audit.checkpoint.Checkpointer`); an entry appended with
``checkpoint=True`` is not acknowledged until the checkpoint covers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any

from pacd.audit.checkpoint import (
    AuditHealth,
    Checkpointer,
    Untrusted,
    check_against_checkpoint,
    checkpoint_name,
)
from pacd.audit.entry import (
    COLUMNS,
    DECISIONS,
    GENESIS,
    MAX_DETAILS_BYTES,
    MAX_REASON_CHARS,
    SCHEMA,
    AuditEntry,
    capped_details,
    capped_reason,
    plain_columns,
)
from pacd.audit.verify import VerifyResult, read_connection, verify
from pacd.core.actors import DAEMON_ACTOR
from pacd.core.canonical import canonical_json
from pacd.errors import AuditError, InvalidRequest, UncoveredEntry
from pacd.vault.keychain import SecretStore

log = logging.getLogger(__name__)

_SHA256_BLOCK = 64
_DEFAULT_MAX_BATCH = 1024
#: how long after a "written" entry is committed its fsync starts at the latest:
#: entries written meanwhile share it. With the fsync itself (a fraction of a
#: millisecond to a few on this class of disk) it stays within the 10 ms promised.
#: Not sooner: each fsync wakes the sync thread twice and hands the GIL back and
#: forth with the event loop. At 1 ms, one client's authorised metadata reads cost
#: the sync thread 28.5 us of CPU each and the loop 208 us; at 5 ms, 7-9.5 and
#: 157-181 us. The promise holds while one fsync takes at most 5 ms.
WRITTEN_SYNC_S = 0.005
#: after a failed fsync of written entries, when to try again
_SYNC_RETRY_S = 1.0


# What canonical_json (ensure_ascii=False) does to a str, without the
# JSONEncoder.encode dispatch around it.
_encode_str: Callable[[str], str] = json.encoder.encode_basestring


def _json_float(when: float) -> str:
    """``when`` as canonical JSON: json encodes a finite float with float.__repr__."""
    return float.__repr__(when)


def _entry_parts(  # noqa: PLR0917 - one parameter per MACed column
    actor: str, action: str, target: str, decision: str, reason: str, details_text: str
) -> tuple[str, str]:
    """The canonical entry around its seq and time, so the writer only splices those in.

    ``prefix + str(seq) + middle + _json_float(time) + "}"`` is byte for byte
    ``canonical_entry(...)`` (keys in sorted order; ``details_text`` is canonical
    JSON already). Building the parts in the appending thread keeps the single
    writer's per-entry work small.
    """
    enc = _encode_str
    prefix = (
        '{"action":' + enc(action) + ',"actor":' + enc(actor) + ',"decision":' + enc(decision)
        + ',"details":' + details_text + ',"reason":' + enc(reason) + ',"seq":'
    )
    return prefix, ',"target":' + enc(target) + ',"time":'


def _splice(prefix: str, seq: int, middle: str, when: float) -> bytes:
    return (prefix + str(seq) + middle + _json_float(when) + "}").encode("utf-8")


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


class _ChainKey:
    """HMAC-SHA256 (RFC 2104) under one key, with the key's two padded blocks hashed once.

    ``link(prev, canonical)`` equals ``chain_mac(key, prev, canonical)``. Keying
    ``hmac.digest`` again for every entry costs about three times as much, and
    the single writer does this once per entry. ``verify`` keeps using the
    standard library's ``hmac``, so each verification also checks this code.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _SHA256_BLOCK:
            key = hashlib.sha256(key).digest()
        block = key.ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def link(self, prev_mac: bytes, canonical: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(prev_mac)
        inner.update(canonical)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


_ROW_PARAMS = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_CHUNK = 256


@functools.cache
def _insert_sql(rows: int) -> str:
    return f"INSERT INTO audit_log ({COLUMNS}) VALUES " + ", ".join([_ROW_PARAMS] * rows)  # noqa: S608


def _insert_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert ``rows`` with a few multi-row statements, in power-of-two chunks.

    ``executemany`` steps once per row and releases the GIL around every step;
    with appending threads waiting for the GIL the writer then queues for it
    again after each row. A few statements (at most nine distinct ones, all
    kept in the connection's statement cache) cost the same SQLite work.
    """
    start, total = 0, len(rows)
    while start < total:
        size = min(_INSERT_CHUNK, 1 << ((total - start).bit_length() - 1))
        conn.execute(_insert_sql(size), list(chain.from_iterable(rows[start:start + size])))
        start += size


class _Submission:
    """One submitted entry, from its submitter to the writer and back."""

    __slots__ = ("action", "actor", "decision", "details", "details_text", "done", "durable",
                 "entry", "error", "future", "middle", "owner", "prefix", "reason", "row",
                 "target", "ticket", "waker")

    def __init__(  # noqa: PLR0917 - one parameter per entry column
        self, actor: str, action: str, target: str, decision: str, reason: str,
        details: dict[str, Any], details_text: str, prefix: str, middle: str,
    ) -> None:
        self.actor = actor
        self.action = action
        self.target = target
        self.decision = decision
        self.reason = reason
        self.details = details
        self.details_text = details_text
        self.prefix = prefix
        self.middle = middle
        #: set for append_async: who resolves ``future`` on the waiter's loop
        self.owner: _LoopWaiters | None = None
        self.future: asyncio.Future[AuditEntry] | None = None
        #: set for append: released (once, with ``done``) to wake the appender
        self.waker: threading.Lock | None = None
        #: the committed row, set by the writer before ``done``
        self.row: tuple[Any, ...] = ()
        #: built by the writer only when listeners need it; else by the waiter
        self.entry: AuditEntry | None = None
        self.error: AuditError | None = None
        self.done = False
        #: submission order, set under the queue lock (see AuditLog._give_up)
        self.ticket = -1
        #: answered only once fsynced (else once written to the file; see AuditLog.append)
        self.durable = True

    def committed(self) -> AuditEntry:
        """The entry as committed (call once ``done`` and no ``error``).

        Waiters build their own entry, in their own thread, so the single
        writer spends no time on it.
        """
        if self.entry is None:
            row = self.row
            self.entry = AuditEntry(row[0], row[1], self.actor, self.action, self.target,
                                    self.decision, self.reason, self.details, row[8])
        return self.entry


class _LoopWaiters:
    """The ``append_async`` waiters of one event loop: one wake-up per batch, one timer.

    A timer per waiter (``asyncio.timeout``) costs more than the rest of an
    append. One loop's entries are committed in the order they were submitted,
    so its oldest waiter is always the next to be answered or to time out, and
    one timer set for the oldest deadline covers them all. Only the loop's own
    thread touches this object, except :meth:`abandon` once the loop is closed.
    """

    __slots__ = ("_give_up", "_registry", "_timeout_s", "_timer", "_waiting", "loop")

    def __init__(
        self, loop: asyncio.AbstractEventLoop,
        registry: dict[asyncio.AbstractEventLoop, _LoopWaiters], timeout_s: float,
        give_up: Callable[[_Submission, bool], bool],
    ) -> None:
        self.loop = loop
        self._registry = registry
        self._timeout_s = timeout_s
        self._give_up = give_up
        self._timer: asyncio.TimerHandle | None = None
        #: (deadline on the loop's clock, entry), oldest first
        self._waiting: deque[tuple[float, _Submission]] = deque()

    def watch(self, pending: _Submission) -> None:
        """Start the timeout of a waiter whose entry is queued."""
        deadline = self.loop.time() + self._timeout_s
        self._waiting.append((deadline, pending))
        if self._timer is None:
            self._timer = self.loop.call_at(deadline, self._expire)
            self._registry[self.loop] = self

    def resolve(self, items: list[_Submission]) -> None:
        """On the loop, once per batch: hand each entry (or error) to its future."""
        for p in items:
            future = p.future
            if future is None or future.done():
                continue  # timed out or cancelled meanwhile
            if p.error is not None:
                future.set_exception(p.error)
            else:
                future.set_result(p.committed())
        waiting = self._waiting
        while waiting and _settled(waiting[0][1]):
            waiting.popleft()
        if not waiting:
            self._retire()

    def _expire(self) -> None:
        self._timer = None
        now = self.loop.time()
        waiting = self._waiting
        while waiting:
            deadline, pending = waiting[0]
            future = pending.future
            if future is not None and not future.done():
                if deadline > now:
                    break
                if self._give_up(pending, False):
                    future.set_exception(AuditError(
                        f"the audit log did not confirm the entry within {self._timeout_s:g} s"))
                elif pending.error is not None:  # finished just now; its wake-up is on the way
                    future.set_exception(pending.error)
                else:
                    future.set_result(pending.committed())
            waiting.popleft()
        if waiting:
            self._timer = self.loop.call_at(waiting[0][0], self._expire)
        else:
            self._retire()

    def _retire(self) -> None:
        """Nobody on this loop is waiting: drop the timer and the loop's registration.

        A later append on the loop registers a fresh object, so a closed loop is
        never kept alive by the log.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._registry.get(self.loop) is self:
            del self._registry[self.loop]

    def abandon(self) -> None:
        """The loop is closed (nobody can be waiting on it): forget it, from any thread."""
        self._waiting.clear()
        if self._registry.get(self.loop) is self:
            self._registry.pop(self.loop, None)


def _writer_failure(exc: BaseException) -> AuditError:
    """What the appenders of a batch get when committing it raised something unforeseen
    (logged here, with its traceback)."""
    log.exception("audit writer failure")
    return AuditError(f"the audit writer failed: {type(exc).__name__}: {exc}")


def _settled(pending: _Submission) -> bool:
    return pending.future is None or pending.future.done()


def _connect(path: Path) -> sqlite3.Connection:
    """The writer's connection to the log at ``path`` (created owner-only), in WAL mode."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        # Create it owner-only; SQLite gives the -wal/-shm files the same mode.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.close()
        raise AuditError(f"the audit log {path} cannot use WAL mode (got {mode!r})")
    # Commits only write the WAL file; the sync thread fsyncs it (_fsync_wal), so
    # one fsync covers every commit made before it and the writer never waits for one.
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _wal_path(path: Path) -> str:
    """The WAL file of the log at ``path``: SQLite puts it next to the file a symlink names."""
    return f"{os.path.realpath(path)}-wal"


#: What makes the log's WAL durable: fdatasync where there is one (as SQLite
#: itself syncs on Linux). It writes a file's data and what reading it back needs
#: (a WAL that grew: its size), not its times: 0.24 against 0.30 ms (p50) per
#: sync on this class of disk, and a durable read waits for one.
_SYNC_DATA: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


def _fsync_wal(wal: str, fsync: Callable[[int], None] | None = None) -> None:
    """Make every frame SQLite has written to the log's WAL durable (one-off, at open).

    Entries committed with ``synchronous=NORMAL`` are in the WAL file (the
    kernel's page cache) but not yet on the disk. fsync covers the whole file,
    so one call makes every such commit durable; SQLite itself syncs the WAL
    before it copies frames into the database, so frames already moved out are
    durable too.
    """
    fd = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
    try:
        (fsync or _SYNC_DATA)(fd)
    finally:
        os.close(fd)


class _HeldWal:
    """The log's WAL file held open by the sync thread, for every fsync after the first.

    Linux reports a failed write-back once to each open file description that
    existed when it failed. SQLite fsyncs the WAL through its own descriptor in
    its automatic checkpoints and, the commit being done, ignores a failure
    there; a descriptor opened afterwards would then see a clean fsync for pages
    that never reached the disk. This one is opened at the first sync after the
    file appears (a commit or two into a new WAL, long before the 1000 pages of
    SQLite's first automatic checkpoint) and kept, so it sees that failure too.
    It is reopened only when SQLite has replaced the file (another inode), and
    the directory is synced each time it is opened.
    """

    def __init__(self, wal: str, fsync: Callable[[int], None] | None) -> None:
        self._wal = wal
        self._sync_file = fsync or _SYNC_DATA
        # fsync for the directory: POSIX has it make a new name durable;
        # fdatasync on a directory does on Linux's filesystems, without a promise.
        # Once per WAL file, so it costs nothing that matters.
        self._sync_dir = fsync or os.fsync
        self._fd: int | None = None

    def sync(self) -> None:
        now = os.stat(self._wal)
        if self._fd is not None:
            held = os.fstat(self._fd)
            if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
                self.close()
        if self._fd is None:
            self._fd = os.open(self._wal, os.O_RDONLY | os.O_CLOEXEC)
            # A new WAL file's name is durable only once its directory is: with
            # synchronous=FULL SQLite synced the directory at the file's first sync;
            # its commits no longer sync, so this does.
            directory = os.open(os.path.dirname(self._wal), os.O_RDONLY | os.O_DIRECTORY
                                | os.O_CLOEXEC)
            try:
                self._sync_dir(directory)
            finally:
                os.close(directory)
        self._sync_file(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _check_class(checkpoint: bool, durable: bool) -> None:
    if checkpoint and not durable:
        raise ValueError("an entry the checkpoint must cover has to be durable")


def _read_head(conn: sqlite3.Connection) -> tuple[int, bytes]:
    row = conn.execute("SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    return (0, GENESIS) if row is None else (int(row[0]), bytes(row[1]))


class AuditLog:
    """An append-only, HMAC-chained log in its own SQLite file.

    ``checkpoints`` may be None only where truncation detection is not wanted
    (tests, benchmarks); the daemon always passes its secret store.
    ``max_batch`` bounds entries per transaction (1 = one fsync per entry).
    """

    def __init__(
        self, path: Path, key: bytes, conn: sqlite3.Connection, head: tuple[int, bytes], *,
        checkpoints: SecretStore | None, untrusted: Untrusted | None,
        checkpoint_seq: int | None, clock: Callable[[], float], max_batch: int,
        append_timeout_s: float, written_sync_s: float = WRITTEN_SYNC_S,
        fsync: Callable[[int], None] | None = None,
    ) -> None:
        """Wire up a log already opened by :meth:`open` (no I/O, no threads here)."""
        if len(key) < 32:
            raise ValueError("the audit key must be at least 256 bits")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.path = path
        self._key = bytes(key)
        self._chain_key = _ChainKey(self._key)
        self._conn = conn
        self._head = head
        self._clock = clock
        self._max_batch = max_batch
        self._append_timeout_s = append_timeout_s
        self._listeners: list[Callable[[AuditEntry], None]] = []
        #: guards the queue; plain Lock so submitting does not go through
        #: Condition's Python-level wrappers, notified only when the writer sleeps
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._writer_sleeping = False
        #: an event loop is committing its turn's "written" entries itself (see
        #: _end_of_turn); the writer does not take a batch meanwhile
        self._inline = False
        #: the writer has taken a batch (or a note) and is not done with it
        self._writer_busy = False
        #: the writer holds seqs for an audit.abandoned note not yet committed: loops
        #: leave their entries to it, so the note goes with the next batch
        self._note_pending = False
        self._queue: deque[_Submission] = deque()
        #: each loop's entries of its current turn (see _gather_for_turn_end)
        self._loop_batches: dict[asyncio.AbstractEventLoop, list[_Submission]] = {}
        #: how many queued entries are "written" ones (they never wait for an fsync)
        self._written_queued = 0
        #: the sync thread is in an fsync (durable entries then wait for it to end)
        self._syncing = False
        #: tickets below _taken have left the queue for the writer; below
        #: _finished their batch is over (committed or failed)
        self._next_ticket = 0
        self._taken = 0
        self._finished = 0
        #: entries whose appenders gave up while the writer had them
        self._gave_up: list[_Submission] = []
        #: the append_async waiters of each event loop that has some
        self._loop_waiters: dict[asyncio.AbstractEventLoop, _LoopWaiters] = {}
        self._closing = False
        self._closed = False
        self._untrusted = untrusted
        self._checkpoint_seq = checkpoint_seq
        self._health_listeners: list[Callable[[AuditHealth], None]] = []
        self._resync = False
        self.checkpoint_name = checkpoint_name(path)
        self._secrets = checkpoints
        self._checkpointer: Checkpointer | None = None
        self._written_sync_s = written_sync_s
        #: the newest (seq, mac) known to be fsynced; the head at open is (open syncs it)
        self._synced = head
        self._wal = _HeldWal(_wal_path(path), fsync)
        #: guards what the sync thread is asked to do: the committed durable entries
        #: waiting for an fsync, and when the oldest commit not yet fsynced was made
        #: and its fsync is due (monotonic; None: no "written" entry waits)
        self._sync_cond = threading.Condition(threading.Lock())
        self._sync_waiters: list[_Submission] = []
        self._unsynced_from: float | None = None
        self._sync_due: float | None = None
        self._sync_stop = False
        #: committed entries whose fsync failed, for the writer's next audit.abandoned note
        self._unsynced_failed: list[int] = []
        #: seconds from the oldest unsynced commit to the end of the fsync covering
        #: it, for the last such fsync (None: none yet)
        self.written_sync_lag_s: float | None = None
        self._writer = threading.Thread(target=self._run, name="pacd-audit-writer", daemon=True)
        self._syncer = threading.Thread(target=self._run_sync, name="pacd-audit-sync",
                                        daemon=True)

    @classmethod
    def open(
        cls,
        path: Path,
        key: bytes,
        checkpoints: SecretStore | None,
        clock: Callable[[], float] = time.time,
        *,
        max_batch: int = _DEFAULT_MAX_BATCH,
        append_timeout_s: float = 30.0,
        written_sync_s: float = WRITTEN_SYNC_S,
        fsync: Callable[[int], None] | None = None,
    ) -> AuditLog:
        """Open (or create) the log at ``path``, check it against its checkpoint, start writing.

        ``checkpoints`` may be None only where truncation detection is not wanted
        (tests, benchmarks); the daemon always passes its secret store.
        ``max_batch`` bounds entries per transaction (1 = one fsync per entry).
        ``written_sync_s``: how long a "written" entry may wait for its fsync to start.
        ``fsync``: how a file descriptor is synced (a seam for faults the disk will not make).
        """
        if written_sync_s < 0:
            raise ValueError("written_sync_s must not be negative")
        path = Path(path)
        try:
            conn = _connect(path)
        except sqlite3.Error as exc:
            raise AuditError(f"cannot open the audit log {path}: {exc}") from exc
        try:
            conn.execute(SCHEMA)
            head = _read_head(conn)
            # A process killed right after a "written" entry leaves it in the file
            # but maybe not on the disk; the checkpoint must not get ahead of it.
            with contextlib.suppress(FileNotFoundError):
                _fsync_wal(_wal_path(path), fsync)
            untrusted, checkpoint_seq = (None, None) if checkpoints is None else (
                check_against_checkpoint(conn, checkpoints, checkpoint_name(path), head[0]))
            log = cls(path, key, conn, head, checkpoints=checkpoints, untrusted=untrusted,
                      checkpoint_seq=checkpoint_seq, clock=clock, max_batch=max_batch,
                      append_timeout_s=append_timeout_s, written_sync_s=written_sync_s,
                      fsync=fsync)
        except (sqlite3.Error, OSError) as exc:
            conn.close()
            raise AuditError(f"cannot open the audit log {path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        log._start()
        return log

    def _start(self) -> None:
        if self._secrets is not None:
            self._checkpointer = Checkpointer(
                self._secrets, self.checkpoint_name, on_result=self._health_changed)
            if self._untrusted is None and self._head[0] > 0:
                # A crash between a commit and its checkpoint write leaves the
                # checkpoint behind; bring it up to the (consistent) head now.
                self._checkpointer.schedule(*self._head)
        self._writer.start()
        self._syncer.start()

    # --- health -----------------------------------------------------------------

    @property
    def untrusted(self) -> Untrusted | None:
        """What was found at open, until the owner re-anchors (None: trusted)."""
        return self._untrusted

    def health(self) -> AuditHealth:
        cp = self._checkpointer
        if cp is None:
            return AuditHealth(self._head[0], None, None, None, None, 0)
        written_seq, written_at, error, failures = cp.snapshot()
        return AuditHealth(
            head_seq=self._head[0],
            checkpoint_seq=written_seq if written_seq is not None else self._checkpoint_seq,
            checkpoint_age_s=None if written_at is None else round(
                max(0.0, time.monotonic() - written_at), 3),
            untrusted=self._untrusted,
            checkpoint_error=None if error is None else str(error) or type(error).__name__,
            checkpoint_failures=failures)

    def add_health_listener(self, callback: Callable[[AuditHealth], None]) -> None:
        """Call ``callback(health)`` after each checkpoint write (any thread) and re-anchor."""
        self._health_listeners.append(callback)

    def _health_changed(self) -> None:
        if not self._health_listeners:
            return
        health = self.health()
        for listener in list(self._health_listeners):
            try:
                listener(health)
            except Exception:
                log.exception("audit health listener failed")

    def reanchor(self, seq: int) -> None:
        """The owner has approved the log as it stands: checkpoint it, from entry ``seq`` on.

        ``seq`` is the approval's own entry, already durable; the new checkpoint
        covers it (and anything committed since) before this returns, else
        AuditError and the log stays untrusted.
        """
        cp = self._checkpointer
        if cp is None:
            return
        with self._lock:
            previous, self._untrusted = self._untrusted, None
        # ``seq`` is durable, so the synced head is at least ``seq``: its writer set it
        # first. Not the head: a checkpoint ahead of the disk could outlive the entries.
        cp.schedule(*self._synced)
        try:
            cp.cover(seq, self._append_timeout_s)
        except AuditError:
            with self._lock:
                self._untrusted = previous
            raise
        finally:
            self._health_changed()

    # --- appending ------------------------------------------------------------

    def add_listener(self, callback: Callable[[AuditEntry], None]) -> None:
        """Call ``callback(entry)`` after each entry is committed, in seq order (on the
        thread that committed it, before the fsync: the writer's, or an event loop's
        for a turn of "written" entries, see :meth:`_end_of_turn`).

        Callbacks must be quick and must not append; asyncio users hand over with
        ``loop.call_soon_threadsafe`` (or ``call_soon`` on the loop's own thread), so
        what they deliver stays in seq order. A failing callback is logged and ignored.
        """
        self._listeners.append(callback)

    def _prepare(  # noqa: PLR0917 - mirrors append
        self, actor: str, action: str, target: str, decision: str, reason: str,
        details: dict[str, Any] | None,
    ) -> _Submission:
        """Check and pre-encode one entry in the caller's thread (no lock held)."""
        details_text = "{}"
        details_problem = ""
        if details is None or (type(details) is dict and not details):
            details = {}
        elif isinstance(details, dict):
            try:
                details_text = canonical_json(details).decode("utf-8")
            except (TypeError, ValueError) as exc:
                details_problem = f"details must be JSON-serialisable: {exc}"
            details = dict(details)
        else:
            details_problem = "details must be a JSON object"
        if len(details_text) > MAX_DETAILS_BYTES // 4 and (
                len(details_text.encode("utf-8")) > MAX_DETAILS_BYTES):
            details, details_text = capped_details(details_text)
        if type(reason) is str and len(reason) > MAX_REASON_CHARS:
            reason = capped_reason(reason)
        if details_problem or not (
            type(actor) is str and type(action) is str and type(target) is str
            and type(reason) is str and type(decision) is str and decision in DECISIONS
        ):
            actor, action, target, decision, reason = plain_columns(
                actor, action, target, decision, reason, details_problem)
        prefix, middle = _entry_parts(actor, action, target, decision, reason, details_text)
        return _Submission(actor, action, target, decision, reason, details, details_text,
                        prefix, middle)

    def _enqueue(self, *entries: _Submission) -> None:
        """Queue ``entries`` in order for the writer, waking it once."""
        with self._lock:
            if self._closing:
                raise AuditError("the audit log is closed")
            for pending in entries:
                pending.ticket = self._next_ticket
                self._next_ticket += 1
                self._queue.append(pending)
                if not pending.durable:
                    self._written_queued += 1
            if self._writer_sleeping:
                self._cond.notify()

    def _give_up(self, pending: _Submission, note_if_finished: bool) -> bool:
        """The appender of ``pending`` stops waiting: True if its entry had not finished.

        Decided under the queue lock, against the writer's own bookkeeping: an
        entry still queued is withdrawn and never written; one the writer has
        taken, or one committed and waiting for its fsync, may be made durable
        regardless, so it is noted and, once committed, followed by an
        ``audit.abandoned`` entry. False means the entry finished first (``done``
        is set only after its outcome): a timed-out appender then takes that
        outcome instead; a cancelled one (``note_if_finished``) has it noted all
        the same, since its caller goes no further.
        """
        with self._lock:
            # An entry a loop committed itself was never queued: its ticket is -1,
            # always below _taken, so it is handled as one the writer had taken.
            if pending.ticket >= self._taken:
                self._queue.remove(pending)
                if not pending.durable:
                    self._written_queued -= 1
                return True
            gave_up = not pending.done
            if gave_up or (note_if_finished and pending.error is None):
                self._gave_up.append(pending)
                if self._writer_sleeping:
                    self._cond.notify()
            return gave_up

    def _abandoned_note(self, seqs: list[int]) -> _Submission:
        """The entry naming durable entries whose appenders had already failed."""
        return self._prepare(
            DAEMON_ACTOR, "audit.abandoned", "audit", "info",
            "the appenders of these entries stopped waiting before they were confirmed, "
            "so the actions they record failed", {"seqs": sorted(seqs)})

    def _timeout_error(self) -> AuditError:
        return AuditError(
            f"the audit log did not confirm the entry within {self._append_timeout_s:g} s"
        )

    def append(  # noqa: PLR0917 - one parameter per entry column
        self, actor: str, action: str, target: str, decision: str, reason: str,
        details: dict[str, Any] | None = None, *, checkpoint: bool = False,
        durable: bool = True,
    ) -> AuditEntry:
        """Record one entry; returns once it is durable, else raises AuditError.

        ``durable=False`` (the "written" class, for reads of metadata): return
        once the entry is committed to the log's file, so a killed daemon keeps
        it, without waiting for the fsync; the writer fsyncs it within
        ``written_sync_s`` (plus the fsync itself), sharing one fsync among all
        entries written meanwhile. A power loss in that window can lose it.

        ``checkpoint``: also wait until the keychain checkpoint covers the entry
        (AuditError if that write fails), so removing it is detected even after
        a crash right after the answer. While the log is untrusted there is no
        checkpoint to move (that needs the owner's re-anchor), so it is not waited for.
        A checkpointed entry is always durable.
        """
        _check_class(checkpoint, durable)
        entry = self._append(actor, action, target, decision, reason, details, durable)
        if checkpoint:
            try:
                self._cover(entry.seq)
            except AuditError as exc:
                raise UncoveredEntry(exc.message, entry.seq) from exc
        return entry

    def _cover(self, seq: int) -> None:
        if self._checkpointer is not None and self._untrusted is None:
            self._checkpointer.cover(seq, self._append_timeout_s)

    def _append(  # noqa: PLR0917 - one parameter per entry column
        self, actor: str, action: str, target: str, decision: str, reason: str,
        details: dict[str, Any] | None, durable: bool,
    ) -> AuditEntry:
        pending = self._prepare(actor, action, target, decision, reason, details)
        pending.durable = durable
        # A lock of its own, held until the writer is done with the entry: each
        # appender is woken alone, not every blocked appender on every batch.
        pending.waker = waker = threading.Lock()
        waker.acquire()
        self._enqueue(pending)
        if not waker.acquire(timeout=self._append_timeout_s) and self._give_up(pending, False):
            raise self._timeout_error()
        if pending.error is not None:
            raise pending.error
        return pending.committed()

    async def append_async(  # noqa: PLR0917 - mirrors append
        self, actor: str, action: str, target: str, decision: str, reason: str,
        details: dict[str, Any] | None = None, *, checkpoint: bool = False,
        durable: bool = True,
    ) -> AuditEntry:
        """Like :meth:`append` without blocking the event loop."""
        _check_class(checkpoint, durable)
        entry = await self._append_async(actor, action, target, decision, reason, details,
                                         durable)
        if checkpoint and self._checkpointer is not None and self._untrusted is None:
            await asyncio.to_thread(self._cover, entry.seq)
        return entry

    async def _append_async(  # noqa: PLR0917 - mirrors append
        self, actor: str, action: str, target: str, decision: str, reason: str,
        details: dict[str, Any] | None, durable: bool,
    ) -> AuditEntry:
        loop = asyncio.get_running_loop()
        pending = self._prepare(actor, action, target, decision, reason, details)
        pending.durable = durable
        future = self._gather_for_turn_end(loop, pending)
        try:
            return await future
        except asyncio.CancelledError:
            # Handed to the writer, or committed on the loop: see _give_up. Not
            # yet either: its future is done, so the loop's commit leaves it out.
            if pending.owner is not None or pending.done:
                self._give_up(pending, True)
            raise

    def _queue_for_writer(self, loop: asyncio.AbstractEventLoop,
                          batch: list[_Submission]) -> None:
        """Queue ``batch`` (each with its future) for the writer; the futures get their
        outcome on ``loop``, AuditError at once if the log is closed."""
        owner = self._loop_waiters.get(loop)
        if owner is None:
            owner = _LoopWaiters(loop, self._loop_waiters, self._append_timeout_s,
                                 self._give_up)
        for p in batch:
            p.owner = owner
        try:
            self._enqueue(*batch)
        except AuditError as exc:
            for p in batch:
                p.owner = None
                if p.future is not None:
                    p.future.set_exception(exc)
            return
        # Resolution is scheduled onto this loop, so it cannot run before these lines.
        for p in batch:
            owner.watch(p)

    def _take_inline(self) -> bool:
        """Whether an event loop may commit its "written" entries itself, now.

        Only when the writer sleeps with nothing queued and no note to write: the
        entries are then next in line anyway, and committing them on the loop
        spares the hand-off to the writer and back (two thread wake-ups, more
        than the commit costs). Durable entries always go to the writer: they
        wait for an fsync regardless, and the writer gathers them.
        """
        with self._lock:
            if self._writer_busy or self._inline or self._writer_has_work():
                return False
            self._inline = True
            return True

    def _writer_has_work(self) -> bool:
        """Whether something waits for the writer (call under the queue lock): an entry,
        a note about abandoned entries, or closing."""
        return bool(self._queue or self._closing or self._gave_up or self._unsynced_failed
                    or self._note_pending)

    def _gather_for_turn_end(self, loop: asyncio.AbstractEventLoop,
                             pending: _Submission) -> asyncio.Future[AuditEntry]:
        """Hold ``pending`` until the end of the loop's current turn (:meth:`_end_of_turn`).

        The requests a loop serves in one turn append their entries one after the
        other; handed over one by one, the first would wake the writer, which then
        competes for the GIL with the loop still serving the others, and the
        batch is cut in pieces. Gathered, they cost one hand-off (or one commit on
        the loop) per turn.
        """
        future: asyncio.Future[AuditEntry] = loop.create_future()
        pending.future = future
        batch = self._loop_batches.get(loop)
        if batch is None:
            self._loop_batches[loop] = batch = []
            loop.call_soon(self._end_of_turn, loop)
        batch.append(pending)
        return future

    def _end_of_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """The entries a loop's turn gathered: committed on the loop if they are all
        "written" ones and the writer is idle (see :meth:`_take_inline`), else queued
        for the writer in one go.

        An appender cancelled before this (its future is done) is left out: its
        entry is never written, as one withdrawn from the queue.
        """
        batch = [p for p in self._loop_batches.pop(loop) if not _settled(p)]
        if not batch:
            return
        if (len(batch) > self._max_batch or any(p.durable for p in batch)
                or not self._take_inline()):
            self._queue_for_writer(loop, batch)
            return
        try:
            self._write(batch)
        except BaseException as exc:
            self._release_inline()
            error = exc if isinstance(exc, AuditError) else _writer_failure(exc)
            for p in batch:
                p.error = error
            self._resolve_on_loop(batch)
            return
        try:
            # Still holding the writer's role: listeners hear of entries in seq order.
            self._committed(batch)
        finally:
            self._release_inline()
            self._resolve_on_loop(batch)  # committed, whatever a listener did

    @staticmethod
    def _resolve_on_loop(batch: list[_Submission]) -> None:
        for p in batch:
            p.done = True
            future = p.future
            if future is None or future.done():
                continue
            if p.error is not None:
                future.set_exception(p.error)
            else:
                future.set_result(p.committed())

    def _release_inline(self) -> None:
        with self._lock:
            self._inline = False
            # The writer left alone whatever came meanwhile (see _run): its turn.
            if self._writer_sleeping and self._writer_has_work():
                self._cond.notify()

    def _finish(self, batch: list[_Submission]) -> None:
        """Wake every waiter of a batch: one hand-off per event loop, one release per thread.

        Called exactly once per entry (``done`` guards :meth:`_fail`), so no
        waker is released twice.
        """
        by_owner: dict[_LoopWaiters, list[_Submission]] = {}
        for p in batch:
            p.done = True
            owner = p.owner
            if owner is not None:
                items = by_owner.get(owner)
                if items is None:
                    by_owner[owner] = [p]
                else:
                    items.append(p)
            elif p.waker is not None:
                p.waker.release()
        for owner, items in by_owner.items():
            try:
                owner.loop.call_soon_threadsafe(owner.resolve, items)
            except RuntimeError:  # that loop is closed, so nobody is waiting any more
                owner.abandon()

    def _fail(self, batch: list[_Submission], error: AuditError) -> None:
        for p in batch:
            if not p.done:
                p.error = error
        self._finish([p for p in batch if not p.done])

    def _run(self) -> None:
        #: seqs of durable entries whose appenders gave up, not yet named by an
        #: audit.abandoned entry; ``note_due``: write that entry without waiting
        #: for the next batch (not again after a failed attempt, so a failing
        #: disk is not retried in a busy loop: the note rides with the next batch)
        abandoned: list[int] = []
        note_due = False
        while True:
            with self._lock:
                # The previous batch is over: from here on an appender that gives
                # up finds its entry taken no more (see _give_up).
                self._finished = self._taken
                self._writer_busy = False
                while True:
                    if self._gave_up:
                        # Their batches are over, so ``error`` says whether each was
                        # committed; committed ones are (or will be) durable.
                        fresh = [p.row[0] for p in self._gave_up if p.error is None and p.row]
                        self._gave_up = []
                        if fresh:
                            abandoned += fresh
                            note_due = True
                    if self._unsynced_failed:
                        abandoned += self._unsynced_failed
                        self._unsynced_failed = []
                        note_due = True
                    # While an fsync runs, durable entries wait for the one after it
                    # whenever they are committed: committing them when it ends
                    # costs them nothing and gathers more into one commit. A
                    # "written" entry is answered at its commit, so it goes now.
                    self._note_pending = bool(abandoned)
                    if self._inline:
                        pass  # a loop is committing; it wakes the writer when done
                    elif self._closing or note_due or (self._queue and (
                            not self._syncing or self._written_queued
                            or len(self._queue) >= self._max_batch)):
                        break
                    self._writer_sleeping = True
                    try:
                        self._cond.wait()
                    finally:
                        self._writer_sleeping = False
                if not self._queue and not abandoned:
                    batch = None
                elif len(self._queue) <= self._max_batch:
                    batch = list(self._queue)
                    self._queue.clear()
                    self._written_queued = 0
                else:
                    batch = [self._queue.popleft() for _ in range(self._max_batch)]
                    self._written_queued = sum(1 for p in self._queue if not p.durable)
                if batch:
                    self._taken = batch[-1].ticket + 1
                self._writer_busy = batch is not None
            if batch is None:  # closing, and nothing left to write
                return
            if abandoned:
                batch.insert(0, self._abandoned_note(abandoned))
            committed = False
            try:
                committed = self._commit(batch)
            except BaseException as exc:  # never leave a waiter hanging
                self._fail(batch, _writer_failure(exc))
            note_due = False
            if abandoned and (committed or (self._closing and not self._queue)):
                if not committed:
                    log.error("audit: could not record that the appenders of entries %s "
                              "gave up", abandoned)
                abandoned = []

    def _commit(self, batch: list[_Submission]) -> bool:
        """Commit one batch from the writer thread; True if it was committed.

        Its "written" entries are answered now, its durable ones by the sync
        thread once an fsync covers them.
        """
        try:
            self._write(batch)
        except AuditError as exc:
            self._fail(batch, exc)
            return False
        self._committed(batch)
        self._finish([p for p in batch if not p.durable])
        return True

    def _write(self, batch: list[_Submission]) -> None:
        """Give ``batch`` its seqs and MACs and commit it in one transaction.

        Committed means written to the WAL file, not yet fsynced. AuditError if
        the batch could not be committed (none of it is then in the log).
        """
        if self._resync:
            try:
                self._resync_head()
            except sqlite3.Error as exc:
                raise AuditError(
                    f"the audit log could not record the entry durably: {exc}") from exc
        conn = self._conn
        # A single entry is one INSERT in its own (autocommit) transaction: one call
        # into SQLite instead of three. Each call releases the GIL and then queues
        # for it again behind whatever other thread is running, a wait that costs
        # more than the call itself.
        explicit = len(batch) > 1
        if explicit:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._recover_after_failure()
                raise AuditError(
                    f"the audit log could not record the entry durably: {exc}") from exc
        try:
            seq, mac = self._head
            when = float(self._clock())
            if not math.isfinite(when):
                raise AuditError("the clock returned a non-finite time")
            # The per-entry loop is the writer's hot path: the canonical entry is
            # prefix ‖ seq ‖ middle ‖ time, with the time encoded once per batch.
            tail = _json_float(when) + "}"
            link = self._chain_key.link
            rows: list[tuple[Any, ...]] = []
            add_row = rows.append
            for p in batch:
                seq += 1
                mac = link(mac, (p.prefix + str(seq) + p.middle + tail).encode())
                p.row = row = (seq, when, p.actor, p.action, p.target, p.decision, p.reason,
                               p.details_text, mac)
                add_row(row)
            if explicit:
                _insert_rows(conn, rows)
                conn.execute("COMMIT")
            else:
                conn.execute(_insert_sql(1), rows[0])
        except sqlite3.Error as exc:
            self._recover_after_failure()
            raise AuditError(f"the audit log could not record the entry durably: {exc}") from exc
        except BaseException:
            self._recover_after_failure()
            raise
        self._head = (seq, mac)

    def _committed(self, batch: list[_Submission]) -> None:
        """After a commit: tell the listeners, in seq order, and hand the batch to the
        sync thread.

        The listeners get the entry before its appender is answered, so waiter
        and listeners share one object.
        """
        listeners = self._listeners
        if listeners:
            for p in batch:
                entry = p.committed()
                for listener in list(listeners):
                    try:
                        listener(entry)
                    except Exception:
                        log.exception("audit listener failed")
        durable = [p for p in batch if p.durable]
        cond = self._sync_cond
        with cond:
            if durable:
                self._sync_waiters += durable
                cond.notify()
            if len(durable) < len(batch) and self._unsynced_from is None:
                self._unsynced_from = now = time.monotonic()
                self._sync_due = now + self._written_sync_s
                cond.notify()

    # --- the sync thread ----------------------------------------------------------

    def _run_sync(self) -> None:
        """fsync the WAL for whatever is committed and not yet synced, then answer it.

        Durable entries are synced as soon as they are committed; an fsync
        covers everything committed before it starts, so while one runs the
        next commits gather for the next one (commits never wait for an
        fsync). "Written" entries are synced at most ``written_sync_s`` after
        the oldest of them, or sooner with a durable one.
        """
        cond = self._sync_cond
        while True:
            with cond:
                while not self._sync_waiters:
                    due = self._sync_due
                    if due is None:
                        if self._sync_stop:
                            return
                        cond.wait()
                        continue
                    wait = due - time.monotonic()
                    if wait <= 0 or self._sync_stop:
                        break
                    cond.wait(wait)
                waiters, self._sync_waiters = self._sync_waiters, []
                unsynced_from, self._unsynced_from, self._sync_due = self._unsynced_from, None, None
                stopping = self._sync_stop
                # Read after taking the waiters: every one of them was committed
                # (and the head moved) before it was added.
                head = self._head
            if not self._sync(head, waiters, unsynced_from) and stopping:
                return

    def _sync(self, head: tuple[int, bytes], waiters: list[_Submission],
              unsynced_from: float | None) -> bool:
        """fsync everything up to ``head`` and answer ``waiters``; False if the fsync failed."""
        if head[0] > self._synced[0]:
            with self._lock:
                self._syncing = True
            try:
                self._wal.sync()
            except OSError as exc:
                self._sync_failed(head, waiters, unsynced_from, exc)
                return False
            except Exception as exc:  # whatever it was, these entries are not known durable
                log.exception("audit sync failed")
                self._sync_failed(head, waiters, unsynced_from,
                                  OSError(f"{type(exc).__name__}: {exc}"))
                return False
            finally:
                with self._lock:
                    self._syncing = False
                    if self._writer_sleeping:
                        self._cond.notify()
            if unsynced_from is not None:
                self.written_sync_lag_s = time.monotonic() - unsynced_from
            # Before the waiters wake: one that needs the checkpoint (``cover``)
            # then finds the write covering its entry already scheduled.
            self._synced_up_to(head)
        self._finish(waiters)
        return True

    def _sync_failed(self, head: tuple[int, bytes], waiters: list[_Submission],
                     unsynced_from: float | None, exc: OSError) -> None:
        """The entries are in the file but maybe not on the disk: their appenders fail
        closed, the writer notes them as abandoned, and the fsync is tried again."""
        log.error("audit entries up to %d are written but could not be made durable: %s",
                  head[0], exc)
        with self._sync_cond:
            if self._unsynced_from is None:
                self._unsynced_from = time.monotonic() if unsynced_from is None else unsynced_from
            self._sync_due = time.monotonic() + _SYNC_RETRY_S
        # Only entries somebody appended: a failed note is not itself noted, or a
        # failing disk would have the writer note its own notes for ever.
        failed = [p.row[0] for p in waiters if p.future is not None or p.waker is not None]
        if failed:
            with self._lock:
                self._unsynced_failed += failed
                if self._writer_sleeping:
                    self._cond.notify()
            self._fail(waiters, AuditError(
                f"the audit log could not record the entry durably: fsync: {exc}"))

    def _synced_up_to(self, head: tuple[int, bytes]) -> None:
        """Everything up to ``head`` is fsynced: say so, and checkpoint it.

        The checkpoint only ever names synced entries: one naming an entry a
        power loss then took would make the log look truncated.
        """
        self._synced = head
        if self._checkpointer is not None and self._untrusted is None:
            self._checkpointer.schedule(*head)

    def _recover_after_failure(self) -> None:
        """After a failed commit, trust only what the database says it holds.

        The head is re-read before the next batch rather than now: the failure
        (a full disk, an I/O error) may still be in effect, and the next batch
        fails closed the same way until it clears.
        """
        with contextlib.suppress(sqlite3.Error):
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        self._resync = True

    def _resync_head(self) -> None:
        # A connection that saw an I/O error may keep stale state: start afresh.
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self._conn = _connect(self.path)
        self._head = _read_head(self._conn)
        self._resync = False

    # --- reading ----------------------------------------------------------------

    @property
    def writing(self) -> int:
        """How many appends the writer has taken and not yet finished (a snapshot, for
        observing a writer stuck behind the database's lock)."""
        with self._lock:
            return self._taken - self._finished

    @property
    def synced_seq(self) -> int:
        """The newest seq known to be fsynced (``head()`` may be ahead by "written" entries)."""
        return self._synced[0]

    def head(self) -> tuple[int, bytes]:
        """(seq, mac) of the newest committed entry; (0, 32 zero bytes) when empty."""
        return self._head

    def entries(self, after: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Up to ``limit`` entries with seq > ``after``, oldest first."""
        if limit < 1 or limit > 10_000:
            raise InvalidRequest("limit must be between 1 and 10000")
        conn = read_connection(self.path)
        try:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
                (after, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit log: {exc}") from exc
        finally:
            conn.close()
        result = []
        for seq, when, actor, action, target, decision, reason, details, mac in rows:
            try:
                parsed = json.loads(details)
            except ValueError:
                parsed = {"unparseable": details}
            result.append(AuditEntry(int(seq), float(when), actor, action, target, decision,
                                     reason, parsed, bytes(mac)))
        return result

    def verify(self) -> VerifyResult:
        """Check the whole chain and the checkpoint; names the first bad seq (see
        :func:`pacd.audit.verify.verify`, which recomputes without this writer's encoder)."""
        return verify(self.path, self._key, self._secrets, self.checkpoint_name)

    # --- shutdown ---------------------------------------------------------------

    def flush_checkpoint(self, timeout: float | None = None) -> bool:
        """Wait until the checkpoint covers every committed entry."""
        return True if self._checkpointer is None else self._checkpointer.flush(timeout)

    def close(self) -> None:
        """Drain pending appends, write the final checkpoint, close the file."""
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._cond.notify_all()
        self._writer.join()
        # The writer has committed its last entry: the sync thread's last fsync covers it.
        with self._sync_cond:
            self._sync_stop = True
            self._sync_cond.notify()
        self._syncer.join()
        self._wal.close()
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._conn.close()
        self._closed = True
