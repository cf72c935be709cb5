"""Platform presence verifiers behind one interface.

A verifier proves the owner is present with the machine's own biometrics:
fprintd on Linux (run by the daemon over the system bus), Touch ID through a
Secure Enclave key on macOS, Windows Hello through the WebAuthn API on Windows.
Each one can say whether it is usable here and, if not, why. The verifiers
import this module and nothing here imports them (the report of every method
is :mod:`pacd.presence.report`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pacd.presence.evidence import VerifiedPresence


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str
    name: str = ""

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "available": self.available, "reason": self.reason}


class PresenceVerifier(Protocol):
    name: str

    def availability(self) -> Availability: ...

    def verify(self, challenge: bytes, timeout_s: float) -> VerifiedPresence: ...
