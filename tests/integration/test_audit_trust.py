"""A truncated audit log, or one whose checkpoint is gone or failing, is never accepted silently.

The real daemon, its real audit SQLite file and the real keychain (gnome-keyring
in the dev session): the attacks delete the keychain checkpoint, or kill the
daemon and cut entries off the end of the log, then restart it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pacd.audit import CHECKPOINT_FAILURE_LIMIT, checkpoint_name
from pacd.config import load_config
from pacd.errors import AuditError, AuditUntrusted, Conflict
from pacd.vault import KeyringSecretStore
from pacd.vault.keychain import namespace_for_home
from tests.integration.harness import (
    DaemonProcess,
    EventCollector,
    Owner,
    plugin,
    spec_with_plugins,
)


def _ready_owner(daemon: DaemonProcess) -> tuple[Owner, str]:
    owner = Owner(daemon)
    owner.init()
    owner.enroll()
    owner.session("biometric")
    container = owner.authed().request("POST", "/v1/containers", spec_with_plugins())
    return owner, str(container["id"])


def _delete_checkpoint(daemon: DaemonProcess) -> None:
    config = load_config(daemon.env)
    store = KeyringSecretStore(namespace_for_home(config.home))
    name = checkpoint_name(config.audit_db)
    assert store.get(name) is not None
    store.delete(name)
    assert store.get(name) is None


def _untrusted_after_deleted_checkpoint(daemon: DaemonProcess) -> Owner:
    owner, _ = _ready_owner(daemon)
    daemon.stop()
    _delete_checkpoint(daemon)
    daemon.start()
    return owner


def _audit_db(daemon: DaemonProcess) -> Path:
    return load_config(daemon.env).audit_db


def test_deleted_checkpoint_puts_daemon_in_audit_untrusted(daemon: DaemonProcess) -> None:
    _untrusted_after_deleted_checkpoint(daemon)
    audit = daemon.client().status()["audit"]
    assert audit["trusted"] is False
    assert audit["untrusted"]["first_bad_seq"] == 1
    assert "no checkpoint" in audit["untrusted"]["found"]
    # A subscriber is told as it connects.
    events = EventCollector(daemon.client())
    event = events.wait_for("audit.untrusted", first_bad_seq=1)
    assert "no checkpoint" in event["found"]
    # The CLI says so too, and so does verification.
    shown = daemon.cli("status")
    assert "UNTRUSTED" in shown.stdout and "pacd audit reanchor" in shown.stdout
    verify = daemon.client().request("POST", "/v1/audit/verify")
    assert (verify["ok"], verify["first_bad_seq"]) == (False, 1)


def test_container_create_refused_while_audit_untrusted(daemon: DaemonProcess) -> None:
    owner, container_id = _ready_owner(daemon)
    # Queued while the log was trusted (a submission needs a session, refused below).
    accepted = owner.authed().request("POST", f"/v1/containers/{container_id}/plugins",
                                      {"agent": "writer", "schema": plugin("text-formatter")})
    daemon.stop()
    _delete_checkpoint(daemon)
    daemon.start()
    spec = spec_with_plugins() | {"name": "after-cut"}
    with pytest.raises(AuditUntrusted) as refused:
        owner.authed().request("POST", "/v1/containers", spec)
    assert refused.value.code == "audit_untrusted" and refused.value.status == 503
    assert refused.value.extra["first_bad_seq"] == 1
    # Basic reads still answer, so the owner can look and repair.
    assert [c["name"] for c in daemon.client().request("GET", "/v1/containers")[
        "containers"]] == ["studio"]
    # Queuing a plugin needs a session, so it is refused now.
    with pytest.raises(AuditUntrusted):
        owner.authed().request("POST", f"/v1/containers/{container_id}/plugins",
                               {"agent": "writer", "schema": plugin("text-formatter")})
    # An approval above basic is refused too, even with a valid assertion for it.
    with pytest.raises(AuditUntrusted):
        daemon.client().request("POST", f"/v1/approvals/{accepted['approval_id']}/approve",
                                {"credential": owner.sign_approval(accepted["approval_id"])})
    assert daemon.client().request(
        "GET", f"/v1/approvals/{accepted['approval_id']}")["state"] == "pending"
    # Both refusals are in the (still recording) log.
    entries = daemon.audit()
    creates = [e for e in entries if e["action"] == "container.create"]
    assert creates[-1]["decision"] == "deny"
    assert creates[-1]["details"]["code"] == "audit_untrusted"
    approves = [e for e in entries if e["action"] == "approval.plugin.install.approve"]
    assert [e["decision"] for e in approves] == ["deny"]
    assert approves[0]["details"]["code"] == "audit_untrusted"


def test_reanchor_with_carbon_proof_restores_service(daemon: DaemonProcess) -> None:
    owner = _untrusted_after_deleted_checkpoint(daemon)
    events = EventCollector(daemon.client())
    accepted = daemon.cli("audit", "reanchor", "--json")
    assert accepted.returncode == 0, accepted.stderr
    request = json.loads(accepted.stdout)
    assert request["required_level"] == "carbonProof"
    approval_id = request["approval_id"]
    detail = daemon.client().request("GET", f"/v1/approvals/{approval_id}")
    assert detail["kind"] == "audit.reanchor"
    body = detail["payload"]["body"]
    assert body["found"]["first_bad_seq"] == 1
    # What the owner signs names the head of the log as it stands: the entry just
    # before this request's own, by seq and chain MAC.
    (requested,) = [e for e in daemon.audit() if e["action"] == "approval.audit.reanchor.request"]
    assert body["head_seq"] == requested["seq"] - 1
    with sqlite3.connect(_audit_db(daemon)) as conn:
        (head_mac,) = conn.execute("SELECT mac FROM audit_log WHERE seq = ?",
                                   (body["head_seq"],)).fetchone()
    assert body["head_mac"] == bytes(head_mac).hex()
    # Still refused while the approval is pending.
    with pytest.raises(AuditUntrusted):
        owner.authed().request("POST", "/v1/containers",
                               spec_with_plugins() | {"name": "too-early"})

    done = daemon.client().request("POST", f"/v1/approvals/{approval_id}/approve",
                                   {"credential": owner.sign_approval(approval_id)})
    assert done["state"] == "approved"
    events.wait_for("audit.trusted")
    audit = daemon.client().status()["audit"]
    assert audit["trusted"] is True and audit["untrusted"] is None
    anchor = next(e for e in daemon.audit() if e["action"] == "approval.audit.reanchor.approve")
    assert anchor["decision"] == "allow"
    assert anchor["details"]["result"]["found"]["first_bad_seq"] == 1
    assert audit["checkpoint_seq"] >= anchor["seq"]
    # How far the checkpoint trails is shown: written just now, for the anchor.
    assert audit["checkpoint_age_s"] is not None and 0 <= audit["checkpoint_age_s"] < 60
    created = owner.authed().request("POST", "/v1/containers",
                                     spec_with_plugins() | {"name": "after-anchor"})
    assert created["name"] == "after-anchor"
    assert daemon.client().request("POST", "/v1/audit/verify")["ok"] is True
    with pytest.raises(Conflict):
        daemon.client().request("POST", "/v1/audit/reanchor")
    # The new checkpoint holds across a restart.
    daemon.stop()
    daemon.start()
    assert daemon.client().status()["audit"]["trusted"] is True


@pytest.mark.parametrize("resolution", ["deny", "approve"])
def test_truncated_log_after_sigkill_following_approval_is_detected(
    daemon: DaemonProcess, resolution: str,
) -> None:
    owner, container_id = _ready_owner(daemon)
    client = owner.authed()
    accepted = client.request("POST", f"/v1/containers/{container_id}/plugins",
                              {"agent": "writer", "schema": plugin("text-formatter")})
    approval_id = accepted["approval_id"]
    # Answered, then killed at once: well inside the ordinary checkpoint spacing.
    if resolution == "deny":
        done = client.request("POST", f"/v1/approvals/{approval_id}/deny", {"reason": "no"})
        assert done["state"] == "denied"
    else:
        done = client.request("POST", f"/v1/approvals/{approval_id}/approve",
                              {"credential": owner.sign_approval(approval_id)})
        assert done["state"] == "approved"
    daemon.kill()

    db = _audit_db(daemon)
    with sqlite3.connect(db) as conn:
        (cut_seq,) = conn.execute(
            "SELECT seq FROM audit_log WHERE action = ? AND target = ?",
            (f"approval.plugin.install.{resolution}", approval_id)).fetchone()
        conn.execute("DELETE FROM audit_log WHERE seq >= ?", (cut_seq,))
    daemon.start()

    audit = daemon.client().status()["audit"]
    assert audit["trusted"] is False
    assert audit["untrusted"]["first_bad_seq"] == cut_seq
    assert "were removed" in audit["untrusted"]["found"]
    with pytest.raises(AuditUntrusted):
        owner.authed().request("POST", "/v1/containers",
                               spec_with_plugins() | {"name": "after-kill"})
    request = daemon.client().request("POST", "/v1/audit/reanchor")
    done = daemon.client().request(
        "POST", f"/v1/approvals/{request['approval_id']}/approve",
        {"credential": owner.sign_approval(request["approval_id"])})
    assert done["state"] == "approved"
    created = owner.authed().request("POST", "/v1/containers",
                                     spec_with_plugins() | {"name": "after-kill"})
    assert created["name"] == "after-kill"


def _checkpoint_caught_up(daemon: DaemonProcess, timeout: float = 10.0) -> int:
    """Wait until the keychain checkpoint covers the log's head; returns that seq."""
    deadline = time.monotonic() + timeout
    while True:
        audit = daemon.client().status()["audit"]
        if audit["checkpoint_seq"] == audit["head_seq"] or time.monotonic() > deadline:
            assert audit["checkpoint_seq"] == audit["head_seq"], audit
            return int(audit["head_seq"])
        time.sleep(0.05)


def test_truncated_log_after_sigkill_following_first_enrolment_is_detected(
    daemon: DaemonProcess,
) -> None:
    owner = Owner(daemon)
    owner.init()
    # The owner's creation is covered by an ordinary (trailing) checkpoint...
    covered = _checkpoint_caught_up(daemon)
    # ...then the first key is enrolled, answered, and the daemon killed at once.
    owner.enroll("key A")
    daemon.kill()

    with sqlite3.connect(_audit_db(daemon)) as conn:
        (enroll_seq,) = conn.execute(
            "SELECT seq FROM audit_log WHERE action = 'credential.enroll'"
            " AND decision = 'allow'").fetchone()
        assert enroll_seq > covered
        conn.execute("DELETE FROM audit_log WHERE seq >= ?", (enroll_seq,))
    daemon.start()

    audit = daemon.client().status()["audit"]
    assert audit["trusted"] is False
    assert audit["untrusted"]["first_bad_seq"] == enroll_seq
    assert "were removed" in audit["untrusted"]["found"]


def test_failed_checkpoint_writes_show_in_status_and_refuse_after_the_limit(
    make_daemon: Callable[..., DaemonProcess], short_tmp: Path,
) -> None:
    passphrase = short_tmp / "passphrase"
    passphrase.write_text("correct horse battery staple\n")
    passphrase.chmod(0o600)
    daemon = make_daemon(settings={
        "keystore": "passphrase", "passphrase_file": str(passphrase)})
    owner, container_id = _ready_owner(daemon)
    events = EventCollector(daemon.client())
    sealed = daemon.home / "keystore.sealed"
    moved = short_tmp / "keystore.moved"
    # The keystore's file becomes a directory: every write of it fails in the
    # kernel (rename onto a directory), as a full or read-only disk would.
    sealed.rename(moved)
    sealed.mkdir()
    try:
        client = owner.authed()
        # An approval whose entry cannot be covered is not approved, and the log says
        # so right after that entry.
        accepted = client.request("POST", f"/v1/containers/{container_id}/plugins",
                                  {"agent": "writer", "schema": plugin("text-formatter")})
        signed = owner.sign_approval(accepted["approval_id"])
        with pytest.raises(AuditError):
            client.request("POST", f"/v1/approvals/{accepted['approval_id']}/approve",
                           {"credential": signed})
        assert client.request(
            "GET", f"/v1/approvals/{accepted['approval_id']}")["state"] == "pending"
        approve, undone = [e for e in daemon.audit() if e["target"] == accepted["approval_id"]
                           and e["action"].startswith("approval.plugin.install.")][-2:]
        assert (approve["action"], approve["decision"]) == (
            "approval.plugin.install.approve", "allow")
        assert (undone["action"], undone["details"]["approve_seq"]) == (
            "approval.plugin.install.rolled_back", approve["seq"])
        # That was the first failed write; the denials below make up the rest.
        for attempt in range(2, CHECKPOINT_FAILURE_LIMIT + 1):
            accepted = client.request("POST", f"/v1/containers/{container_id}/plugins",
                                      {"agent": "writer", "schema": plugin("text-formatter")})
            # A denial is answered only once its checkpoint is written: not now.
            with pytest.raises(AuditError) as failed:
                client.request("POST", f"/v1/approvals/{accepted['approval_id']}/deny", {})
            assert "checkpoint" in failed.value.message
            assert client.request(
                "GET", f"/v1/approvals/{accepted['approval_id']}")["state"] == "pending"
            if attempt == 2:  # below the limit: the deny entry is followed by its undoing
                deny, undone = [e for e in daemon.audit()
                                if e["target"] == accepted["approval_id"]
                                and e["action"].startswith("approval.plugin.install.")][-2:]
                assert (deny["action"], undone["action"], undone["details"]["approve_seq"]) == (
                    "approval.plugin.install.deny", "approval.plugin.install.rolled_back",
                    deny["seq"])
            error = client.status()["audit"]["checkpoint_error"]
            assert error is not None and error["count"] >= attempt
            assert "keystore.sealed" in error["message"]
        event = events.wait_for("audit.checkpoint_error")
        assert "keystore.sealed" in event["message"]
        status = client.status()["audit"]
        assert status["trusted"] is False
        events.wait_for("audit.untrusted")
        with pytest.raises(AuditUntrusted) as refused:
            owner.authed().request("POST", "/v1/containers",
                                   spec_with_plugins() | {"name": "while-failing"})
        assert refused.value.extra["checkpoint_failures"] >= CHECKPOINT_FAILURE_LIMIT
    finally:
        sealed.rmdir()
        moved.rename(sealed)
    # Once a write succeeds (the next audited request schedules one) service resumes.
    daemon.client().request("GET", "/v1/containers")
    events.wait_for("audit.trusted")
    assert daemon.client().status()["audit"]["checkpoint_error"] is None
    created = owner.authed().request("POST", "/v1/containers",
                                     spec_with_plugins() | {"name": "after-repair"})
    assert created["name"] == "after-repair"
