"""The tamper-evident audit log: HMAC hash chain, keychain checkpoint, group commit.

Every entry carries ``mac = HMAC-SHA256(key, prev_mac ‖ canonical_json(entry))``
with ``prev_mac`` of the first entry = 32 zero bytes, so editing, deleting or
reordering any entry breaks the chain at that entry. Deleting the *tail* keeps
the chain intact, so after each committed batch the head (seq, mac) is also
written to the secret store (the keychain), outside the database's reach.

The log lives in its own SQLite file (WAL, ``synchronous=FULL``): an entry is
acknowledged only after the transaction holding it is committed and synced.
One writer thread drains a queue of pending entries, assigns seqs and MACs in
order, writes the whole batch in one transaction (one fsync) and then wakes
every waiter of that batch — many concurrent writers share each fsync. If the
batch cannot be made durable every waiter gets :class:`~pacd.errors.AuditError`
so the action it was logging fails closed.

Under load the writer, not the disk, is the limit, so the per-entry work is
kept small: callers pre-encode their entry, the writer splices in only seq and
time, and each event loop is woken once per batch with all of its results
(its waiters' timeouts share one timer instead of one timer each).

An appender that stops waiting (its timeout passed, or it was cancelled) has
failed, so its action does not happen. Its entry is then withdrawn if the
writer has not taken it yet; if it was already being written it is durable
anyway, and the writer follows it with an ``audit.abandoned`` entry naming its
seq, so the log never shows an "allow" for an action that was not done without
also saying so.

If at open the checkpoint is ahead of the database (entries were removed),
disagrees with it, or is missing while the log has entries, the log is
*untrusted* (:class:`Untrusted`): it keeps recording, but the checkpoint is not
moved forward (that would erase the evidence) until the owner re-anchors it
with a carbonProof approval whose own entry is the first the new checkpoint
covers (:meth:`AuditLog.reanchor`). Repeated failed checkpoint writes make the
log's :class:`AuditHealth` refuse in the same way until a write succeeds. The
daemon refuses every action above *basic* while the health refuses.

The checkpoint normally trails the database by up to 0.25 s (see
:class:`_Checkpointer`); an entry appended with ``checkpoint=True`` is not
acknowledged until the checkpoint covers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from pacd.core.canonical import canonical_json
from pacd.errors import AuditError, InvalidRequest, KeychainError, UncoveredEntry
from pacd.vault.keychain import SecretStore

log = logging.getLogger(__name__)

DECISIONS = ("allow", "deny", "info")
_GENESIS = bytes(32)
_SHA256_BLOCK = 64
_DEFAULT_MAX_BATCH = 1024
_COLUMNS = "seq, time, actor, action, target, decision, reason, details, mac"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    details TEXT NOT NULL,
    mac BLOB NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    time: float
    actor: str
    action: str
    target: str
    decision: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    mac: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "decision": self.decision,
            "reason": self.reason,
            "details": self.details,
            "mac": self.mac.hex(),
        }


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    first_bad_seq: int | None
    #: human explanation of the first problem ("" when ok)
    problem: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "first_bad_seq": self.first_bad_seq}


#: consecutive failed checkpoint writes after which the log stops vouching for itself
CHECKPOINT_FAILURE_LIMIT = 3


@dataclass(frozen=True)
class Untrusted:
    """What was found at open that the checkpoint cannot account for."""

    #: the first entry the checkpoint no longer vouches for
    first_bad_seq: int
    #: a plain description of what was found
    found: str
    #: the log's head and the checkpoint when it was found
    head_seq: int
    checkpoint_seq: int | None

    def to_json(self) -> dict[str, Any]:
        return {"first_bad_seq": self.first_bad_seq, "found": self.found,
                "head_seq": self.head_seq, "checkpoint_seq": self.checkpoint_seq}


@dataclass(frozen=True)
class AuditHealth:
    """How far the log can vouch for itself right now (``status`` shows this)."""

    head_seq: int
    #: the newest seq known to be in the keychain checkpoint (None: none known)
    checkpoint_seq: int | None
    #: seconds since this process last wrote the checkpoint (None: not yet)
    checkpoint_age_s: float | None
    untrusted: Untrusted | None
    checkpoint_error: str | None
    checkpoint_failures: int

    @property
    def refusing(self) -> bool:
        """Actions above basic must be refused: truncation would go unnoticed."""
        return (self.untrusted is not None
                or self.checkpoint_failures >= CHECKPOINT_FAILURE_LIMIT)

    def reason(self) -> str:
        if self.untrusted is not None:
            return (f"the audit log is untrusted from entry {self.untrusted.first_bad_seq}: "
                    f"{self.untrusted.found}")
        return (f"the audit checkpoint could not be written {self.checkpoint_failures} times "
                f"in a row ({self.checkpoint_error})")


def _canonical(  # noqa: PLR0917 - one parameter per MACed column
    seq: int, when: float, actor: str, action: str, target: str, decision: str, reason: str,
    details: Any,
) -> bytes:
    return canonical_json({
        "seq": seq, "time": when, "actor": actor, "action": action, "target": target,
        "decision": decision, "reason": reason, "details": details,
    })


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
    ``_canonical(...)`` (keys in sorted order; ``details_text`` is canonical
    JSON already). Building the parts in the appending thread keeps the single
    writer's per-entry work small.
    """
    enc = _encode_str
    prefix = (
        '{"action":' + enc(action) + ',"actor":' + enc(actor) + ',"decision":' + enc(decision)
        + ',"details":' + details_text + ',"reason":' + enc(reason) + ',"seq":'
    )
    return prefix, ',"target":' + enc(target) + ',"time":'


#: an entry's details (canonical JSON) take at most this many bytes, and its reason
#: at most MAX_REASON_CHARS characters: what an entry records must not grow with
#: what a request sent. Longer ones are cut and name the SHA-256 of the full text.
MAX_DETAILS_BYTES = 4096
MAX_REASON_CHARS = 1024


def _capped_details(text: str) -> tuple[dict[str, Any], str]:
    """Details too long to keep: a summary (size, SHA-256, the start) within the cap."""
    data = text.encode("utf-8")
    summary: dict[str, Any] = {"truncated": True, "bytes": len(data),
                               "sha256": hashlib.sha256(data).hexdigest(), "head": ""}
    head = text[:MAX_DETAILS_BYTES]
    while True:
        summary["head"] = head
        out = canonical_json(summary)
        if len(out) <= MAX_DETAILS_BYTES:
            return summary, out.decode("utf-8")
        # Escapes and multi-byte characters make the text longer than its slice.
        head = head[: max(0, len(head) - (len(out) - MAX_DETAILS_BYTES))]


def _capped_reason(reason: str) -> str:
    full = reason.encode("utf-8", "surrogatepass")
    note = f" … (cut from {len(reason)} characters; sha256 {hashlib.sha256(full).hexdigest()})"
    return reason[: MAX_REASON_CHARS - len(note)] + note


def _splice(prefix: str, seq: int, middle: str, when: float) -> bytes:
    return (prefix + str(seq) + middle + _json_float(when) + "}").encode("utf-8")


def _chain(key: bytes, prev_mac: bytes, canonical: bytes) -> bytes:
    return hmac.digest(key, prev_mac + canonical, "sha256")


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


class _ChainKey:
    """HMAC-SHA256 (RFC 2104) under one key, with the key's two padded blocks hashed once.

    ``link(prev, canonical)`` equals ``_chain(key, prev, canonical)``. Keying
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
    return f"INSERT INTO audit_log ({_COLUMNS}) VALUES " + ", ".join([_ROW_PARAMS] * rows)  # noqa: S608


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


def checkpoint_name(path: Path) -> str:
    """The secret-store name holding the checkpoint of the log at ``path``."""
    digest = hashlib.sha256(os.path.realpath(path).encode("utf-8")).hexdigest()[:16]
    return f"audit-checkpoint-{digest}"


class _Pending:
    """One submitted entry, from its submitter to the writer and back."""

    __slots__ = ("action", "actor", "decision", "details", "details_text", "done", "entry",
                 "error", "future", "middle", "owner", "prefix", "reason", "row", "target",
                 "ticket", "waker")

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
        give_up: Callable[[_Pending, bool], bool],
    ) -> None:
        self.loop = loop
        self._registry = registry
        self._timeout_s = timeout_s
        self._give_up = give_up
        self._timer: asyncio.TimerHandle | None = None
        #: (deadline on the loop's clock, entry), oldest first
        self._waiting: deque[tuple[float, _Pending]] = deque()

    def watch(self, pending: _Pending) -> None:
        """Start the timeout of a waiter whose entry is queued."""
        deadline = self.loop.time() + self._timeout_s
        self._waiting.append((deadline, pending))
        if self._timer is None:
            self._timer = self.loop.call_at(deadline, self._expire)
            self._registry[self.loop] = self

    def resolve(self, items: list[_Pending]) -> None:
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


def _settled(pending: _Pending) -> bool:
    return pending.future is None or pending.future.done()


class _Checkpointer:
    """Writes the newest (seq, mac) to the secret store, at most one write in flight.

    Newer heads replace older pending ones, so a burst of batches costs one or
    two keychain writes, not one per batch. Writes are also spaced at least
    ``min_interval_s`` apart: a keychain write is a D-Bus round trip with a key
    exchange, and under a steady load of audited reads back-to-back writes would
    take a core. The cost is that the last ``min_interval_s`` of entries may be
    missing from the checkpoint after a crash; ``flush``, ``cover`` and ``close``
    skip the wait (``cover`` is how the decisions that matter most close that
    window before they are answered).

    A failed write is not retried on its own: the next committed batch schedules
    the newest head again. ``failures`` counts consecutive failures; the log
    turns them into its health (see :class:`AuditHealth`).
    """

    def __init__(self, secrets: SecretStore, name: str, min_interval_s: float = 0.25,
                 on_result: Callable[[], None] | None = None) -> None:
        self._secrets = secrets
        self._name = name
        self._min_interval_s = min_interval_s
        self._on_result = on_result
        self._last_write = float("-inf")
        self._urgent = False
        self._cond = threading.Condition()
        self._pending: tuple[int, bytes] | None = None
        self._busy = False
        self._stop = False
        self.last_error: Exception | None = None
        #: consecutive failed writes (0 after any success)
        self.failures = 0
        #: seq of the newest head known to be in the secret store, and when (monotonic)
        self.written_seq: int | None = None
        self.written_at: float | None = None
        self._thread = threading.Thread(target=self._run, name="pacd-audit-ckpt", daemon=True)
        self._thread.start()

    def schedule(self, seq: int, mac: bytes) -> None:
        with self._cond:
            self._pending = (seq, mac)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._pending is None:
                    return
                # Space writes out unless someone waits for this one (flush/close).
                while not (self._stop or self._urgent):
                    wait = self._last_write + self._min_interval_s - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                seq, mac = self._pending
                self._pending = None
                self._busy = True
            error: Exception | None = None
            try:
                self._secrets.set(self._name, canonical_json({"seq": seq, "mac": mac.hex()}))
            except Exception as exc:
                # The entries are durable in the database; only truncation evidence
                # lags. The log's health reports it, and refuses after a few in a row.
                error = exc
                log.warning("audit checkpoint not written (seq %d): %s", seq, exc)
            finally:
                with self._cond:
                    self._last_write = time.monotonic()
                    if error is None:
                        self.failures = 0
                        self.last_error = None
                        if self.written_seq is None or seq > self.written_seq:
                            self.written_seq = seq
                        self.written_at = self._last_write
                    else:
                        self.failures += 1
                        self.last_error = error
                    self._busy = False
                    if self._pending is None:
                        self._urgent = False
                    self._cond.notify_all()
            if self._on_result is not None:
                try:
                    self._on_result()
                except Exception:
                    log.exception("audit checkpoint listener failed")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the newest scheduled head is written (or failed)."""
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            done = self._cond.wait_for(
                lambda: self._pending is None and not self._busy, timeout=timeout
            )
            if done:
                self._urgent = False
            return done

    def snapshot(self) -> tuple[int | None, float | None, Exception | None, int]:
        """(written_seq, written_at, last_error, failures), read together."""
        with self._cond:
            return self.written_seq, self.written_at, self.last_error, self.failures

    def cover(self, seq: int, timeout: float) -> None:
        """Write now (no spacing) and return once the stored checkpoint is at ``seq`` or later.

        Raises AuditError if the write covering ``seq`` failed or did not finish
        in ``timeout`` seconds: the entry is durable, but a removal of it would
        not be detected, so the decision it records must not be answered as done.
        """
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            self._cond.wait_for(
                lambda: (self.written_seq is not None and self.written_seq >= seq)
                or (self._pending is None and not self._busy), timeout=timeout)
            if self.written_seq is not None and self.written_seq >= seq:
                return
            why = self.last_error if self.last_error is not None else "it timed out"
        raise AuditError(f"audit entry {seq} is recorded, but the keychain checkpoint "
                         f"covering it could not be written ({why})")

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()


def read_checkpoint(secrets: SecretStore, name: str) -> tuple[int, bytes] | None:
    raw = secrets.get(name)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        return int(doc["seq"]), bytes.fromhex(doc["mac"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"the audit checkpoint {name!r} in the keychain is unreadable") from exc


def _plain_columns(  # noqa: PLR0917 - one parameter per entry column
    actor: object, action: object, target: object, decision: object, reason: object,
    details_problem: str,
) -> tuple[str, str, str, str, str]:
    """The text columns as plain str, or InvalidRequest naming every problem.

    A str subclass (a StrEnum member, say) is stored and MACed as its string
    value, exactly as SQLite and the JSON encoder see it.
    """
    problems = [
        f"{name} must be a string"
        for name, value in (("actor", actor), ("action", action), ("target", target),
                            ("reason", reason))
        if not isinstance(value, str)
    ]
    if not isinstance(decision, str) or decision not in DECISIONS:
        problems.append(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    if details_problem:
        problems.append(details_problem)
    if problems:
        raise InvalidRequest("invalid audit entry: " + "; ".join(problems), errors=problems)
    assert isinstance(actor, str) and isinstance(action, str) and isinstance(target, str)
    assert isinstance(decision, str) and isinstance(reason, str)
    plain = str.__str__
    return plain(actor), plain(action), plain(target), plain(decision), plain(reason)


class AuditLog:
    """An append-only, HMAC-chained log in its own SQLite file.

    ``checkpoints`` may be None only where truncation detection is not wanted
    (tests, benchmarks); the daemon always passes its secret store.
    ``max_batch`` bounds entries per transaction (1 = one fsync per entry).
    """

    def __init__(
        self,
        path: Path,
        key: bytes,
        checkpoints: SecretStore | None,
        clock: Callable[[], float] = time.time,
        *,
        max_batch: int = _DEFAULT_MAX_BATCH,
        append_timeout_s: float = 30.0,
    ) -> None:
        if len(key) < 32:
            raise ValueError("the audit key must be at least 256 bits")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.path = Path(path)
        self._key = bytes(key)
        self._chain_key = _ChainKey(self._key)
        self._clock = clock
        self._max_batch = max_batch
        self._append_timeout_s = append_timeout_s
        self._listeners: list[Callable[[AuditEntry], None]] = []
        #: guards the queue; plain Lock so submitting does not go through
        #: Condition's Python-level wrappers, notified only when the writer sleeps
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._writer_sleeping = False
        self._queue: deque[_Pending] = deque()
        #: tickets below _taken have left the queue for the writer; below
        #: _finished their batch is over (committed or failed)
        self._next_ticket = 0
        self._taken = 0
        self._finished = 0
        #: entries whose appenders gave up while the writer had them
        self._gave_up: list[_Pending] = []
        #: the append_async waiters of each event loop that has some
        self._loop_waiters: dict[asyncio.AbstractEventLoop, _LoopWaiters] = {}
        self._closing = False
        self._closed = False
        self._untrusted: Untrusted | None = None
        self._checkpoint_seq: int | None = None
        self._health_listeners: list[Callable[[AuditHealth], None]] = []
        self._resync = False
        self.checkpoint_name = checkpoint_name(self.path)
        self._secrets = checkpoints
        try:
            self._conn = self._connect()
            self._conn.execute(_SCHEMA)
            row = self._conn.execute(
                "SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        except sqlite3.Error as exc:
            raise AuditError(f"cannot open the audit log {self.path}: {exc}") from exc
        self._head: tuple[int, bytes] = (0, _GENESIS) if row is None else (
            int(row[0]), bytes(row[1])
        )
        if checkpoints is not None:
            self._untrusted = self._check_against_checkpoint(checkpoints)
            self._checkpointer: _Checkpointer | None = _Checkpointer(
                checkpoints, self.checkpoint_name, on_result=self._health_changed
            )
            if self._untrusted is None and self._head[0] > 0:
                # A crash between a commit and its checkpoint write leaves the
                # checkpoint behind; bring it up to the (consistent) head now.
                self._checkpointer.schedule(*self._head)
        else:
            self._checkpointer = None
        self._writer = threading.Thread(target=self._run, name="pacd-audit-writer", daemon=True)
        self._writer.start()

    # --- storage ------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            # Create it owner-only; SQLite gives the -wal/-shm files the same mode.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        conn = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0
        )
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise AuditError(f"the audit log {self.path} cannot use WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def _check_against_checkpoint(self, secrets: SecretStore) -> Untrusted | None:
        try:
            checkpoint = read_checkpoint(secrets, self.checkpoint_name)
        except KeychainError as exc:
            raise AuditError(f"cannot read the audit checkpoint: {exc.message}") from exc
        head_seq = self._head[0]
        if checkpoint is None:
            if head_seq == 0:
                return None  # a new log
            return Untrusted(1, f"the log holds {head_seq} entries but the keychain holds no "
                             "checkpoint for it: the checkpoint was deleted, so a removal "
                             "of entries cannot be ruled out", head_seq, None)
        seq, mac = checkpoint
        self._checkpoint_seq = seq
        if seq > head_seq:
            return Untrusted(head_seq + 1, f"the log ends at entry {head_seq} but its keychain "
                             f"checkpoint records entry {seq}: entries {head_seq + 1}..{seq} "
                             "were removed", head_seq, seq)
        row = self._conn.execute("SELECT mac FROM audit_log WHERE seq = ?", (seq,)).fetchone()
        if row is None or not hmac.compare_digest(bytes(row[0]), mac):
            return Untrusted(seq, f"entry {seq} differs from the keychain checkpoint: the log "
                             "was rewritten", head_seq, seq)
        return None

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
        cp.schedule(*self._head)  # the head is at least ``seq``: its writer set it first
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
        """Call ``callback(entry)`` after each entry is committed (on the writer thread).

        Callbacks must be quick and must not append; asyncio users hand over with
        ``loop.call_soon_threadsafe``. A failing callback is logged and ignored.
        """
        self._listeners.append(callback)

    def _prepare(  # noqa: PLR0917 - mirrors append
        self, actor: str, action: str, target: str, decision: str, reason: str,
        details: dict[str, Any] | None,
    ) -> _Pending:
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
            details, details_text = _capped_details(details_text)
        if type(reason) is str and len(reason) > MAX_REASON_CHARS:
            reason = _capped_reason(reason)
        if details_problem or not (
            type(actor) is str and type(action) is str and type(target) is str
            and type(reason) is str and type(decision) is str and decision in DECISIONS
        ):
            actor, action, target, decision, reason = _plain_columns(
                actor, action, target, decision, reason, details_problem)
        prefix, middle = _entry_parts(actor, action, target, decision, reason, details_text)
        return _Pending(actor, action, target, decision, reason, details, details_text,
                        prefix, middle)

    def _enqueue(self, pending: _Pending) -> None:
        with self._lock:
            if self._closing:
                raise AuditError("the audit log is closed")
            pending.ticket = self._next_ticket
            self._next_ticket += 1
            self._queue.append(pending)
            if self._writer_sleeping:
                self._cond.notify()

    def _give_up(self, pending: _Pending, note_if_finished: bool) -> bool:
        """The appender of ``pending`` stops waiting: True if its entry had not finished.

        Decided under the queue lock, against the writer's own bookkeeping: an
        entry still queued is withdrawn and never written; one the writer has
        taken may be committed regardless, so it is noted and, once its batch is
        over, followed by an ``audit.abandoned`` entry if it was made durable.
        False means the writer finished the entry first: a timed-out appender
        then takes that outcome instead; a cancelled one (``note_if_finished``)
        has it noted all the same, since its caller goes no further.
        """
        with self._lock:
            ticket = pending.ticket
            if ticket >= self._taken:
                self._queue.remove(pending)
                return True
            if ticket >= self._finished:
                self._gave_up.append(pending)
                return True
            if note_if_finished and pending.error is None:
                self._gave_up.append(pending)
                if self._writer_sleeping:
                    self._cond.notify()
            return False

    def _abandoned_note(self, seqs: list[int]) -> _Pending:
        """The entry naming durable entries whose appenders had already failed."""
        return self._prepare(
            "pacd", "audit.abandoned", "audit", "info",
            "the appenders of these entries stopped waiting before they were confirmed, "
            "so the actions they record failed", {"seqs": sorted(seqs)})

    def _timeout_error(self) -> AuditError:
        return AuditError(
            f"the audit log did not confirm the entry within {self._append_timeout_s:g} s"
        )

    def append(  # noqa: PLR0917 - one parameter per entry column
        self, actor: str, action: str, target: str, decision: str, reason: str,
        details: dict[str, Any] | None = None, *, checkpoint: bool = False,
    ) -> AuditEntry:
        """Record one entry; returns once it is durable, else raises AuditError.

        ``checkpoint``: also wait until the keychain checkpoint covers the entry
        (AuditError if that write fails), so removing it is detected even after
        a crash right after the answer. While the log is untrusted there is no
        checkpoint to move (that needs the owner's re-anchor), so it is not waited for.
        """
        entry = self._append(actor, action, target, decision, reason, details)
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
        details: dict[str, Any] | None,
    ) -> AuditEntry:
        pending = self._prepare(actor, action, target, decision, reason, details)
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
    ) -> AuditEntry:
        """Like :meth:`append` without blocking the event loop."""
        entry = await self._append_async(actor, action, target, decision, reason, details)
        if checkpoint and self._checkpointer is not None and self._untrusted is None:
            await asyncio.to_thread(self._cover, entry.seq)
        return entry

    async def _append_async(  # noqa: PLR0917 - mirrors append
        self, actor: str, action: str, target: str, decision: str, reason: str,
        details: dict[str, Any] | None,
    ) -> AuditEntry:
        loop = asyncio.get_running_loop()
        pending = self._prepare(actor, action, target, decision, reason, details)
        owner = self._loop_waiters.get(loop)
        if owner is None:
            owner = _LoopWaiters(loop, self._loop_waiters, self._append_timeout_s,
                                 self._give_up)
        pending.owner = owner
        future: asyncio.Future[AuditEntry] = loop.create_future()
        pending.future = future
        self._enqueue(pending)
        # Resolution is scheduled onto this loop, so it cannot run before this line.
        owner.watch(pending)
        try:
            return await future
        except asyncio.CancelledError:
            self._give_up(pending, True)
            raise

    def _finish(self, batch: list[_Pending]) -> None:
        """Wake every waiter of a batch: one hand-off per event loop, one release per thread.

        Called exactly once per entry (``done`` guards :meth:`_fail`), so no
        waker is released twice.
        """
        by_owner: dict[_LoopWaiters, list[_Pending]] = {}
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

    def _fail(self, batch: list[_Pending], error: AuditError) -> None:
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
            # Yield the GIL once per batch: the appenders the last batch just woke
            # get to resubmit now, so their entries join the next batch instead of
            # the one after. Larger batches, fewer fsyncs, and no timed wait that
            # would delay a lone appender.
            time.sleep(0)
            with self._lock:
                # The previous batch is over: from here on an appender that gives
                # up finds its entry finished (see _give_up).
                self._finished = self._taken
                while True:
                    if self._gave_up:
                        # Their batches are over, so ``error`` says whether each is durable.
                        fresh = [p.row[0] for p in self._gave_up if p.error is None and p.row]
                        self._gave_up = []
                        if fresh:
                            abandoned += fresh
                            note_due = True
                    if self._queue or self._closing or note_due:
                        break
                    self._writer_sleeping = True
                    try:
                        self._cond.wait()
                    finally:
                        self._writer_sleeping = False
                if not self._queue and not abandoned:
                    return
                if len(self._queue) <= self._max_batch:
                    batch = list(self._queue)
                    self._queue.clear()
                else:
                    batch = [self._queue.popleft() for _ in range(self._max_batch)]
                if batch:
                    self._taken = batch[-1].ticket + 1
            if abandoned:
                batch.insert(0, self._abandoned_note(abandoned))
            committed = False
            try:
                committed = self._commit(batch)
            except BaseException as exc:  # never leave a waiter hanging
                self._fail(batch, AuditError(
                    f"the audit writer failed: {type(exc).__name__}: {exc}"))
                log.exception("audit writer failure")
            note_due = False
            if abandoned and (committed or (self._closing and not self._queue)):
                if not committed:
                    log.error("audit: could not record that the appenders of entries %s "
                              "gave up", abandoned)
                abandoned = []

    def _commit(self, batch: list[_Pending]) -> bool:
        """Write one batch and wake its waiters; True if it was committed."""
        if self._resync:
            try:
                self._resync_head()
            except sqlite3.Error as exc:
                self._fail(batch, AuditError(
                    f"the audit log could not record the entry durably: {exc}"))
                return False
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
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            _insert_rows(self._conn, rows)
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._recover_after_failure()
            self._fail(batch, AuditError(
                f"the audit log could not record the entry durably: {exc}"))
            return False
        self._head = (seq, mac)
        if self._checkpointer is not None and self._untrusted is None:
            # Before the waiters wake: one that needs the checkpoint (``cover``)
            # then finds the write covering its entry already scheduled.
            self._checkpointer.schedule(seq, mac)
        listeners = list(self._listeners)
        if listeners:
            # Built before the waiters wake, so waiter and listeners share one object.
            entries = [p.committed() for p in batch]
        self._finish(batch)
        if listeners:
            for entry in entries:
                for listener in listeners:
                    try:
                        listener(entry)
                    except Exception:
                        log.exception("audit listener failed")
        return True

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
        self._conn = self._connect()
        row = self._conn.execute(
            "SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        self._head = (0, _GENESIS) if row is None else (int(row[0]), bytes(row[1]))
        self._resync = False

    # --- reading ----------------------------------------------------------------

    @property
    def writing(self) -> int:
        """How many appends the writer has taken and not yet finished (a snapshot, for
        observing a writer stuck behind the database's lock)."""
        with self._lock:
            return self._taken - self._finished

    def head(self) -> tuple[int, bytes]:
        """(seq, mac) of the newest committed entry; (0, 32 zero bytes) when empty."""
        return self._head

    def _reader(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA query_only=ON")
        return conn

    def entries(self, after: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Up to ``limit`` entries with seq > ``after``, oldest first."""
        if limit < 1 or limit > 10_000:
            raise InvalidRequest("limit must be between 1 and 10000")
        conn = self._reader()
        try:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
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
        """Check the whole chain and the checkpoint; names the first bad seq."""
        # Checkpoint first: it is written after commit, so the snapshot read next
        # contains at least the entries it covers.
        checkpoint = None
        if self._secrets is not None:
            try:
                checkpoint = read_checkpoint(self._secrets, self.checkpoint_name)
            except KeychainError as exc:
                raise AuditError(f"cannot read the audit checkpoint: {exc.message}") from exc
        conn = self._reader()
        try:
            conn.execute("BEGIN")
            cursor = conn.execute(f"SELECT {_COLUMNS} FROM audit_log ORDER BY seq")  # noqa: S608
            count = 0
            expected = 1
            prev = _GENESIS
            first_bad: int | None = None
            problem = ""
            checkpoint_mac: bytes | None = None
            while True:
                rows = cursor.fetchmany(4096)
                if not rows:
                    break
                for row in rows:
                    count += 1
                    if first_bad is not None:
                        continue
                    seq = row[0]
                    if seq != expected:
                        first_bad = expected
                        problem = (f"entry {expected} is missing" if isinstance(seq, int)
                                   and seq > expected else f"entry {expected} is out of order")
                        continue
                    why = self._check_row(row, prev)
                    if why:
                        first_bad, problem = expected, f"entry {expected} {why}"
                        continue
                    prev = bytes(row[8])
                    if checkpoint is not None and seq == checkpoint[0]:
                        checkpoint_mac = prev
                    expected += 1
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit log: {exc}") from exc
        finally:
            conn.close()
        if first_bad is None and checkpoint is None and self._secrets is not None and count:
            first_bad = 1
            problem = (f"the log holds {count} entries but the keychain holds no checkpoint "
                       "for it: a removal of entries cannot be ruled out")
        if first_bad is None and checkpoint is not None and checkpoint[0] > 0:
            last = expected - 1
            if checkpoint[0] > last:
                first_bad = last + 1
                problem = (f"entries {last + 1}..{checkpoint[0]} were removed from the end "
                           "(the keychain checkpoint records them)")
            elif checkpoint_mac is None or not hmac.compare_digest(checkpoint_mac, checkpoint[1]):
                first_bad = checkpoint[0]
                problem = f"entry {checkpoint[0]} differs from the keychain checkpoint"
        return VerifyResult(first_bad is None, count, first_bad, problem)

    def _check_row(self, row: tuple[Any, ...], prev: bytes) -> str:
        seq, when, actor, action, target, decision, reason, details, mac = row
        if not isinstance(when, float) or not all(
            isinstance(v, str) for v in (actor, action, target, decision, reason, details)
        ) or not isinstance(mac, bytes):
            return "has a column of the wrong type"
        if details != "{}":
            try:
                parsed = json.loads(details)
            except ValueError:
                return "has unparseable details"
            if not isinstance(parsed, dict) or canonical_json(parsed).decode("utf-8") != details:
                return "has altered details"
        prefix, middle = _entry_parts(actor, action, target, decision, reason, details)
        if not hmac.compare_digest(_chain(self._key, prev, _splice(prefix, seq, middle, when)),
                                   mac):
            return "fails its MAC (edited, reordered, or chained to a removed entry)"
        return ""

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
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._conn.close()
        self._closed = True
