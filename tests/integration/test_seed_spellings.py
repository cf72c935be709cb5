"""The seed's camelCase JSON, submitted through the real daemon's socket."""

from __future__ import annotations

import json
from typing import Any

from pacd.approvals import b64url
from pacd.core.canonical import digest
from pacd.transport import UnixHTTPConnection
from tests.integration.harness import DaemonProcess, Owner, plugin, spec_with_plugins

SEED_ID = "e621e1f8-c36c-495a-93fc-0c247a3e6e5f"


def _post(daemon: DaemonProcess, token: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    """A request whose HTTP status is kept (the client maps errors to classes by code)."""
    conn = UnixHTTPConnection(str(daemon.socket), 30)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json",
                              "Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_the_seeds_camel_case_text_formatter_is_accepted_and_shown_in_snake_case(
        daemon: DaemonProcess) -> None:
    owner = Owner(daemon)
    owner.init()
    owner.enroll()
    token = owner.session("biometric")
    spec = spec_with_plugins()
    spec["securityPolicy"] = {"allowPlugins": True}
    del spec["policy"]
    container = owner.authed().request("POST", "/v1/containers", spec)
    # the spec pacd shows back is in its one written spelling
    assert container["spec"]["policy"]["allow_plugins"] is True
    assert "allowPlugins" not in container["spec"]["policy"]

    seed = plugin("text-formatter-seed")
    assert "requiredCapabilities" in seed and "securityRequirements" in seed
    # submitted with the owner's session, which is at least the level submission asks for
    status, accepted = _post(daemon, token, f"/v1/containers/{container['id']}/plugins",
                             {"agent": "writer", "schema": seed})
    assert status == 202, accepted
    approval_id = accepted["approval_id"]

    detail = daemon.client().request("GET", f"/v1/approvals/{approval_id}")
    schema = detail["payload"]["body"]["schema"]
    # the owner approves the seed's id, in the one spelling pacd writes
    assert schema["id"] == SEED_ID
    assert schema["required_capabilities"] == ["textGeneration"]
    assert schema["endpoints"][0]["rate_limit"] == {"requests_per_minute": 60, "burst_size": 10}
    assert "requiredCapabilities" not in schema and "securityRequirements" not in schema
    assert detail["challenge"] == b64url(digest(detail["payload"]))

    done = daemon.client().request("POST", f"/v1/approvals/{approval_id}/approve",
                                   {"credential": owner.sign_approval(approval_id)})
    assert done["state"] == "approved"
    shown = daemon.client().request("GET", f"/v1/containers/{container['id']}")
    assert [(p["id"], p["name"], p["state"]) for p in shown["plugins"]] == [
        (SEED_ID, "Text Formatter", "approved")]


def test_the_seeds_harvester_in_camel_case_is_refused_naming_its_own_fields(
        daemon: DaemonProcess) -> None:
    owner = Owner(daemon)
    owner.init()
    owner.enroll()
    token = owner.session("biometric")
    container = owner.authed().request("POST", "/v1/containers", spec_with_plugins())
    snake = plugin("external-data-harvester")
    harvester = {
        "name": snake["name"], "version": snake["version"],
        "requiredCapabilities": snake["required_capabilities"],
        "endpoints": [{"path": "/harvest", "method": "POST", "requiresAuth": False,
                       "rateLimit": None}],
        "securityRequirements": {"carbonBasedAuthRequired": False, "domainIsolation": False,
                                 "maxDataAccess": "crossDomain"},
    }
    status, refused = _post(daemon, token, f"/v1/containers/{container['id']}/plugins",
                            {"agent": "analyst", "schema": harvester})
    assert status == 422, refused
    errors = refused["error"]["errors"]
    for path in ("securityRequirements.carbonBasedAuthRequired:",
                 "securityRequirements.domainIsolation:", "securityRequirements.maxDataAccess:",
                 "endpoints[0].requiresAuth:", "endpoints[0].rateLimit:",
                 "requiredCapabilities[0]:"):
        assert any(e.startswith(path) for e in errors), (path, errors)
    denied = [e for e in daemon.audit() if e["action"] == "plugin.submit"]
    assert denied[-1]["decision"] == "deny"
    assert denied[-1]["details"]["errors"] == errors
    assert daemon.client().request("GET", "/v1/approvals")["approvals"] == []
