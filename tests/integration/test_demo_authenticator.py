"""The demo authenticator (pacd's software CTAP2 key) against the real daemon.

A software key is as safe as the keychain of the user who runs it and needs no
touch: a daemon accepts its credentials only when config.toml sets
``allow_software_authenticator``, and marks them ``software`` wherever the
owner looks (listing, approvals, audit, status). These tests use the real
daemon, the real client ceremony and the CLI as a person types it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from pacd.config import load_config
from pacd.errors import SoftwareAuthenticatorRefused
from pacd.presence.demo_authenticator import STATE_FILE, DemoAuthenticatorStore
from tests.integration.harness import EXAMPLES, DaemonProcess, Owner
from tests.softauthn import SOFTWARE_AUTHENTICATOR_AAGUID, SoftAuthenticator

ALLOW = {"allow_software_authenticator": True}


def _demo_key() -> SoftAuthenticator:
    return SoftAuthenticator(aaguid=SOFTWARE_AUTHENTICATOR_AAGUID)


def _entries(daemon: DaemonProcess, action: str) -> list[dict[str, Any]]:
    return [e for e in daemon.audit() if e["action"] == action]


def _cli_json(daemon: DaemonProcess, *args: str) -> dict[str, Any]:
    done = daemon.cli(*args, "--json")
    assert done.returncode == 0, f"pacd {' '.join(args)}: {done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_software_key_cannot_become_the_owners_key_by_default(daemon: DaemonProcess) -> None:
    assert daemon.client().status()["demo_authenticator"] == {"allowed": False, "enrolled": 0}
    owner = Owner(daemon, _demo_key())
    owner.init()
    with pytest.raises(SoftwareAuthenticatorRefused) as refused:
        owner.enroll("demo")
    assert refused.value.code == "software_authenticator_refused"
    assert "allow_software_authenticator" in refused.value.message
    assert daemon.client().credentials() == []
    denied = _entries(daemon, "credential.enroll")
    assert [e["decision"] for e in denied] == ["deny"]
    assert denied[0]["details"]["code"] == "software_authenticator_refused"


def test_software_key_enrolled_while_allowed_signs_nothing_once_disallowed(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    daemon = make_daemon("allowed", ALLOW)
    owner = Owner(daemon, _demo_key())
    owner.init()
    owner.enroll("demo")
    listed = daemon.client().credentials()
    assert [c["software"] for c in listed] == [True]
    assert daemon.client().status()["demo_authenticator"] == {"allowed": True, "enrolled": 1}
    enrolled = _entries(daemon, "credential.enroll")
    assert enrolled[-1]["decision"] == "allow" and enrolled[-1]["details"]["software"] is True
    owner.session("biometric")
    opened = _entries(daemon, "session.create")
    assert opened[-1]["decision"] == "allow" and opened[-1]["details"]["software"] is True

    # The owner takes the permission back: the key enrolled under it is refused.
    daemon.stop()
    daemon.config_path.write_text("")
    daemon.start()
    assert daemon.client().status()["demo_authenticator"] == {"allowed": False, "enrolled": 1}
    with pytest.raises(SoftwareAuthenticatorRefused):
        owner.session("biometric")
    refused = _entries(daemon, "session.create")[-1]
    assert refused["decision"] == "deny"
    assert refused["details"]["code"] == "software_authenticator_refused"


def test_hardware_keys_are_listed_as_not_software(daemon: DaemonProcess) -> None:
    owner = Owner(daemon)
    owner.init()
    owner.enroll("usb key")
    assert [c["software"] for c in daemon.client().credentials()] == [False]
    assert daemon.client().status()["demo_authenticator"] == {"allowed": False, "enrolled": 0}


def test_adding_a_software_key_is_shown_as_software_in_the_approval(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    daemon = make_daemon("add", ALLOW)
    owner = Owner(daemon)
    owner.init()
    owner.enroll("usb key")
    owner.session("biometric")
    queued = owner.enroll("demo", _demo_key())
    detail = daemon.client().request("GET", f"/v1/approvals/{queued['approval_id']}")
    assert detail["payload"]["body"]["software"] is True
    assert "SOFTWARE" in detail["summary"]
    owner.approve(str(queued["approval_id"]))
    assert sorted(c["software"] for c in daemon.client().credentials()) == [False, True]


def test_cli_refuses_the_demo_key_where_the_daemon_does_not_accept_it(
        daemon: DaemonProcess) -> None:
    assert daemon.cli("init", "--name", "Ada").returncode == 0
    done = daemon.cli("enroll", "--demo", "--json")
    assert done.returncode == 3, done.stderr
    assert json.loads(done.stdout)["error"]["code"] == "software_authenticator_refused"
    assert daemon.client().credentials() == []
    # Nothing was made on the owner's side either.
    assert not (daemon.home / STATE_FILE).exists()


def test_readme_walkthrough_without_a_security_key(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    """init, enroll (demo key), create the example container, submit the Text
    Formatter plugin, approve it: the README's steps, as typed there."""
    daemon = make_daemon("walk", ALLOW)
    _cli_json(daemon, "init", "--name", "Ada")
    enrolled = _cli_json(daemon, "enroll", "--demo")
    shown = daemon.cli("status")
    assert "demo key:   accepted, 1 enrolled (a software key: NOT secure" in shown.stdout
    created = _cli_json(daemon, "container", "create",
                        str(EXAMPLES / "specs" / "studio.json"), "--demo")
    assert created["name"] == "studio"
    queued = _cli_json(daemon, "plugin", "submit", "studio",
                       str(EXAMPLES / "plugins" / "text-formatter.json"), "--agent", "writer",
                       "--demo")
    pending = _cli_json(daemon, "approvals")["approvals"]
    assert [(a["id"], a["state"]) for a in pending] == [(queued["approval_id"], "pending")]
    done = _cli_json(daemon, "approve", queued["approval_id"], "--demo")
    assert done["state"] == "approved"
    shown = _cli_json(daemon, "container", "show", created["id"])
    assert [(p["name"], p["state"]) for p in shown["plugins"]] == [("Text Formatter",
                                                                    "approved")]
    approved = [e for e in daemon.audit() if e["action"] == "approval.plugin.install.approve"]
    assert approved and approved[-1]["details"]["evidence"]["software"] is True

    # Its private key is sealed, not lying in a file: the key the daemon enrolled
    # opens only through the vault, and its bytes are nowhere in the state file.
    store = DemoAuthenticatorStore(load_config(daemon.env))
    try:
        device = store.load()
    finally:
        store.close()
    [credential] = device.credentials.values()
    assert credential.credential_id.hex() == enrolled["credential_id"]
    raw = (daemon.home / STATE_FILE).read_bytes()
    assert device.export_state() not in raw
    scalar = credential.private_key.private_numbers().private_value.to_bytes(32, "big")
    assert scalar not in raw


def test_software_key_queued_while_allowed_is_not_added_once_disallowed(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    daemon = make_daemon("late", ALLOW)
    owner = Owner(daemon)
    owner.init()
    owner.enroll("usb key")
    owner.session("biometric")
    queued = owner.enroll("demo", _demo_key())
    daemon.stop()
    daemon.config_path.write_text("")
    daemon.start()
    with pytest.raises(SoftwareAuthenticatorRefused):
        owner.approve(str(queued["approval_id"]))
    assert [c["software"] for c in daemon.client().credentials()] == [False]
    refused = _entries(daemon, "approval.credential.add.approve")[-1]
    assert refused["decision"] == "deny"
    assert refused["details"]["code"] == "software_authenticator_refused"
