"""What a verified presence proof established, whatever produced it."""

from __future__ import annotations

from dataclasses import dataclass

from pacd.core.models import SecurityLevel


@dataclass(frozen=True)
class VerifiedPresence:
    """The outcome of a presence check that passed.

    ``credential_id`` names the enrolled credential that signed (empty for a
    platform biometric that signs nothing, such as fprintd). ``method`` says
    which path produced it: ``fido2``, ``fprintd``, ``touchid``.
    """

    level: SecurityLevel
    credential_id: bytes
    user_present: bool
    user_verified: bool
    method: str = "fido2"
    #: the challenge the proof was bound to (what was signed), when there was one
    challenge: bytes | None = None
    #: the credential that signed is pacd's software (demo) authenticator's
    software: bool = False
