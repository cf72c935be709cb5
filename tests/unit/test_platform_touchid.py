"""Touch ID sessions through the platform-session resource, in process.

The resource (:class:`pacd.api.resources.platform.PlatformSessions`) gets the
real owner registry, clock, token service and configuration; only the Secure
Enclave key's pyobjc modules are replaced (the same stand-ins the verifier's
own tests use), so the signature is checked by pacd exactly as on a Mac.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from pacd.api.resources.platform import PlatformSessions
from pacd.api.services import Services
from pacd.config import load_config
from pacd.core.models import SecurityLevel
from pacd.errors import PresenceFailed, PresenceMethodUnavailable, PresenceRequired
from pacd.presence.clock import SettableClock
from pacd.presence.macos import SecureEnclaveKey, TouchIdVerifier
from pacd.presence.owner import OwnerRegistry
from pacd.presence.tokens import TokenService
from pacd.store import Store
from tests.unit.test_presence_platform import FakeLocalAuthentication, FakeSecurity

Mac = tuple[FakeSecurity, FakeLocalAuthentication]


@pytest.fixture
def mac() -> Mac:
    return FakeSecurity(), FakeLocalAuthentication()


@pytest.fixture
def services(tmp_path: Path) -> Services:
    store = Store(tmp_path / "state.sqlite3")
    owners = OwnerRegistry(store)
    owners.create_owner("Ada", 1.0)
    clock = SettableClock()
    config = dataclasses.replace(load_config({"PACD_HOME": str(tmp_path / "home")}),
                                 platform_presence=("touchid",),
                                 platform_presence_timeout_s=0.3)
    # Only the parts the resource reads; each one is the real class.
    return cast(Services, SimpleNamespace(owners=owners, clock=clock, config=config,
                                          tokens=TokenService(store, clock)))


def _sessions(services: Services, mac: Mac, enrolled: bool = True) -> PlatformSessions:
    def key() -> SecureEnclaveKey:
        return SecureEnclaveKey(*mac)

    if enrolled:
        TouchIdVerifier(services.owners, services.clock, key()).enroll("this Mac")
    return PlatformSessions(services, touchid_key=key)


def _open(sessions: PlatformSessions, level: SecurityLevel) -> str:
    """What the route does after its checks: verify, grant, issue."""
    verified = asyncio.run(sessions._verify("touchid"))
    granted = sessions._grant(verified, level)
    return sessions.services.tokens.issue(granted).token


def test_touch_signed_by_the_enrolled_key_opens_a_biometric_session(
        services: Services, mac: Mac) -> None:
    sessions = _sessions(services, mac)
    asyncio.run(sessions._check_allowed("touchid"))
    token = _open(sessions, SecurityLevel.biometric)
    assert services.tokens.check(token, SecurityLevel.biometric).level == SecurityLevel.biometric
    assert mac[1].reasons == ["confirm it is you"]  # the Mac's own prompt was shown once
    # A session is biometric at most, even though Touch ID signed something.
    with pytest.raises(PresenceRequired):
        services.tokens.check(token, SecurityLevel.carbonProof)


@pytest.mark.parametrize("finger", ["cancel", "wrong", "hang"])
def test_cancelled_or_failed_touch_issues_no_token(services: Services, mac: Mac,
                                                   finger: str) -> None:
    sessions = _sessions(services, mac)
    mac[0].finger = finger
    with pytest.raises(PresenceFailed):
        _open(sessions, SecurityLevel.biometric)
    assert not sessions._in_use.locked()  # the next request may ask again


def test_signature_from_a_key_pacd_never_enrolled_is_refused_before_any_prompt(
        services: Services, mac: Mac) -> None:
    sessions = _sessions(services, mac, enrolled=False)
    SecureEnclaveKey(*mac).create()  # a key in the Enclave, but not the owner's credential
    with pytest.raises(PresenceMethodUnavailable, match="not enrolled"):
        _open(sessions, SecurityLevel.biometric)
    assert mac[1].reasons == []


def test_touchid_off_macos_is_unavailable_with_its_reason(services: Services) -> None:
    sessions = PlatformSessions(services)  # the real pyobjc boundary: absent here
    with pytest.raises(PresenceMethodUnavailable, match="Touch ID: not macOS"):
        asyncio.run(sessions._verify("touchid"))
