"""Sessions the daemon proves itself with fprintd (``POST /v1/sessions/platform``).

The real daemon talks real D-Bus (a private ``dbus-daemon``) to the fprintd
mock; only fprintd and the fingerprint reader behind it are simulated.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from pacd.core.models import SecurityLevel
from pacd.core.rules import Action
from pacd.errors import (
    Forbidden,
    InvalidRequest,
    PacdError,
    PresenceFailed,
    PresenceMethodUnavailable,
    PresenceRequired,
    Unauthorized,
)
from pacd.presence.levels import require
from tests.fprintd_mock import FprintdMock, PrivateBus, bus, fprintd
from tests.integration.harness import EXAMPLES, DaemonProcess, Owner, plugin, spec_with_plugins

__all__ = ["bus", "fprintd"]  # the shared fixtures this module uses

PLATFORM = "/v1/sessions/platform"
FPRINTD = {"method": "fprintd", "level": "biometric"}
ENABLED = {"platform_presence": ["fprintd"], "platform_presence_timeout_s": 2.0}


def _daemon(make: Callable[..., DaemonProcess], bus_address: str,
            settings: dict[str, Any] | None = None, owner: bool = True) -> DaemonProcess:
    # The bus comes from the config file only (the environment's is refused).
    daemon = make(settings={**(ENABLED if settings is None else settings),
                            "fprintd_bus_address": bus_address})
    if owner:
        Owner(daemon).init("Alice")
    return daemon


def _entries(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [e for e in daemon.audit() if e["action"] == "session.create"]


def _home_spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads((EXAMPLES / "specs" / "home.json").read_text())
    return spec


def test_match_opens_a_biometric_session_that_creates_a_container(
        make_daemon: Callable[..., DaemonProcess], fprintd: FprintdMock) -> None:
    daemon = _daemon(make_daemon, fprintd.bus_address)
    # The owner never enrolled a security key: the reader is their only presence.
    assert daemon.client().status()["owner"]["credentials"] == 0
    with pytest.raises(Unauthorized):
        daemon.client().request("POST", "/v1/containers", _home_spec())

    token = daemon.client().request("POST", PLATFORM, FPRINTD)
    assert token["level"] == "biometric" and token["token"] and token["expires_at"]
    assert "Claim" in fprintd.calls and fprintd.calls[-2:] == ["VerifyStop", "Release"]
    assert not fprintd.device_claimed

    session = daemon.client(token["token"]).request("GET", "/v1/sessions/current")
    assert session["level"] == "biometric"
    created = daemon.client(token["token"]).request("POST", "/v1/containers", _home_spec())
    assert created["name"] == "home"

    allowed = [e for e in _entries(daemon) if e["decision"] == "allow"]
    assert len(allowed) == 1
    assert allowed[0]["target"] == session["token_id"]
    assert allowed[0]["details"]["method"] == "fprintd"
    create_entry = [e for e in daemon.audit() if e["action"] == "container.create"]
    assert create_entry[-1]["details"]["token_id"] == session["token_id"]


def test_no_match_is_refused_and_audited(make_daemon: Callable[..., DaemonProcess],
                                         fprintd: FprintdMock) -> None:
    daemon = _daemon(make_daemon, fprintd.bus_address)
    fprintd.outcome = "no-match"
    with pytest.raises(PresenceFailed, match="did not match") as refused:
        daemon.client().request("POST", PLATFORM, FPRINTD)
    assert refused.value.code == "presence_failed"
    assert not fprintd.device_claimed
    entries = _entries(daemon)
    assert [e["decision"] for e in entries] == ["deny"]
    assert entries[0]["details"]["code"] == "presence_failed"
    assert entries[0]["details"]["status"] == 403
    assert entries[0]["details"]["method"] == "fprintd"


def test_busy_reader_is_unavailable_and_audited(make_daemon: Callable[..., DaemonProcess],
                                                fprintd: FprintdMock) -> None:
    daemon = _daemon(make_daemon, fprintd.bus_address)
    fprintd.busy = True
    with pytest.raises(PacdError, match="busy") as refused:
        daemon.client().request("POST", PLATFORM, FPRINTD)
    assert refused.value.code == "presence_unavailable"
    entries = _entries(daemon)
    assert [e["decision"] for e in entries] == ["deny"]
    assert entries[0]["details"]["status"] == PresenceMethodUnavailable.status == 503
    assert "VerifyStart:any" not in fprintd.calls


def test_no_finger_in_time_is_refused(make_daemon: Callable[..., DaemonProcess],
                                      fprintd: FprintdMock) -> None:
    daemon = _daemon(make_daemon, fprintd.bus_address)
    fprintd.outcome = "silent"
    started = time.monotonic()
    with pytest.raises(PresenceFailed, match="no finger on the reader within 2 s"):
        daemon.client().request("POST", PLATFORM, FPRINTD)
    assert time.monotonic() - started < 10
    assert fprintd.calls[-2:] == ["VerifyStop", "Release"]
    assert [e["decision"] for e in _entries(daemon)] == ["deny"]


def test_one_verification_at_a_time(make_daemon: Callable[..., DaemonProcess],
                                    fprintd: FprintdMock) -> None:
    daemon = _daemon(make_daemon, fprintd.bus_address)
    fprintd.outcome = "silent"
    first: list[BaseException] = []

    def waiting() -> None:
        try:
            daemon.client().request("POST", PLATFORM, FPRINTD)
        except PacdError as exc:
            first.append(exc)

    thread = threading.Thread(target=waiting)
    thread.start()
    deadline = time.monotonic() + 5
    while "VerifyStart:any" not in fprintd.calls and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        with pytest.raises(PacdError, match="already in progress") as second:
            daemon.client().request("POST", PLATFORM, FPRINTD)
        assert second.value.code == "presence_unavailable"
    finally:
        thread.join(15)
    assert [type(e) for e in first] == [PresenceFailed]  # the first one timed out
    assert fprintd.calls.count("Claim") == 1


def test_fprintd_missing_is_unavailable(make_daemon: Callable[..., DaemonProcess],
                                        bus: PrivateBus) -> None:
    daemon = _daemon(make_daemon, bus.address)  # a bus without fprintd on it
    with pytest.raises(PacdError, match="not on the system bus") as refused:
        daemon.client().request("POST", PLATFORM, FPRINTD)
    assert refused.value.code == "presence_unavailable"
    assert [e["details"]["status"] for e in _entries(daemon)] == [503]


def test_not_enabled_fails_closed(make_daemon: Callable[..., DaemonProcess],
                                  fprintd: FprintdMock) -> None:
    daemon = _daemon(make_daemon, fprintd.bus_address, settings={})
    with pytest.raises(Forbidden, match=r'platform_presence = \["fprintd"\]') as refused:
        daemon.client().request("POST", PLATFORM, FPRINTD)
    assert refused.value.code == "forbidden"
    # Nobody was asked to touch anything (the start-up probe only lists fingers).
    assert "Claim" not in fprintd.calls
    entries = _entries(daemon)
    assert [(e["decision"], e["details"]["status"]) for e in entries] == [("deny", 403)]
    fprintd_status = [p for p in daemon.client().status()["presence_methods"]
                      if p["name"] == "fprintd"]
    assert fprintd_status[0]["available"] is True
    assert "not enabled for sessions" in fprintd_status[0]["detail"]


def test_no_owner_fails_closed(make_daemon: Callable[..., DaemonProcess],
                               fprintd: FprintdMock) -> None:
    daemon = _daemon(make_daemon, fprintd.bus_address, owner=False)
    with pytest.raises(Forbidden, match="pacd init"):
        daemon.client().request("POST", PLATFORM, FPRINTD)
    assert "Claim" not in fprintd.calls
    assert [e["decision"] for e in _entries(daemon)] == ["deny"]


def test_session_is_biometric_at_most(make_daemon: Callable[..., DaemonProcess],
                                      fprintd: FprintdMock) -> None:
    daemon = _daemon(make_daemon, fprintd.bus_address)
    with pytest.raises(InvalidRequest, match="level"):
        daemon.client().request("POST", PLATFORM, {"method": "fprintd", "level": "carbonProof"})
    with pytest.raises(InvalidRequest, match="method"):
        daemon.client().request("POST", PLATFORM, {"method": "windows-hello",
                                                   "level": "biometric"})
    assert "Claim" not in fprintd.calls

    token = daemon.client().request("POST", PLATFORM, FPRINTD)
    level = SecurityLevel(daemon.client(token["token"]).request(
        "GET", "/v1/sessions/current")["level"])
    assert level == SecurityLevel.biometric
    # What that level buys, by the daemon's own rules: never a carbonProof action.
    with pytest.raises(PresenceRequired):
        require(level, Action.weaken_policy)

    # An approval is approved by an assertion over its own payload, never by a
    # token: the fingerprint session cannot stand in for that ceremony.
    authed = daemon.client(token["token"])
    container = authed.request("POST", "/v1/containers", spec_with_plugins())
    accepted = authed.request("POST", f"/v1/containers/{container['id']}/plugins",
                              {"agent": "writer", "schema": plugin("text-formatter")})
    with pytest.raises(InvalidRequest, match="credential"):
        authed.request("POST", f"/v1/approvals/{accepted['approval_id']}/approve", {})
    detail = authed.request("GET", f"/v1/approvals/{accepted['approval_id']}")
    assert detail["state"] == "pending"
    # Only the ceremony approves it: a key, enrolled and used over the payload itself.
    owner = Owner(daemon)
    owner.token = token["token"]
    owner.enroll()
    done = authed.request("POST", f"/v1/approvals/{accepted['approval_id']}/approve",
                          {"credential": owner.sign_approval(accepted["approval_id"])})
    assert done["state"] == "approved"


def test_enhanced_on_request(make_daemon: Callable[..., DaemonProcess],
                             fprintd: FprintdMock) -> None:
    daemon = _daemon(make_daemon, fprintd.bus_address)
    token = daemon.client().request("POST", PLATFORM, {"method": "fprintd", "level": "enhanced"})
    assert token["level"] == "enhanced"
    with pytest.raises(PresenceRequired):
        daemon.client(token["token"]).request("POST", "/v1/containers", _home_spec())


def test_cli_session_platform_caches_the_token(make_daemon: Callable[..., DaemonProcess],
                                               fprintd: FprintdMock) -> None:
    daemon = _daemon(make_daemon, fprintd.bus_address)
    opened = daemon.cli("session", "--platform", "fprintd", "--json")
    assert opened.returncode == 0, opened.stderr
    assert "Touch the fingerprint reader" in opened.stderr
    assert json.loads(opened.stdout)["level"] == "biometric"
    cached = json.loads((daemon.socket.parent / "client-token.json").read_text())
    assert cached["level"] == "biometric"

    created = daemon.cli("container", "create", str(EXAMPLES / "specs" / "home.json"), "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["name"] == "home"

    status = daemon.cli("status")
    assert status.returncode == 0, status.stderr
    assert "enabled for sessions (pacd session --platform fprintd)" in status.stdout

    fprintd.outcome = "no-match"
    refused = daemon.cli("session", "--platform", "fprintd")
    assert refused.returncode == PresenceFailed.exit_code
    assert "did not match" in refused.stderr


def test_touchid_off_macos_is_unavailable_says_why_and_asks_nobody(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    daemon = make_daemon(settings={"platform_presence": ["touchid"]})
    Owner(daemon).init("Alice")
    touchid = [p for p in daemon.client().status()["presence_methods"]
               if p["name"] == "touchid"]
    assert touchid[0]["available"] is False
    assert "Touch ID: not macOS" in touchid[0]["detail"]
    assert "enabled for sessions" in touchid[0]["detail"]
    with pytest.raises(PacdError, match="Touch ID: not macOS") as refused:
        daemon.client().request("POST", PLATFORM, {"method": "touchid", "level": "biometric"})
    assert refused.value.code == "presence_unavailable"
    entries = _entries(daemon)
    assert [(e["decision"], e["details"]["method"], e["details"]["status"])
            for e in entries] == [("deny", "touchid", 503)]
