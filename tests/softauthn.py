"""The software CTAP2 authenticator for tests (it lives in the package:
:mod:`pacd.presence.software_authenticator`, where the demo authenticator uses it).

Here it stands in for a *hardware* key: it states the model :data:`SOFT_AAGUID`,
not the software authenticator's own AAGUID, so a daemon treats its credentials
like any USB key's. Tests of the demo authenticator pass
``aaguid=SOFTWARE_AUTHENTICATOR_AAGUID``. :class:`ScriptedUser` is the person
at the keyboard for python-fido2's prompts.
"""

from __future__ import annotations

from typing import Any

from fido2.client import UserInteraction

from pacd.presence.software_authenticator import (
    PIN_RETRIES,
    SOFTWARE_AUTHENTICATOR_AAGUID,
    CallLog,
    SoftCredential,
)
from pacd.presence.software_authenticator import SoftAuthenticator as _SoftwareAuthenticator

__all__ = ["PIN_RETRIES", "SOFTWARE_AUTHENTICATOR_AAGUID", "SOFT_AAGUID", "CallLog",
           "ScriptedUser", "SoftAuthenticator", "SoftCredential"]

SOFT_AAGUID = bytes.fromhex("7061636473667461757468656e746963")  # "pacdsftauthentic"


class SoftAuthenticator(_SoftwareAuthenticator):
    """A software key that says it is a hardware model (:data:`SOFT_AAGUID`) unless
    given ``aaguid``."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("aaguid", SOFT_AAGUID)
        super().__init__(**options)


class ScriptedUser(UserInteraction):
    """The person at the keyboard, for python-fido2's ``UserInteraction`` hooks:
    answers PIN prompts from a script and records what they were asked."""

    def __init__(self, pins: list[str | None] | None = None) -> None:
        self.pins = list(pins or [])
        self.prompts: list[str] = []

    def prompt_up(self) -> None:
        self.prompts.append("touch")

    def request_pin(self, permissions: Any, rp_id: str | None) -> str | None:
        self.prompts.append("pin")
        return self.pins.pop(0) if self.pins else None

    def request_uv(self, permissions: Any, rp_id: str | None) -> bool:
        self.prompts.append("uv")
        return True
