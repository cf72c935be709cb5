"""Windows Hello through the system WebAuthn API (webauthn.dll).

Windows Hello is a WebAuthn platform authenticator, so it needs nothing
special on the daemon side: it is enrolled and verified by the relying party
like any FIDO2 credential (``kind="platform"``, user verification required).
This module runs the ceremony through python-fido2's ``WindowsClient``; the
client is injected so the path can be exercised off Windows.

python-fido2's client (with its attestation formats and cryptography's X.509,
about 75 ms) is imported by the ceremony, not with this module: the daemon asks
:func:`windows_hello_availability` at every start, on every platform.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from pacd.errors import PresenceUnavailable
from pacd.presence.evidence import VerifiedPresence
from pacd.presence.owner import Credential
from pacd.presence.rp import RelyingParty
from pacd.presence.verifiers import Availability

if TYPE_CHECKING:
    from fido2.client import WebAuthnClient

NAME = "windows-hello"
ClientFactory = Callable[[str], "WebAuthnClient"]


def windows_hello_availability() -> Availability:
    if sys.platform != "win32":
        return Availability(False, "Windows Hello: not Windows", NAME)
    from pacd.presence.client import windows_client_available

    if not windows_client_available():
        return Availability(
            False, "Windows Hello: the WebAuthn API needs Windows 10 1903 or later", NAME
        )
    return Availability(True, "Windows WebAuthn API available (Windows Hello and USB keys)", NAME)


def _windows_client(origin: str) -> WebAuthnClient:
    from fido2.client import DefaultClientDataCollector

    from pacd.presence.client import windows_client_available

    if not windows_client_available():
        raise PresenceUnavailable("Windows Hello is not available here")
    from fido2.client.windows import WindowsClient

    client: WebAuthnClient = WindowsClient(DefaultClientDataCollector(origin))
    return client


class WindowsHelloVerifier:
    name = NAME

    def __init__(self, rp: RelyingParty, client_factory: ClientFactory | None = None) -> None:
        self.rp = rp
        self._factory = client_factory or _windows_client
        self._injected = client_factory is not None

    def availability(self) -> Availability:
        if self._injected:
            return Availability(True, "WebAuthn client supplied", self.name)
        return windows_hello_availability()

    def enroll(self, label: str, timeout_s: float = 60) -> Credential:
        from fido2.client import UserInteraction

        from pacd.presence import client as ceremony

        begun = self.rp.begin_registration(label, platform=True)
        response = ceremony.register(
            begun["publicKey"], self.rp.origin, UserInteraction(), timeout_s=timeout_s,
            client=self._factory(self.rp.origin),
        )
        return self.rp.complete_registration(begun["registration_id"], response)

    def verify(self, challenge: bytes, timeout_s: float) -> VerifiedPresence:
        from fido2.client import UserInteraction

        from pacd.presence import client as ceremony

        options = self.rp.request_options_for_challenge(challenge, require_uv=True)
        response = ceremony.authenticate(
            options, self.rp.origin, UserInteraction(), timeout_s=timeout_s,
            client=self._factory(self.rp.origin),
        )
        verified = self.rp.verify_for_challenge(challenge, response, require_uv=True)
        return VerifiedPresence(
            level=verified.level,
            credential_id=verified.credential_id,
            user_present=verified.user_present,
            user_verified=verified.user_verified,
            method=self.name,
            challenge=challenge,
        )
