"""The durable queue of actions waiting for the owner's presence.

An approval is a canonical payload (kind, the full action body, requester,
creation and expiry time, a random nonce, the level it needs). Its challenge
is the SHA-256 of that payload, so an assertion over it approves exactly this
action and nothing else (what you see is what you sign).

Approving is one SQLite transaction: the assertion is verified (the relying
party records the used challenge and the new sign counter in the same
transaction), the state moves from ``pending`` to ``approved`` only if it was
still ``pending``, the kind's executor applies the action, and the audit entry
(holding the assertion) is made durable — then, and only then, the
transaction commits. Any failure rolls all of it back, so an action is never
half-applied and never applied without its audit entry; approving twice finds
the state no longer ``pending`` and is a ``conflict`` that executes nothing.
The audit log is a separate file, so the one thing this order cannot prevent
is a COMMIT that fails after the approval's entry is durable: the approval is
then followed in the log by an ``approval.<kind>.rolled_back`` entry naming
the earlier seq, and stays pending.

The entry of every approve and deny is covered by the keychain checkpoint
before it is answered (``checkpoint=True``), so deleting it after a crash is
detected at the next start.

Deny, expiry and a daemon restart all end in "not done": pending approvals
survive a restart (they are rows in the state database) until they expire, and
nothing is ever executed except by :meth:`ApprovalQueue.approve`.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import secrets
import sqlite3
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pacd.core.actors import DAEMON_ACTOR
from pacd.core.canonical import canonical_json, digest
from pacd.core.models import SecurityLevel
from pacd.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PacdError,
    PayloadMismatch,
    TooMany,
    UncoveredEntry,
)
from pacd.integrity import RowSpec
from pacd.store import Store

_SCHEMA = """
CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending','approved','denied','expired','failed')),
    required_level TEXT NOT NULL,
    summary TEXT NOT NULL,
    requester TEXT NOT NULL,
    payload TEXT NOT NULL,
    challenge BLOB NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    resolved_at REAL,
    reason TEXT,
    result TEXT
);
CREATE INDEX approvals_pending ON approvals (state, expires_at)
"""
# Every column is MACed: a state, a payload or a result edited in the database
# makes the approval absent (reported), never approved and never executable.
_ROW = RowSpec("approvals", ("id",),
               ("kind", "state", "required_level", "summary", "requester", "payload",
                "challenge", "created_at", "expires_at", "resolved_at", "reason", "result"))

log = logging.getLogger("pacd.approvals")

#: resolved approvals older than this are no longer listed (they stay in the audit log)
RECENT_S = 7 * 86400


class AuditSink(Protocol):
    def append(  # noqa: PLR0917 - the audit log's own signature
        self, actor: str, action: str, target: str, decision: str, reason: str,
               details: dict[str, Any] | None = None, *, checkpoint: bool = False) -> Any: ...


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Approval:
    id: str
    kind: str
    state: str
    required_level: SecurityLevel
    summary: str
    requester: str
    payload: dict[str, Any]
    challenge: bytes
    created_at: float
    expires_at: float
    resolved_at: float | None
    reason: str | None
    result: dict[str, Any] | None

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = self.payload["body"]
        return body

    @property
    def requester_pid(self) -> int | None:
        pid = (self.payload.get("requester_process") or {}).get("pid")
        return pid if isinstance(pid, int) else None

    @property
    def requester_exe(self) -> str | None:
        exe = (self.payload.get("requester_process") or {}).get("exe")
        return exe if isinstance(exe, str) else None


#: applies an approved action inside the approval's transaction; returns a result summary
Executor = Callable[[sqlite3.Connection, Approval], dict[str, Any]]
#: checks the owner's proof over (challenge, level); returns evidence for the audit entry
Verifier = Callable[[bytes, SecurityLevel], Mapping[str, Any]]
EventSink = Callable[..., None]
#: runs after the approval's audit entry is durable, still inside its transaction
AfterEntry = Callable[[Any], None]
#: raises to refuse approving an approval at all (checked before its proof)
Gate = Callable[[Approval], None]


@dataclass(frozen=True)
class _Kind:
    executor: Executor
    level: SecurityLevel
    after_entry: AfterEntry | None = None


class ApprovalQueue:
    def __init__(self, store: Store, audit: AuditSink, now: Callable[[], float],  # noqa: PLR0917 - limits are optional
                 on_event: EventSink | None = None, max_pending: int | None = None,
                 max_pending_per_kind: int | None = None) -> None:
        self.store = store
        #: pending approvals are the owner's attention: at most this many wait at once
        self.max_pending = max_pending
        self.max_pending_per_kind = max_pending_per_kind
        self.audit = audit
        self._now = now
        self._on_event = on_event or (lambda *_a, **_k: None)
        self._kinds: dict[str, _Kind] = {}
        self._gate: Gate | None = None
        store.migrate("approvals", 1, _SCHEMA)
        store.migrate("approvals", 2, "ALTER TABLE approvals ADD COLUMN mac BLOB")
        self.pending_count = 0
        self._recount()

    def register(self, kind: str, level: SecurityLevel, executor: Executor, *,
                 after_entry: AfterEntry | None = None) -> None:
        """Make ``kind`` approvable; ``level`` is what its approval must prove.

        ``after_entry(entry)`` runs once the approval's own audit entry is
        durable, before the transaction commits (a failure rolls it back).
        """
        self._kinds[kind] = _Kind(executor, level, after_entry)

    def set_gate(self, gate: Gate) -> None:
        """``gate(approval)`` may refuse any approval before its proof is checked."""
        self._gate = gate

    def level_for(self, kind: str) -> SecurityLevel:
        return self._kinds[kind].level

    # --- queueing -----------------------------------------------------------

    def submit(self, kind: str, body: dict[str, Any], requester: str, summary: str,
               ttl_s: float, *, record: AuditSink | None = None,
               process: dict[str, Any] | None = None) -> Approval:
        """Queue an approval; its request entry goes through ``record`` (the request's
        decision, when a request asks) or else the queue's own log. ``process``
        (``{"pid", "exe"}``): the program that asked, as the kernel named it; it goes
        into the signed payload, so what the owner is shown about it is part of what
        the key signs."""
        audit = record or self.audit
        if kind not in self._kinds:
            raise NotFound(f"no approval kind {kind!r}")
        level = self._kinds[kind].level
        now = self._now()
        expires = now + ttl_s
        approval_id = uuid.uuid4().hex
        payload = {
            "id": approval_id,
            "kind": kind,
            "body": body,
            "requester": requester,
            "required_level": level.value,
            "created_at": iso(now),
            "expires_at": iso(expires),
            "nonce": secrets.token_hex(16),
        }
        if process is not None:
            payload["requester_process"] = {"pid": process.get("pid"),
                                            "exe": process.get("exe")}
        challenge = digest(payload)
        self.expire_due()  # an expired approval does not count against the limits
        row: dict[str, Any] = {
            "id": approval_id, "kind": kind, "state": "pending", "required_level": level.value,
            "summary": summary, "requester": requester,
            "payload": canonical_json(payload).decode(), "challenge": challenge,
            "created_at": now, "expires_at": expires, "resolved_at": None, "reason": None,
            "result": None}
        row["mac"] = self.store.integrity.seal_row(_ROW, row)
        with self.store.transaction() as conn:
            self._check_limits(conn, kind)
            conn.execute(
                "INSERT INTO approvals (id, kind, state, required_level, summary, requester,"
                " payload, challenge, created_at, expires_at, resolved_at, reason, result, mac)"
                " VALUES (:id, :kind, :state, :required_level, :summary, :requester, :payload,"
                " :challenge, :created_at, :expires_at, :resolved_at, :reason, :result, :mac)",
                row)
            # Durable before the request is acknowledged, or not queued at all.
            audit.append(requester, f"approval.{kind}.request", approval_id, "info",
                         summary, {"challenge": challenge.hex(),
                                        "required_level": level.value})
        approval = self.get(approval_id, expire=False)
        self._recount()
        self._on_event("approval.created", id=approval_id, kind=kind, summary=summary,
                       required_level=level.value, expires_at=iso(expires))
        return approval

    def _check_limits(self, conn: sqlite3.Connection, kind: str) -> None:
        total, same = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(kind = ?), 0) FROM approvals WHERE state = 'pending'",
            (kind,)).fetchone()
        if self.max_pending_per_kind is not None and same >= self.max_pending_per_kind:
            raise TooMany(f"{same} {kind} approvals are already waiting (at most "
                          f"{self.max_pending_per_kind}); approve or deny some first",
                          limit="max_pending_approvals_per_kind")
        if self.max_pending is not None and total >= self.max_pending:
            raise TooMany(f"{total} approvals are already waiting (at most "
                          f"{self.max_pending}); approve or deny some first",
                          limit="max_pending_approvals")

    def get(self, approval_id: str, expire: bool = True) -> Approval:
        if expire:
            self.expire_due()
        row = self.store.query_one("SELECT * FROM approvals WHERE id = ?", (approval_id,))
        if row is None or not self.store.integrity.row_ok(_ROW, row):
            raise NotFound(f"no approval {approval_id!r}")
        return _approval(row)

    def recent(self, limit: int = 200) -> list[Approval]:
        return self.page(limit)[0]

    def page(self, limit: int = 200, cursor: str = "") -> tuple[list[Approval], str | None]:
        """Pending and recent approvals, newest first, from ``cursor`` on; and the
        cursor of the next page (None on the last), so every one can be reached."""
        self.expire_due()
        after_time, after_id = math.inf, ""
        if cursor:
            try:
                text_time, after_id = cursor.split("_", 1)
                after_time = float(text_time)
            except ValueError:
                raise InvalidRequest(f"cursor {cursor[:40]!r} is not a next_cursor this "
                                     "daemon gave") from None
        rows = self.store.query(
            "SELECT * FROM approvals WHERE (state = 'pending' OR resolved_at >= ?)"
            " AND (created_at < ? OR (created_at = ? AND id < ?))"
            " ORDER BY created_at DESC, id DESC LIMIT ?",
            (self._now() - RECENT_S, after_time, after_time, after_id or "g" * 32, limit + 1),
        )
        page = rows[:limit]
        items = [_approval(r) for r in page if self.store.integrity.row_ok(_ROW, r)]
        if len(rows) <= limit:
            return items, None
        last = page[-1]  # a row that fails its MAC still marks where the page ends
        return items, f"{float(last['created_at'])!r}_{last['id']}"

    def _change(self, conn: sqlite3.Connection, approval_id: str, expect: str | None,
                **changes: Any) -> bool:
        """Apply ``changes`` to a row that checks (and is in state ``expect``), re-MACed.

        False if there is no such row, it fails its MAC (reported) or its state moved.
        """
        row = conn.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        if row is None or not self.store.integrity.row_ok(_ROW, row):
            return False
        if expect is not None and row["state"] != expect:
            return False
        changed = dict(row) | changes
        sets = ", ".join(f"{column} = :{column}" for column in changes)
        conn.execute(f"UPDATE approvals SET {sets}, mac = :mac WHERE id = :id",  # noqa: S608
                     changed | {"mac": self.store.integrity.seal_row(_ROW, changed)})
        return True

    # --- resolution ---------------------------------------------------------

    def approve(self, approval_id: str, verify: Verifier, actor: str = "owner",
                assertion: Mapping[str, Any] | None = None, *,
                record: AuditSink | None = None) -> Approval:
        """Verify, execute and record; the entries in ``actor``'s name go through
        ``record`` (the request's decision) or else the queue's own log."""
        audit = record or self.audit
        self.expire_due()
        stage = "check"
        approval: Approval | None = None
        audited: Any = None
        tx: sqlite3.Connection | None = None
        try:
            with self.store.transaction() as conn:
                tx = conn
                approval = self._pending(conn, approval_id)
                kind = self._kinds.get(approval.kind)
                if kind is None:
                    raise Conflict(f"approval kind {approval.kind!r} is not known to this daemon")
                # What you see is what you sign: the payload about to be executed must
                # still be the one whose digest is the challenge the owner signs.
                if digest(approval.payload) != approval.challenge:
                    raise PayloadMismatch(
                        f"approval {approval_id}: the stored payload does not match the "
                        "challenge that is signed; nothing was executed")
                if self._gate is not None:
                    self._gate(approval)
                stage = "verify"
                evidence = verify(approval.challenge, approval.required_level)
                stage = "execute"
                now = self._now()
                if not self._change(conn, approval_id, "pending", state="approved",
                                    resolved_at=now):
                    raise Conflict("approval is no longer pending")
                result = kind.executor(conn, approval)
                self._change(conn, approval_id, None, result=canonical_json(result).decode())
                stage = "audit"
                audited = audit.append(
                    actor, f"approval.{approval.kind}.approve", approval_id, "allow",
                    approval.summary, {
                        "challenge": approval.challenge.hex(),
                        "payload": approval.payload,
                        "evidence": dict(evidence),
                        "assertion": dict(assertion or {}),
                        "result": result,
                    }, checkpoint=True)
                if kind.after_entry is not None:
                    kind.after_entry(audited)
                stage = "commit"
        except Exception as exc:
            if stage == "commit" and approval is not None:
                self._record_rollback(tx, approval, audited, exc, actor, audit)
            elif stage == "audit" and approval is not None and isinstance(exc, UncoveredEntry):
                # The approve entry is durable but its checkpoint is not: the
                # transaction rolled back, so the log must say the action did not happen.
                self._record_rollback(tx, approval, exc.entry_seq, exc, actor, audit)
            elif isinstance(exc, PacdError):
                self._record_failure(approval_id, approval, stage, exc, actor, audit)
            raise
        done = self.get(approval_id, expire=False)
        self._recount()
        self._on_event("approval.resolved", id=approval_id, kind=done.kind, state=done.state)
        return done

    def _record_rollback(self, tx: sqlite3.Connection | None, approval: Approval,  # noqa: PLR0917 - one parameter per entry part
                         audited: Any, exc: Exception, actor: str, audit: AuditSink) -> None:
        """The state change did not commit after the approval's audit entry was made
        durable (a failed COMMIT, or a checkpoint that could not cover the entry).

        The audit log already says the approval was approved (or denied); the
        follow-up entry says it was not, so the log does not claim a decision
        the state database never saw. The approval stays pending.
        """
        # Store.transaction() has already rolled the failed COMMIT back.
        seq = audited if isinstance(audited, int) else getattr(audited, "seq", None)
        try:
            audit.append(
                actor, f"approval.{approval.kind}.rolled_back", approval.id, "deny",
                f"not committed ({type(exc).__name__}); what entry {seq} records did not "
                "happen and the approval is still pending",
                {"approve_seq": seq, "error": type(exc).__name__})
        except Exception:
            log.exception("approval %s: audit entry %s is not followed by its rollback",
                          approval.id, seq)

    def _record_failure(self, approval_id: str, approval: Approval | None, stage: str,  # noqa: PLR0917 - one parameter per entry part
                        exc: PacdError, actor: str, audit: AuditSink) -> None:
        if approval is not None:
            kind = approval.kind
        else:
            row = self.store.query_one("SELECT * FROM approvals WHERE id = ?", (approval_id,))
            # A row that fails its MAC names no kind we could trust (already reported).
            kind = (str(row["kind"]) if row is not None
                    and self.store.integrity.quietly_ok(_ROW, row) else "unknown")
        if stage == "execute" and approval is not None:
            # The action could not be applied (and was rolled back): the approval
            # is over, so it cannot be retried into a different outcome later.
            with self.store.transaction() as conn:
                self._change(conn, approval_id, "pending", state="failed",
                             resolved_at=self._now(), reason=exc.message[:500])
                audit.append(actor, f"approval.{kind}.approve", approval_id, "deny",
                             f"execution failed: {exc.message}", {"code": exc.code})
            self._recount()
            self._on_event("approval.resolved", id=approval_id, kind=kind, state="failed")
            return
        if stage != "audit":
            audit.append(actor, f"approval.{kind}.approve", approval_id, "deny",
                         exc.message, {"code": exc.code, "stage": stage})

    def deny(self, approval_id: str, reason: str | None, actor: str = "owner", *,
             record: AuditSink | None = None) -> Approval:
        """Deny a pending approval; its entry goes through ``record`` as in :meth:`approve`."""
        audit = record or self.audit
        self.expire_due()
        approval: Approval | None = None
        try:
            with self.store.transaction() as conn:
                approval = self._pending(conn, approval_id)
                self._change(conn, approval_id, "pending", state="denied",
                             resolved_at=self._now(), reason=reason or "denied by the owner")
                # The checkpoint covers the denial before it is answered: a crash right
                # after cannot take the entry with it unnoticed.
                audit.append(actor, f"approval.{approval.kind}.deny", approval_id, "deny",
                             reason or "denied by the owner", checkpoint=True)
        except UncoveredEntry as exc:
            # The denial's entry is durable, the state change rolled back: the
            # approval is still pending, and the log must say so after the entry.
            if approval is not None:
                self._record_rollback(None, approval, exc.entry_seq, exc, actor, audit)
            raise
        self._recount()
        self._on_event("approval.resolved", id=approval_id, kind=approval.kind, state="denied")
        return self.get(approval_id, expire=False)

    def expire_due(self) -> list[str]:
        """Expire every pending approval past its time; returns their ids."""
        now = self._now()
        due = self.store.query(
            "SELECT * FROM approvals WHERE state = 'pending' AND expires_at <= ?", (now,))
        # Rows that fail their MAC are left as they are (reported): never repaired.
        due = [row for row in due if self.store.integrity.row_ok(_ROW, row)]
        if not due:
            return []
        expired: list[tuple[str, str]] = []
        with self.store.transaction() as conn:
            for row in due:
                if self._change(conn, str(row["id"]), "pending", state="expired",
                                resolved_at=now, reason="expired"):
                    expired.append((str(row["id"]), str(row["kind"])))
            for approval_id, kind in expired:
                self.audit.append(DAEMON_ACTOR, f"approval.{kind}.expire", approval_id, "deny",
                                  "expired before the owner approved it")
        self._recount()
        for approval_id, kind in expired:
            self._on_event("approval.expired", id=approval_id, kind=kind)
        return [a for a, _ in expired]

    def cancel_for_container(self, container_id: str, actor: str) -> list[str]:
        """End every pending approval that would act on ``container_id`` (deleted).

        Each becomes ``expired`` with reason ``container deleted`` and one
        ``approval.<kind>.cancel`` entry, in the same transaction; nobody is
        offered to sign an approval whose container is gone.
        """
        now = self._now()
        with self.store.transaction() as conn:
            rows = conn.execute(
                "SELECT id, kind FROM approvals WHERE state = 'pending'"
                " AND json_extract(payload, '$.body.container_id') = ?",
                (container_id,)).fetchall()
            # A row that fails its MAC is left as it is (reported), never rewritten.
            rows = [row for row in rows
                    if self._change(conn, str(row["id"]), "pending", state="expired",
                                    resolved_at=now, reason="container deleted")]
            for row in rows:
                self.audit.append(actor, f"approval.{row['kind']}.cancel", str(row["id"]),
                                  "deny", "its container was deleted",
                                  {"container_id": container_id})
        self._recount()
        for row in rows:
            self._on_event("approval.resolved", id=str(row["id"]), kind=str(row["kind"]),
                           state="expired")
        return [str(row["id"]) for row in rows]

    def next_expiry(self) -> float | None:
        row = self.store.query_one(
            "SELECT MIN(expires_at) FROM approvals WHERE state = 'pending'")
        return None if row is None or row[0] is None else float(row[0])

    def _pending(self, conn: sqlite3.Connection, approval_id: str) -> Approval:
        row = conn.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        if row is None or not self.store.integrity.row_ok(_ROW, row):
            raise NotFound(f"no approval {approval_id!r}")
        approval = _approval(row)
        if approval.state != "pending":
            raise Conflict(f"approval {approval_id} is already {approval.state}",
                           state=approval.state)
        if approval.expires_at <= self._now():
            raise Conflict(f"approval {approval_id} has expired", state="expired")
        return approval

    def _recount(self) -> None:
        rows = self.store.query("SELECT * FROM approvals WHERE state = 'pending'")
        self.pending_count = sum(1 for r in rows if self.store.integrity.row_ok(_ROW, r))


def _approval(row: sqlite3.Row) -> Approval:
    return Approval(
        id=str(row["id"]), kind=str(row["kind"]), state=str(row["state"]),
        required_level=SecurityLevel(row["required_level"]), summary=str(row["summary"]),
        requester=str(row["requester"]), payload=json.loads(row["payload"]),
        challenge=bytes(row["challenge"]), created_at=float(row["created_at"]),
        expires_at=float(row["expires_at"]),
        resolved_at=None if row["resolved_at"] is None else float(row["resolved_at"]),
        reason=None if row["reason"] is None else str(row["reason"]),
        result=None if row["result"] is None else json.loads(row["result"]),
    )
