"""Windows Hello through the system WebAuthn API (webauthn.dll).

Windows Hello is a WebAuthn platform authenticator, so it needs nothing
special on the daemon side: it is enrolled and verified by the relying party
like any FIDO2 credential (``kind="platform"``, user verification required).
This module runs the ceremony through python-fido2's ``WindowsClient``; the
client is injected so the path can be exercised off Windows.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from fido2.client import DefaultClientDataCollector, UserInteraction, WebAuthnClient

from pacd.errors import PresenceUnavailable
from pacd.presence import client as ceremony
from pacd.presence.evidence import VerifiedPresence
from pacd.presence.owner import Credential
from pacd.presence.rp import RelyingParty
from pacd.presence.verifiers import Availability

NAME = "windows-hello"
ClientFactory = Callable[[str], WebAuthnClient]


def windows_hello_availability() -> Availability:
    if sys.platform != "win32":
        return Availability(False, "Windows Hello: not Windows", NAME)
    if not ceremony.windows_client_available():
        return Availability(
            False, "Windows Hello: the WebAuthn API needs Windows 10 1903 or later", NAME
        )
    return Availability(True, "Windows WebAuthn API available (Windows Hello and USB keys)", NAME)


def _windows_client(origin: str) -> WebAuthnClient:
    if not ceremony.windows_client_available():
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
        begun = self.rp.begin_registration(label, platform=True)
        response = ceremony.register(
            begun["publicKey"], self.rp.origin, UserInteraction(), timeout_s=timeout_s,
            client=self._factory(self.rp.origin),
        )
        return self.rp.complete_registration(begun["registration_id"], response)

    def verify(self, challenge: bytes, timeout_s: float) -> VerifiedPresence:
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
