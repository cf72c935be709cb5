"""The approval queue's guarantees, with the real relying party, store and audit log.

Presence is proven by the software CTAP2 authenticator through pacd's own
client ceremony; nothing of pacd is replaced.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from fido2.client import UserInteraction

from pacd.approvals import Approval, ApprovalQueue
from pacd.audit import AuditLog
from pacd.core.canonical import canonical_json, digest
from pacd.core.models import SecurityLevel
from pacd.errors import AuditError, Conflict, NotFound, PayloadMismatch, PresenceFailed, TooMany
from pacd.integrity import RowSealer
from pacd.presence.client import authenticate, register
from pacd.presence.clock import SystemClock
from pacd.presence.owner import OwnerRegistry
from pacd.presence.rp import RelyingParty
from pacd.store import Store
from tests.softauthn import SoftAuthenticator

ORIGIN = "https://pacd.localhost"


class Quiet(UserInteraction):
    def request_uv(self, permissions: Any, rd_id: Any) -> bool:
        return True


class World:
    def __init__(self, base: Path, now: list[float] | None = None) -> None:
        self.base = base
        self.store = Store(base / "state.sqlite3")
        # One key across restarts, as the daemon derives it from the vault each time.
        self.store.integrity = RowSealer(b"i" * 32)
        self.audit = AuditLog.open(base / "audit.sqlite3", b"k" * 32, None)
        self.owners = OwnerRegistry(self.store)
        self.rp = RelyingParty(self.store, self.owners, "pacd.localhost", ORIGIN, SystemClock())
        self.clock = now or [time.time()]
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.queue = ApprovalQueue(self.store, self.audit, lambda: self.clock[0],
                                   lambda t, **d: self.events.append((t, d)))
        self.fail_with: Exception | None = None
        self.store.migrate("t", 1, "CREATE TABLE done (approval TEXT PRIMARY KEY)")
        self.queue.register("thing.do", SecurityLevel.biometric, self.execute)

    def execute(self, conn: sqlite3.Connection, approval: Approval) -> dict[str, Any]:
        conn.execute("INSERT INTO done (approval) VALUES (?)", (approval.id,))
        if self.fail_with is not None:
            raise self.fail_with
        return {"ok": True}

    def done(self) -> list[str]:
        return [str(r[0]) for r in self.store.query("SELECT approval FROM done")]

    def close(self) -> None:
        self.audit.close()
        self.store.close()


@pytest.fixture
def world(tmp_path: Path) -> Any:
    w = World(tmp_path)
    w.owners.create_owner("Alice", time.time())
    w.device = SoftAuthenticator()  # type: ignore[attr-defined]
    begin = w.rp.begin_registration("soft")
    w.rp.complete_registration(begin["registration_id"], register(
        begin["publicKey"], ORIGIN, Quiet(), device=w.device))  # type: ignore[attr-defined]
    yield w
    w.close()


def _sign(world: World, approval: Approval) -> dict[str, Any]:
    options = world.rp.request_options_for_challenge(approval.challenge, True)
    return authenticate(options["publicKey"], ORIGIN, Quiet(),
                        device=world.device)  # type: ignore[attr-defined]


def _verifier(world: World, credential: dict[str, Any]) -> Any:
    def verify(challenge: bytes, level: SecurityLevel) -> dict[str, Any]:
        p = world.rp.verify_for_challenge(challenge, credential, require_uv=True)
        return {"credential_id": p.credential_id.hex()}
    return verify


def test_challenge_is_the_digest_of_the_payload(world: World) -> None:
    a = world.queue.submit("thing.do", {"x": 1}, "owner", "do a thing", 60)
    assert a.challenge == digest(a.payload)
    assert a.payload["kind"] == "thing.do" and a.payload["body"] == {"x": 1}
    assert a.payload["requester"] == "owner" and len(a.payload["nonce"]) == 32
    b = world.queue.submit("thing.do", {"x": 1}, "owner", "do a thing", 60)
    assert a.challenge != b.challenge  # the nonce makes every approval distinct
    assert world.queue.pending_count == 2
    assert [t for t, _ in world.events] == ["approval.created"] * 2


def test_approve_executes_once(world: World) -> None:
    a = world.queue.submit("thing.do", {}, "owner", "s", 60)
    credential = _sign(world, a)
    done = world.queue.approve(a.id, _verifier(world, credential), assertion=credential)
    assert done.state == "approved" and done.result == {"ok": True}
    assert world.done() == [a.id]
    with pytest.raises(Conflict):
        world.queue.approve(a.id, _verifier(world, credential))
    assert world.done() == [a.id]
    entries = [e for e in world.audit.entries() if e.action == "approval.thing.do.approve"]
    assert [e.decision for e in entries] == ["allow", "deny"]
    assert entries[0].details["assertion"] == credential


def test_failed_execution_is_rolled_back_and_final(world: World) -> None:
    a = world.queue.submit("thing.do", {}, "owner", "s", 60)
    world.fail_with = NotFound("the target went away")
    with pytest.raises(NotFound):
        world.queue.approve(a.id, _verifier(world, _sign(world, a)))
    assert world.done() == []  # the executor's write did not survive
    assert world.queue.get(a.id).state == "failed"
    assert world.queue.pending_count == 0


def test_audit_failure_means_not_done(world: World) -> None:
    a = world.queue.submit("thing.do", {}, "owner", "s", 60)
    credential = _sign(world, a)
    world.audit.close()
    with pytest.raises(AuditError):
        world.queue.approve(a.id, _verifier(world, credential))
    assert world.done() == []
    assert world.queue.get(a.id).state == "pending"


def test_wrong_assertion_changes_nothing(world: World) -> None:
    a = world.queue.submit("thing.do", {}, "owner", "s", 60)
    b = world.queue.submit("thing.do", {}, "owner", "s", 60)
    with pytest.raises(PresenceFailed):
        world.queue.approve(b.id, _verifier(world, _sign(world, a)))
    assert world.queue.get(b.id).state == "pending" and world.done() == []


def test_expiry_and_deny(world: World) -> None:
    a = world.queue.submit("thing.do", {}, "owner", "s", 5)
    b = world.queue.submit("thing.do", {}, "owner", "s", 60)
    world.clock[0] += 10
    assert world.queue.get(a.id).state == "expired"  # expired on access
    with pytest.raises(Conflict):
        world.queue.approve(a.id, _verifier(world, {}))
    assert world.queue.deny(b.id, "no").state == "denied"
    with pytest.raises(Conflict):
        world.queue.deny(b.id, "again")
    assert world.done() == [] and world.queue.pending_count == 0
    assert ("approval.expired", {"id": a.id, "kind": "thing.do"}) in world.events


def test_pending_survives_restart(tmp_path: Path) -> None:
    first = World(tmp_path)
    a = first.queue.submit("thing.do", {"k": "v"}, "owner", "s", 600)
    first.close()
    second = World(tmp_path)
    try:
        again = second.queue.get(a.id)
        assert again.state == "pending" and again.challenge == a.challenge
        assert second.queue.pending_count == 1 and second.done() == []
    finally:
        second.close()
    assert os.path.exists(tmp_path / "state.sqlite3")


def test_commit_failure_after_the_audit_entry_is_followed_by_a_rollback_entry(
        world: World) -> None:
    # A deferred foreign key is checked only at COMMIT: the executor's write is
    # accepted, the approval's audit entry is made durable, then COMMIT fails.
    world.store.migrate("t_deferred", 1,
                        "CREATE TABLE parent (id TEXT PRIMARY KEY);"
                        "CREATE TABLE child (parent TEXT NOT NULL REFERENCES parent(id)"
                        " DEFERRABLE INITIALLY DEFERRED)")

    def orphan(conn: sqlite3.Connection, approval: Approval) -> dict[str, Any]:
        conn.execute("INSERT INTO child (parent) VALUES ('missing')")
        return {"ok": True}

    world.queue.register("thing.orphan", SecurityLevel.biometric, orphan)
    a = world.queue.submit("thing.orphan", {}, "owner", "s", 60)
    with pytest.raises(sqlite3.IntegrityError):
        world.queue.approve(a.id, _verifier(world, _sign(world, a)))

    entries = [e for e in world.audit.entries() if e.target == a.id]
    assert [(e.action, e.decision) for e in entries] == [
        ("approval.thing.orphan.request", "info"),
        ("approval.thing.orphan.approve", "allow"),
        ("approval.thing.orphan.rolled_back", "deny")]
    assert entries[2].details == {"approve_seq": entries[1].seq, "error": "IntegrityError"}
    assert world.queue.get(a.id).state == "pending" and world.queue.pending_count == 1
    assert world.store.query("SELECT * FROM child") == []
    # the failed transaction is over: the store takes the next approval normally
    b = world.queue.submit("thing.do", {}, "owner", "s", 60)
    assert world.queue.approve(b.id, _verifier(world, _sign(world, b))).state == "approved"
    assert world.store.query("SELECT * FROM child") == [] and world.done() == [b.id]


def test_pending_approvals_are_capped_per_kind_and_in_total(world: World) -> None:
    world.queue.register("other.do", SecurityLevel.biometric, world.execute)
    world.queue.max_pending_per_kind = 2
    world.queue.max_pending = 3

    def submit(kind: str) -> Approval:
        return world.queue.submit(kind, {"n": 1}, "owner", f"do {kind}", 600)

    submit("thing.do")
    submit("thing.do")
    with pytest.raises(TooMany) as per_kind:
        submit("thing.do")
    assert per_kind.value.extra["limit"] == "max_pending_approvals_per_kind"
    submit("other.do")
    with pytest.raises(TooMany) as total:
        submit("other.do")
    assert total.value.extra["limit"] == "max_pending_approvals"
    assert world.queue.pending_count == 3
    # Expired approvals no longer count.
    world.clock[0] += 601
    submit("thing.do")
    assert world.queue.pending_count == 1


def test_payload_edited_and_remaced_after_signing_is_not_executed(world: World) -> None:
    """Even a row that carries a valid MAC (written with the key: a bug, or a reader
    of the keychain) is executed only if its payload is the one that was signed."""
    a = world.queue.submit("thing.do", {"formatter": "Text Formatter 1.0.0"}, "owner", "s", 60)
    credential = _sign(world, a)
    row = dict(world.store.query_one("SELECT * FROM approvals WHERE id = ?", (a.id,)) or {})
    payload = json.loads(row["payload"]) | {"body": {"formatter": "Swapped Formatter 6.6.6"}}
    row["payload"] = canonical_json(payload).decode()
    mac = world.store.integrity.mac("approvals", [a.id], {
        k: {"hex": v.hex()} if isinstance(v, bytes) else v for k, v in row.items()
        if k not in ("id", "mac")})
    with world.store.transaction() as conn:
        conn.execute("UPDATE approvals SET payload = ?, mac = ? WHERE id = ?",
                     (row["payload"], mac, a.id))
    assert world.queue.get(a.id).body == {"formatter": "Swapped Formatter 6.6.6"}
    with pytest.raises(PayloadMismatch):
        world.queue.approve(a.id, _verifier(world, credential), assertion=credential)
    assert world.done() == []
    assert world.queue.get(a.id).state == "pending"
    entries = [e for e in world.audit.entries() if e.action == "approval.thing.do.approve"]
    assert [(e.decision, e.details["code"]) for e in entries] == [("deny", "payload_mismatch")]


def test_a_row_without_its_mac_is_absent_and_reported_once(world: World) -> None:
    a = world.queue.submit("thing.do", {}, "owner", "s", 60)
    world.queue.deny(a.id, "no")
    with world.store.transaction() as conn:
        conn.execute("UPDATE approvals SET state = 'approved' WHERE id = ?", (a.id,))
    for _ in range(2):
        with pytest.raises(NotFound):
            world.queue.get(a.id)
        assert a.id not in [x.id for x in world.queue.recent()]
    assert world.store.integrity.failures() == [{"table": "approvals", "key": a.id}]
    assert world.store.integrity.failure_count == 1
