"""The keychain checkpoint: the log's newest (seq, mac), kept outside the database's reach.

The HMAC chain shows an edited, removed or reordered entry, but not a removed
*tail*. After each durable batch the head is also written to the secret store
(the keychain), so at open (:func:`check_against_checkpoint`) and in ``verify``
a log that ends before its checkpoint, or disagrees with it, is found out.

If at open the checkpoint is ahead of the database (entries were removed),
disagrees with it, or is missing while the log has entries, the log is
*untrusted* (:class:`Untrusted`): it keeps recording, but the checkpoint is not
moved forward (that would erase the evidence) until the owner re-anchors it.
Repeated failed checkpoint writes make the log's :class:`AuditHealth` refuse in
the same way until a write succeeds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacd.core.canonical import canonical_json
from pacd.errors import AuditError, KeychainError
from pacd.vault.keychain import SecretStore

log = logging.getLogger(__name__)

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


def checkpoint_name(path: Path) -> str:
    """The secret-store name holding the checkpoint of the log at ``path``."""
    digest = hashlib.sha256(os.path.realpath(path).encode("utf-8")).hexdigest()[:16]
    return f"audit-checkpoint-{digest}"


class Checkpointer:
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
            idle = self._pending is None
            self._pending = (seq, mac)
            # A newer head replacing a pending one changes nothing anyone waits for:
            # the thread is spacing its writes or busy writing, and comes back to it.
            # Waking it for every fsync would only make it queue for the GIL.
            if idle:
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


def check_against_checkpoint(
    conn: sqlite3.Connection, secrets: SecretStore, name: str, head_seq: int,
) -> tuple[Untrusted | None, int | None]:
    """What the stored checkpoint says of the log whose newest entry is ``head_seq``.

    Returns (what it cannot account for or None, the checkpoint's seq or None).
    """
    try:
        checkpoint = read_checkpoint(secrets, name)
    except KeychainError as exc:
        raise AuditError(f"cannot read the audit checkpoint: {exc.message}") from exc
    if checkpoint is None:
        if head_seq == 0:
            return None, None  # a new log
        return Untrusted(1, f"the log holds {head_seq} entries but the keychain holds no "
                         "checkpoint for it: the checkpoint was deleted, so a removal "
                         "of entries cannot be ruled out", head_seq, None), None
    seq, mac = checkpoint
    if seq > head_seq:
        return Untrusted(head_seq + 1, f"the log ends at entry {head_seq} but its keychain "
                         f"checkpoint records entry {seq}: entries {head_seq + 1}..{seq} "
                         "were removed", head_seq, seq), seq
    row = conn.execute("SELECT mac FROM audit_log WHERE seq = ?", (seq,)).fetchone()
    if row is None or not hmac.compare_digest(bytes(row[0]), mac):
        return Untrusted(seq, f"entry {seq} differs from the keychain checkpoint: the log "
                         "was rewritten", head_seq, seq), seq
    return None, seq
