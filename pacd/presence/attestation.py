"""Which authenticators may be enrolled: the owner's attestation policy.

``attestation = "none"`` (the default) asks the authenticator for no
attestation and enrols any key. ``attestation = "direct"`` asks for it
(conveyance ``direct``) and enrols a key only if its attestation statement is
present and verifies, and the AAGUID it names is in ``allowed_aaguids``.

What this can and cannot prove: pacd holds no vendor root certificates, so a
statement that verifies shows that the new key's data was signed as the format
requires — not that a vendor made the authenticator. An authenticator that
lies (a software one, say) can name any AAGUID. The list keeps out keys the
owner did not choose; what keeps out a key an attacker chose is that adding any
key after the first needs a carbonProof approval signed by an enrolled one.

Software authenticators: pacd's own (the demo authenticator,
:mod:`pacd.presence.software_authenticator`) states the AAGUID
:data:`SOFTWARE_AUTHENTICATOR_AAGUID`. A credential naming it is ``software``:
listed so, audited so, and enrolled or used only while the owner's config sets
``allow_software_authenticator`` (:func:`check_software_allowed`). This is a
label an honest authenticator puts on itself, not a proof: another software
authenticator can name a hardware model's AAGUID, which only
``attestation = "direct"`` with ``allowed_aaguids`` narrows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pacd.errors import Forbidden, SoftwareAuthenticatorRefused

if TYPE_CHECKING:
    from fido2.webauthn import AttestationConveyancePreference, AttestationObject

MODES = ("none", "direct")

#: the model pacd's software (demo) authenticator states: ASCII "pacdsoftwaredemo"
SOFTWARE_AUTHENTICATOR_AAGUID = uuid.UUID("70616364-736f-6674-7761-726564656d6f").bytes


def is_software_authenticator(aaguid: bytes) -> bool:
    """Whether a credential of this model is pacd's software authenticator's."""
    return aaguid == SOFTWARE_AUTHENTICATOR_AAGUID


def check_software_allowed(aaguid: bytes, allowed: bool, doing: str) -> None:
    """Refuse a software authenticator's credential unless the owner allowed them."""
    if is_software_authenticator(aaguid) and not allowed:
        raise SoftwareAuthenticatorRefused(
            f"{doing} refused: this is pacd's software (demo) authenticator, which is not "
            "secure and is accepted only with allow_software_authenticator = true in "
            "config.toml (make run sets it for its development daemon); use a security key",
            aaguid=aaguid_text(aaguid))


def aaguid_bytes(text: str) -> bytes:
    """An AAGUID as written in config: a UUID, with or without dashes."""
    return uuid.UUID(text.strip()).bytes


def aaguid_text(aaguid: bytes) -> str:
    """The usual written form of an AAGUID (as vendors and the FIDO metadata list it)."""
    return str(uuid.UUID(bytes=aaguid)) if len(aaguid) == 16 else aaguid.hex()


@dataclass(frozen=True)
class AttestationPolicy:
    mode: str = "none"
    allowed_aaguids: frozenset[bytes] = frozenset()

    @classmethod
    def from_config(cls, mode: str, allowed: Iterable[str]) -> AttestationPolicy:
        if mode not in MODES:
            raise ValueError(f"attestation must be one of {', '.join(MODES)}")
        return cls(mode, frozenset(aaguid_bytes(a) for a in allowed))

    @property
    def conveyance(self) -> AttestationConveyancePreference | None:
        """What the creation options ask the authenticator for."""
        from fido2.webauthn import AttestationConveyancePreference  # lazy: see pacd.presence.rp

        return AttestationConveyancePreference.DIRECT if self.mode == "direct" else None

    def check(self, attestation: AttestationObject, client_data_hash: bytes) -> str:
        """Raise :class:`Forbidden` unless this new key may be enrolled; returns its
        attestation format."""
        fmt = str(attestation.fmt)
        if self.mode == "none":
            return fmt
        if fmt == "none":
            raise Forbidden(
                "registration refused: the attestation policy (attestation = \"direct\") "
                "needs an attestation statement and this authenticator gave none")
        # Statement verifiers pull in cryptography's X.509 (tens of milliseconds):
        # imported by the first enrolment that needs one, not at daemon start.
        from fido2.attestation.base import Attestation, InvalidAttestation

        try:
            Attestation.for_type(fmt)().verify(attestation.att_stmt, attestation.auth_data,
                                               client_data_hash)
        except (InvalidAttestation, ValueError, KeyError, TypeError) as exc:
            raise Forbidden(
                f"registration refused: the {fmt!r} attestation statement does not verify"
                f" ({type(exc).__name__})") from exc
        attested = attestation.auth_data.credential_data
        aaguid = b"" if attested is None else bytes(attested.aaguid)
        if aaguid not in self.allowed_aaguids:
            raise Forbidden(
                f"registration refused: authenticator model {aaguid_text(aaguid)} (AAGUID) is "
                "not in allowed_aaguids of the attestation policy", aaguid=aaguid_text(aaguid))
        return fmt

    def allows_aaguid(self, aaguid: bytes) -> bool:
        """The part of :meth:`check` that can be asked again later (at approval)."""
        return self.mode == "none" or aaguid in self.allowed_aaguids
