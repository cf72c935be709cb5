"""State that decides access cannot be edited behind the daemon's back.

Each test stops the real daemon, edits its state database with plain SQLite
(what anyone who can write the file can do, without the keychain), starts it
again and shows that the edit is refused — the row is treated as absent —
and that the daemon says so: one ``state.integrity_failure`` audit entry naming
the table and row, and the row listed in ``status``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import closing
from typing import Any

import pytest

from pacd.config import load_config
from pacd.core.plugins import parse_plugin_schema
from pacd.errors import PacdError
from tests.integration.harness import DaemonProcess, Owner, plugin, spec_with_plugins

FAILURE = "state.integrity_failure"


def edit_state(daemon: DaemonProcess, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Stop the daemon, run ``sql`` on its state database, start it again."""
    assert daemon.stop() == 0
    with closing(sqlite3.connect(load_config(daemon.env).state_db)) as conn, conn:
        conn.execute(sql, params)
    daemon.start()


def state_row(daemon: DaemonProcess, sql: str, params: tuple[Any, ...] = ()) -> Any:
    with closing(sqlite3.connect(load_config(daemon.env).state_db)) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql, params).fetchone()


def failure_entries(daemon: DaemonProcess, table: str, key: str,
                    timeout: float = 10.0) -> list[dict[str, Any]]:
    """The integrity-failure entries for one row, once there is at least one."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in daemon.audit() if e["action"] == FAILURE
                 and e["details"] == {"table": table, "key": key}]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def assert_reported(daemon: DaemonProcess, table: str, key: str) -> None:
    entries = failure_entries(daemon, table, key)
    assert len(entries) == 1, entries
    assert entries[0]["decision"] == "deny"
    assert entries[0]["target"] == f"{table}/{key}"
    assert {"table": table, "key": key} in daemon.client().status()["integrity_failures"]


def refused(call: Any) -> PacdError:
    with pytest.raises(PacdError) as caught:
        call()
    return caught.value


def test_inserted_token_row_is_not_a_session(daemon: DaemonProcess) -> None:
    owner = Owner(daemon)
    owner.init()
    owner.enroll()
    owner.session("biometric")
    genuine = state_row(daemon, "SELECT * FROM presence_tokens")
    # A carbonProof token for a string of the attacker's choosing, not single-use,
    # carrying the MAC of the owner's genuine token row.
    edit_state(daemon,
               "INSERT INTO presence_tokens (token_id, token_hash, owner_id, level, scope,"
               " single_use, issued_at, expires_at, mac) VALUES (?, ?, ?, 'carbonProof', '*',"
               " 0, ?, ?, ?)",
               ("f0f0f0f0f0f0f0f0", hashlib.sha256(b"chosen").digest(), genuine["owner_id"],
                time.time(), time.time() + 3600, genuine["mac"]))
    forged = daemon.client("chosen")
    error = refused(lambda: forged.request("POST", "/v1/containers", spec_with_plugins()))
    assert error.status == 401 and error.code == "unauthorized"
    assert daemon.client().request("GET", "/v1/containers")["containers"] == []
    assert_reported(daemon, "presence_tokens", "f0f0f0f0f0f0f0f0")
    assert not [e for e in daemon.audit()
                if e["action"] == "container.create" and e["decision"] == "allow"]
    # The owner's own token, written by the daemon, still works.
    assert owner.authed().request("POST", "/v1/containers", spec_with_plugins())["id"]


def test_edited_container_spec_is_refused(daemon: DaemonProcess) -> None:
    owner = Owner(daemon)
    owner.init()
    owner.enroll()
    owner.session("biometric")
    container = owner.authed().request("POST", "/v1/containers", spec_with_plugins())
    row = state_row(daemon, "SELECT spec FROM registry_containers WHERE id = ?",
                    (container["id"],))
    spec = json.loads(row["spec"])
    # Give the read-only writer agent write access and a concern it was never in.
    for agent in spec["agents"]:
        if agent["name"] == "writer":
            agent["data_access"] = "readWrite"
    for concern in spec["concerns"]:
        if "writer" not in concern["agents"]:
            concern["agents"].append("writer")
    edit_state(daemon, "UPDATE registry_containers SET spec = ? WHERE id = ?",
               (json.dumps(spec, sort_keys=True, separators=(",", ":")), container["id"]))
    c = owner.authed()
    error = refused(lambda: c.request("GET", f"/v1/containers/{container['id']}"))
    assert error.status == 404
    error = refused(lambda: c.request("POST", f"/v1/containers/{container['id']}/start"))
    assert error.status == 404
    assert c.request("GET", "/v1/containers")["containers"] == []
    assert_reported(daemon, "registry_containers", container["id"])


def test_inserted_plugin_row_is_not_an_approved_plugin(daemon: DaemonProcess) -> None:
    owner = Owner(daemon)
    owner.init()
    owner.enroll()
    owner.session("biometric")
    container = owner.authed().request("POST", "/v1/containers", spec_with_plugins())
    schema = parse_plugin_schema(plugin("text-formatter")).to_json()
    edit_state(daemon,
               "INSERT INTO registry_plugins (container_id, plugin_id, agent, name, version,"
               " schema, approval_id, approved_at, state) VALUES (?, ?, 'writer', ?, ?, ?,"
               " 'feedfacefeedfacefeedfacefeedface', ?, 'approved')",
               (container["id"], schema["id"], schema["name"], schema["version"],
                json.dumps(schema), time.time()))
    shown = owner.authed().request("GET", f"/v1/containers/{container['id']}")
    assert shown["plugins"] == []
    openapi = owner.authed().request("GET", f"/v1/containers/{container['id']}/openapi")
    assert schema["name"] not in json.dumps(openapi)
    assert_reported(daemon, "registry_plugins", f"{container['id']}/{schema['id']}/writer")


def _queued_plugin(daemon: DaemonProcess) -> tuple[Owner, dict[str, Any], str]:
    """An owner with a session, a container, and a plugin approval waiting for them."""
    owner = Owner(daemon)
    owner.init()
    owner.enroll()
    owner.session("biometric")
    container = owner.authed().request("POST", "/v1/containers", spec_with_plugins())
    approval = owner.authed().request(
        "POST", f"/v1/containers/{container['id']}/plugins",
        {"agent": "writer", "schema": plugin("text-formatter")})["approval_id"]
    return owner, container, str(approval)


def test_flipped_approval_state_is_not_shown_as_approved(daemon: DaemonProcess) -> None:
    owner, container, approval = _queued_plugin(daemon)
    daemon.client().request("POST", f"/v1/approvals/{approval}/deny", {"reason": "no"})
    edit_state(daemon, "UPDATE approvals SET state = 'approved' WHERE id = ?", (approval,))
    c = daemon.client()
    error = refused(lambda: c.request("GET", f"/v1/approvals/{approval}"))
    assert error.status == 404
    listed = c.request("GET", "/v1/approvals")["approvals"]
    assert not [a for a in listed if a["id"] == approval]
    assert owner.authed().request("GET", f"/v1/containers/{container['id']}")["plugins"] == []
    assert_reported(daemon, "approvals", approval)


def test_deleted_credentials_do_not_reopen_first_key_enrolment(
        daemon: DaemonProcess) -> None:
    owner = Owner(daemon)
    owner.init()
    owner.enroll("owner's key")
    edit_state(daemon, "DELETE FROM presence_credentials")
    c = daemon.client()
    # With no session, enrolment is refused: the owner's record says a key exists.
    error = refused(lambda: c.request("POST", "/v1/owner/credentials/begin",
                                      {"label": "intruder"}))
    assert error.status == 401
    assert error.extra.get("required_level") == "biometric"
    assert daemon.client().status()["owner"]["credentials"] == 0
    assert_reported(daemon, "presence_credentials", "(rows missing)")
    begins = [e for e in daemon.audit() if e["action"] == "credential.begin"]
    assert begins and begins[-1]["decision"] == "deny"

    # Deleting the owner too does not make this a fresh daemon: the keychain says
    # an owner was created, so a new one (and a first key) is refused.
    edit_state(daemon, "DELETE FROM presence_owner")
    error = refused(lambda: daemon.client().request("POST", "/v1/owner", {"name": "Mallory"}))
    assert error.status == 500 and error.code == "integrity_error"
    assert daemon.client().status()["owner"] is None
    assert_reported(daemon, "presence_owner", "(row missing)")
    creates = [e["decision"] for e in daemon.audit() if e["action"] == "owner.create"]
    assert creates == ["allow", "deny"]


def test_payload_edited_after_signing_is_not_executed(daemon: DaemonProcess) -> None:
    owner, container, approval = _queued_plugin(daemon)
    credential = owner.sign_approval(approval)
    row = state_row(daemon, "SELECT payload FROM approvals WHERE id = ?", (approval,))
    payload = json.loads(row["payload"])
    payload["body"]["schema"]["name"] = "Swapped Formatter"
    payload["body"]["schema"]["version"] = "6.6.6"
    edit_state(daemon, "UPDATE approvals SET payload = ? WHERE id = ?",
               (json.dumps(payload, sort_keys=True, separators=(",", ":")), approval))
    error = refused(lambda: daemon.client().request(
        "POST", f"/v1/approvals/{approval}/approve", {"credential": credential}))
    assert error.status == 404
    shown = owner.authed().request("GET", f"/v1/containers/{container['id']}")
    assert shown["plugins"] == []
    assert_reported(daemon, "approvals", approval)
    approves = [e for e in daemon.audit() if e["action"].endswith(".approve")]
    assert [e["decision"] for e in approves] == ["deny"]
    assert approves[0]["target"] == approval
