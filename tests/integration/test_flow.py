"""The owner's whole journey, through the socket only, against the real daemon."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from pacd.approvals import b64url
from pacd.core.canonical import digest
from pacd.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PresenceFailed,
    PresenceRequired,
    Unauthorized,
)
from tests.integration.harness import (
    EXAMPLES,
    DaemonProcess,
    EventCollector,
    Owner,
    plugin,
    spec_with_plugins,
)
from tests.softauthn import SoftAuthenticator


def _ready_owner(daemon: DaemonProcess) -> Owner:
    owner = Owner(daemon)
    owner.init()
    owner.enroll()
    owner.session("biometric")
    return owner


def test_full_flow_plugin_approved(daemon: DaemonProcess) -> None:
    events = EventCollector(daemon.client())
    owner = Owner(daemon)
    created = owner.init("Alice")
    assert created["name"] == "Alice"
    assert daemon.client().status()["owner"]["name"] == "Alice"

    enrolled = owner.enroll()
    assert enrolled["user_verifying"] is True
    # Creating a container needs a biometric session; without one: refused.
    with pytest.raises(Unauthorized) as no_token:
        daemon.client().request("POST", "/v1/containers", spec_with_plugins())
    assert no_token.value.extra["required_level"] == "biometric"
    enhanced = owner.session("enhanced")
    with pytest.raises(PresenceRequired) as weak:
        daemon.client(enhanced).request("POST", "/v1/containers", spec_with_plugins())
    assert weak.value.required_level == "biometric"

    owner.session("biometric")
    example = owner.authed().request("POST", "/v1/containers",
                                     json.loads((EXAMPLES / "specs" / "home.json").read_text()))
    assert [a["name"] for a in example["agents"]] == ["writer", "analyst"]
    container = owner.authed().request("POST", "/v1/containers", spec_with_plugins())
    events.wait_for("container.state", id=container["id"])
    listed = daemon.client().request("GET", "/v1/containers")["containers"]
    assert {c["name"] for c in listed} == {"home", "studio"}

    accepted = owner.authed().request(
        "POST", f"/v1/containers/{container['id']}/plugins",
        {"agent": "writer", "schema": plugin("text-formatter")})
    approval_id = accepted["approval_id"]
    assert accepted["required_level"] == "biometric"
    created_event = events.wait_for("approval.created", id=approval_id)
    assert created_event["kind"] == "plugin.install"

    detail = daemon.client().request("GET", f"/v1/approvals/{approval_id}")
    assert detail["state"] == "pending"
    assert detail["payload"]["body"]["schema"]["name"] == "Text Formatter"
    assert detail["payload"]["kind"] == "plugin.install"
    assert detail["publicKey"]["userVerification"] == "required"
    # The challenge handed out is the digest of exactly the payload shown.
    assert detail["challenge"] == b64url(digest(detail["payload"]))
    assert detail["publicKey"]["challenge"] == detail["challenge"]

    credential = owner.sign_approval(approval_id)
    done = daemon.client().request("POST", f"/v1/approvals/{approval_id}/approve",
                                   {"credential": credential})
    assert done["state"] == "approved"
    assert done["result"]["agent"] == "writer"
    events.wait_for("approval.resolved", id=approval_id, state="approved")

    shown = daemon.client().request("GET", f"/v1/containers/{container['id']}")
    assert [(p["name"], p["agent"], p["state"], p["approval_id"]) for p in shown["plugins"]] == [
        ("Text Formatter", "writer", "approved", approval_id)]

    # Approving twice: a conflict, and nothing executes a second time.
    with pytest.raises(Conflict):
        daemon.client().request("POST", f"/v1/approvals/{approval_id}/approve",
                                {"credential": credential})
    shown = daemon.client().request("GET", f"/v1/containers/{container['id']}")
    assert len(shown["plugins"]) == 1

    audit = daemon.audit()
    approve_entries = [e for e in audit if e["action"] == "approval.plugin.install.approve"]
    assert [e["decision"] for e in approve_entries] == ["allow", "deny"]
    assert approve_entries[0]["details"]["assertion"]["id"] == credential["id"]
    assert daemon.client().request("POST", "/v1/audit/verify")["ok"] is True


def test_harvester_rejected_with_every_reason(daemon: DaemonProcess) -> None:
    owner = _ready_owner(daemon)
    container = owner.authed().request("POST", "/v1/containers", spec_with_plugins())
    with pytest.raises(InvalidRequest) as rejected:
        owner.authed().request("POST", f"/v1/containers/{container['id']}/plugins",
                               {"agent": "analyst", "schema": plugin("external-data-harvester")})
    errors = rejected.value.errors
    joined = "\n".join(errors)
    for reason in ("carbon_based_auth_required", "domain_isolation", "max_data_access",
                   "networkAccess", "fileAccess", "requires_auth"):
        assert reason in joined, (reason, errors)
    assert rejected.value.status == 422
    assert daemon.client().request("GET", "/v1/approvals")["approvals"] == []
    denied = [e for e in daemon.audit() if e["action"] == "plugin.submit"]
    assert denied[-1]["decision"] == "deny"
    assert denied[-1]["details"]["errors"] == errors


def test_policy_without_plugins_refuses_submission(daemon: DaemonProcess) -> None:
    owner = _ready_owner(daemon)
    spec = json.loads((EXAMPLES / "specs" / "home.json").read_text())
    container = owner.authed().request("POST", "/v1/containers", spec)
    with pytest.raises(InvalidRequest) as rejected:
        owner.authed().request("POST", f"/v1/containers/{container['id']}/plugins",
                               {"agent": "writer", "schema": plugin("text-formatter")})
    assert any("allow_plugins" in e for e in rejected.value.errors)


def test_deny_and_cross_approval(daemon: DaemonProcess) -> None:
    owner = _ready_owner(daemon)
    container = owner.authed().request("POST", "/v1/containers", spec_with_plugins())
    path = f"/v1/containers/{container['id']}/plugins"
    first = owner.authed().request("POST", path, {"agent": "writer",
                                                  "schema": plugin("text-formatter")})
    second_schema = plugin("text-formatter") | {"version": "1.1.0"}
    second = owner.authed().request("POST", path, {"agent": "writer", "schema": second_schema})

    # An assertion made for the first approval cannot approve the second.
    signed_for_first = owner.sign_approval(first["approval_id"])
    with pytest.raises(PresenceFailed):
        daemon.client().request("POST", f"/v1/approvals/{second['approval_id']}/approve",
                                {"credential": signed_for_first})
    assert daemon.client().request(
        "GET", f"/v1/approvals/{second['approval_id']}")["state"] == "pending"

    denied = daemon.client().request("POST", f"/v1/approvals/{first['approval_id']}/deny",
                                     {"reason": "not today"})
    assert denied["state"] == "denied"
    # A denied approval cannot be approved, even with a valid assertion for it.
    with pytest.raises(Conflict):
        daemon.client().request("POST", f"/v1/approvals/{first['approval_id']}/approve",
                                {"credential": signed_for_first})
    with pytest.raises(Conflict):
        daemon.client().request("POST", f"/v1/approvals/{first['approval_id']}/deny", {})
    with pytest.raises(NotFound):
        daemon.client().request("POST", "/v1/approvals/nope/deny", {})

    ok = daemon.client().request("POST", f"/v1/approvals/{second['approval_id']}/approve",
                                 {"credential": owner.sign_approval(second["approval_id"])})
    assert ok["state"] == "approved"
    plugins = daemon.client().request("GET", f"/v1/containers/{container['id']}")["plugins"]
    assert [p["version"] for p in plugins] == ["1.1.0"]


def test_expiry_ends_not_done(make_daemon: Callable[..., DaemonProcess]) -> None:
    daemon = make_daemon(env={"PACD_APPROVAL_TTL": "2"})
    events = EventCollector(daemon.client())
    owner = _ready_owner(daemon)
    container = owner.authed().request("POST", "/v1/containers", spec_with_plugins())
    accepted = owner.authed().request("POST", f"/v1/containers/{container['id']}/plugins",
                                      {"agent": "writer", "schema": plugin("text-formatter")})
    approval_id = accepted["approval_id"]
    credential = owner.sign_approval(approval_id)  # signed in time, posted too late
    events.wait_for("approval.expired", id=approval_id, timeout=10)
    with pytest.raises(Conflict):
        daemon.client().request("POST", f"/v1/approvals/{approval_id}/approve",
                                {"credential": credential})
    assert daemon.client().request("GET", f"/v1/approvals/{approval_id}")["state"] == "expired"
    assert daemon.client().request("GET", f"/v1/containers/{container['id']}")["plugins"] == []
    assert daemon.client().status()["pending_approvals"] == 0


def test_restart_while_pending(daemon: DaemonProcess) -> None:
    owner = _ready_owner(daemon)
    container = owner.authed().request("POST", "/v1/containers", spec_with_plugins())
    accepted = owner.authed().request("POST", f"/v1/containers/{container['id']}/plugins",
                                      {"agent": "writer", "schema": plugin("text-formatter")})
    approval_id = accepted["approval_id"]
    assert daemon.stop() == 0
    daemon.start()
    # A restart executes nothing: still pending, plugin not recorded.
    assert daemon.client().request("GET", f"/v1/approvals/{approval_id}")["state"] == "pending"
    assert daemon.client().request("GET", f"/v1/containers/{container['id']}")["plugins"] == []
    assert daemon.client().status()["pending_approvals"] == 1
    # The session token issued before the restart is still good (wall-clock expiry).
    assert owner.authed().request("GET", "/v1/containers")["containers"]
    done = daemon.client().request("POST", f"/v1/approvals/{approval_id}/approve",
                                   {"credential": owner.sign_approval(approval_id)})
    assert done["state"] == "approved"


def test_second_credential_needs_biometric(daemon: DaemonProcess) -> None:
    owner = Owner(daemon)
    owner.init()
    owner.enroll()
    with pytest.raises(Unauthorized):
        daemon.client().request("POST", "/v1/owner/credentials/begin", {"label": "second"})
    owner.session("biometric")
    added = owner.approve(owner.enroll("second", SoftAuthenticator())["approval_id"])
    assert added["result"]["label"] == "second"
    assert daemon.client().status()["owner"]["credentials"] == 2
    with pytest.raises(Conflict):
        owner.init("Mallory")
