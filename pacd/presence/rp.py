"""The WebAuthn relying party: the daemon side of every presence ceremony.

Built on python-fido2's ``Fido2Server``, which checks the client data type,
origin, challenge, RP id hash, the UP/UV flags and the signature. On top of it
this module enforces what the library leaves to the caller:

- every challenge is single-use and short-lived;
- the signature counter must move forward (a key that uses counters and
  presents one that did not grow may be a clone: refused and reported through
  ``on_refusal("possible_cloned_authenticator", ...)`` so the daemon audits it);
- the origin must be exactly the one this daemon reports, not merely one the
  RP id would allow.

Where ceremony state lives: registrations and sessions keep their random
challenge in memory, keyed by an unguessable id, with a monotonic deadline. A
ceremony cannot outlive the process that began it — after a restart the client
simply begins again — so nothing stale can be completed later, a crash leaves no
usable challenge on disk, and a wall-clock change cannot stretch a deadline.

A registration remembers how its begin was authorised: by a session of some
level, or by nothing because no credential existed yet (:data:`FIRST_CREDENTIAL`,
how the very first key is enrolled). The latter is honoured only while the
owner still has no credential: it is checked again at completion, in the
transaction that adds the key, and enrolling any key drops every such pending
registration — otherwise a process that began while nothing was enrolled could
keep its registration alive and add a key of its own after the owner's.

Only the first key is stored by the registration itself
(:meth:`RelyingParty.enrol_first`). Any later one is verified here
(:meth:`RelyingParty.verify_registration`) and then waits for an approval
signed by a key already enrolled; its executor stores it with
:meth:`RelyingParty.add_approved`. The owner's attestation policy
(:mod:`pacd.presence.attestation`) is checked when the registration is
verified, and its AAGUID list once more when an approved key is stored.
Credentials of pacd's software authenticator are refused at registration,
at storage and at every assertion unless ``allow_software`` (the owner's
``allow_software_authenticator``) says otherwise.
Approval challenges are different: they are not random but the digest of the
action, so the record that one was *used* is written to the state database in
the same transaction that advances the counter, and a replay is refused even
after a restart.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pacd.core.models import SecurityLevel
from pacd.errors import (
    ClonedAuthenticator,
    Forbidden,
    InvalidRequest,
    NotFound,
    PresenceFailed,
    PresenceRequired,
)
from pacd.presence.attestation import AttestationPolicy, aaguid_text, check_software_allowed
from pacd.presence.clock import Clock
from pacd.presence.evidence import VerifiedPresence
from pacd.presence.owner import MAX_LABEL, Credential, CredentialKind, OwnerRegistry, check_text
from pacd.store import Store

if TYPE_CHECKING:
    # python-fido2 is imported where a ceremony uses it, not at daemon start
    # (fido2.webauthn and fido2.cose with cryptography's public-key modules).
    from fido2.cose import CoseKey
    from fido2.server import Fido2Server
    from fido2.webauthn import (
        AttestedCredentialData,
        AuthenticatorData,
        PublicKeyCredentialDescriptor,
        UserVerificationRequirement,
    )

__all__ = ["FIRST_CREDENTIAL", "EnrolmentHook", "RefusalHook", "Registration", "RelyingParty",
           "VerifiedPresence"]

RefusalHook = Callable[[str, dict[str, Any]], None]
#: called with the new credential inside the transaction that stores it (its audit entry)
EnrolmentHook = Callable[[Credential], None]

#: how a registration begun with no session was authorised: only as the owner's first key
FIRST_CREDENTIAL = "first_credential"

RP_NAME = "pacd"
MAX_PENDING = 64
#: unfinished ceremonies one client (peer process) may hold; its oldest goes first
MAX_PENDING_PER_CLIENT = 4
MAX_ISSUED_APPROVAL_CHALLENGES = 256

_SCHEMA = """
CREATE TABLE presence_used_challenges (
    challenge BLOB PRIMARY KEY,
    credential_id BLOB NOT NULL,
    used_at REAL NOT NULL
)
"""


@dataclass
class _OpenCeremony:
    kind: str  # "registration" | "session"
    state: dict[str, Any]
    deadline: float  # monotonic
    level: SecurityLevel | None = None
    label: str = ""
    credential_kind: CredentialKind = "fido2"
    #: registrations: the session level that authorised begin, or FIRST_CREDENTIAL
    authorised: str = FIRST_CREDENTIAL
    #: who began it (the peer process), for the per-client bound
    client: str = ""


@dataclass(frozen=True)
class Registration:
    """A new key whose registration verified, not yet enrolled."""

    credential: Credential
    #: how the begin was authorised: a session level, or FIRST_CREDENTIAL
    authorised: str
    #: the attestation statement's format ("none", "packed", ...)
    attestation_format: str


class RelyingParty:
    def __init__(  # noqa: PLR0917
        self,
        store: Store,
        owners: OwnerRegistry,
        rp_id: str,
        origin: str,
        clock: Clock,
        challenge_ttl_s: float = 120,
        on_refusal: RefusalHook | None = None,
        carbon_proof_max_age_s: float = 120,
        attestation: AttestationPolicy | None = None,
        allow_software: bool = False,
    ) -> None:
        if challenge_ttl_s <= 0 or carbon_proof_max_age_s <= 0:
            raise ValueError("challenge lifetimes must be positive")
        self.store = store
        self.owners = owners
        self.rp_id = rp_id
        self.origin = origin
        self.clock = clock
        self.challenge_ttl_s = challenge_ttl_s
        self.carbon_proof_max_age_s = carbon_proof_max_age_s
        self.on_refusal = on_refusal
        self.attestation = attestation or AttestationPolicy()
        self.allow_software = allow_software
        store.migrate("presence_rp", 1, _SCHEMA)
        self._fido2: Fido2Server | None = None
        self._fido2_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: dict[str, _OpenCeremony] = {}
        self._issued: OrderedDict[bytes, float] = OrderedDict()

    @property
    def _server(self) -> Fido2Server:
        """python-fido2's server, made on the first ceremony.

        ``fido2.server`` and the attestation verifiers it brings load tens of
        milliseconds of modules (cryptography's X.509 among them) that a daemon
        answering only tokens and status never needs: imported here, not at start.
        """
        with self._fido2_lock:
            if self._fido2 is None:
                from fido2.server import Fido2Server
                from fido2.webauthn import PublicKeyCredentialRpEntity

                # Exact origin match: the daemon tells clients which origin to use,
                # so anything else is not one of our clients.
                server = Fido2Server(
                    PublicKeyCredentialRpEntity(name=RP_NAME, id=self.rp_id),
                    attestation=self.attestation.conveyance,
                    verify_origin=lambda candidate: candidate == self.origin,
                )
                # The client shows this as its own deadline; the server enforces ours.
                server.timeout = int(self.challenge_ttl_s * 1000)  # type: ignore[assignment]
                self._fido2 = server
            return self._fido2

    # --- registration -------------------------------------------------------

    def begin_registration(self, label: str, platform: bool = False,
                           authorised: str = FIRST_CREDENTIAL) -> dict[str, Any]:
        """Creation options for a new credential; ``platform`` asks for a built-in
        authenticator (Windows Hello, Touch ID) and requires user verification.

        ``authorised`` is how the caller allowed this enrolment: the level of the
        session it checked, or :data:`FIRST_CREDENTIAL` (the default, the one that
        allows least) when no credential existed and none was needed.
        """
        owner = self.owners.require_owner()
        label = check_text(label, "credential label", MAX_LABEL)
        if not isinstance(authorised, str) or not authorised:
            raise InvalidRequest("a registration must say how it was authorised")
        from fido2.webauthn import (
            AuthenticatorAttachment,
            PublicKeyCredentialUserEntity,
            ResidentKeyRequirement,
            UserVerificationRequirement,
        )

        existing = [_descriptor(c) for c in self.owners.list_credentials()]
        options, state = self._server.register_begin(
            PublicKeyCredentialUserEntity(
                id=owner.id.encode(), name=owner.name, display_name=owner.name
            ),
            credentials=existing,
            resident_key_requirement=ResidentKeyRequirement.DISCOURAGED,
            user_verification=(
                UserVerificationRequirement.REQUIRED if platform
                else UserVerificationRequirement.PREFERRED
            ),
            authenticator_attachment=AuthenticatorAttachment.PLATFORM if platform else None,
        )
        registration_id = self._remember(
            _OpenCeremony(
                kind="registration",
                state=dict(state),
                deadline=0.0,
                label=label,
                credential_kind="platform" if platform else "fido2",
                authorised=authorised,
            )
        )
        return {
            "publicKey": dict(options)["publicKey"],
            "origin": self.origin,
            "registration_id": registration_id,
        }

    def complete_registration(
        self, registration_id: str, credential: Mapping[str, Any],
        on_enrolled: EnrolmentHook | None = None,
    ) -> Credential:
        """Verify the attestation and store the credential, as the owner's first key.

        ``on_enrolled`` runs inside the transaction that stores it (the daemon
        writes the enrolment's audit entry there): if it raises, nothing is stored.
        """
        return self.enrol_first(self.verify_registration(registration_id, credential),
                                on_enrolled)

    def verify_registration(self, registration_id: str,
                            credential: Mapping[str, Any]) -> Registration:
        """Check a registration (single use) and the attestation policy; store nothing."""
        from fido2 import cbor
        from fido2.cose import UnsupportedKey
        from fido2.webauthn import RegistrationResponse

        pending = self._take(registration_id, "registration")
        try:
            response = RegistrationResponse.from_dict(credential)
        except Exception as exc:
            raise InvalidRequest(
                "credential is not a WebAuthn RegistrationResponseJSON"
            ) from exc
        try:
            auth_data = self._server.register_complete(pending.state, response)
        except ValueError as exc:
            raise PresenceFailed(f"registration refused: {exc}") from exc
        attested = auth_data.credential_data
        if attested is None:
            raise PresenceFailed("registration refused: no attested credential data")
        if isinstance(attested.public_key, UnsupportedKey):
            raise PresenceFailed("registration refused: unsupported key algorithm")
        check_software_allowed(bytes(attested.aaguid), self.allow_software, "registration")
        fmt = self.attestation.check(response.response.attestation_object,
                                     response.response.client_data.hash)
        candidate = Credential(
            credential_id=attested.credential_id,
            public_key=cbor.encode(dict(attested.public_key)),
            sign_count=auth_data.counter,
            aaguid=bytes(attested.aaguid),
            uv_capable=auth_data.is_user_verified(),
            label=pending.label,
            created_at=self.clock.wall(),
            kind=pending.credential_kind,
        )
        return Registration(candidate, pending.authorised, fmt)

    def enrol_first(self, registration: Registration,
                    on_enrolled: EnrolmentHook | None = None) -> Credential:
        """Store ``registration`` if the owner has no key yet; otherwise refuse.

        Checked in the transaction that adds the key, so two first-key
        registrations cannot both see an empty list.
        """
        with self.store.transaction():
            # has_credentials() believes "none" only if the owner's MACed record says so.
            if self.owners.has_credentials():
                if registration.authorised == FIRST_CREDENTIAL:
                    raise PresenceRequired(
                        "a presence credential was enrolled after this registration began: "
                        "adding another key needs a biometric session (pacd session "
                        "--level biometric), then begin again",
                        required_level=SecurityLevel.biometric.value,
                    )
                raise PresenceRequired(
                    "a key is already enrolled: another one is added only by an approval "
                    "signed by an enrolled key (carbonProof)",
                    required_level=SecurityLevel.carbonProof.value,
                )
            stored = self.owners.add_credential(registration.credential)
            if on_enrolled is not None:
                on_enrolled(stored)
        self._drop_unauthorised_registrations()
        return stored

    def add_approved(self, credential: Credential) -> Credential:
        """Store a key whose addition an enrolled key approved (the approval's
        executor, inside its transaction). The AAGUID list is asked again: the
        policy may have changed while the approval waited."""
        check_software_allowed(credential.aaguid, self.allow_software, "adding this key")
        if not self.attestation.allows_aaguid(credential.aaguid):
            raise Forbidden(
                f"authenticator model {aaguid_text(credential.aaguid)} (AAGUID) is no longer "
                "in allowed_aaguids of the attestation policy")
        return self.owners.add_credential(credential)

    # --- sessions (enhanced / biometric) -----------------------------------

    def begin_session(self, level: SecurityLevel | str, client: str = "") -> dict[str, Any]:
        wanted = _session_level(level)
        descriptors = self._allow_list()
        options, state = self._server.authenticate_begin(
            descriptors, user_verification=_uv_requirement(wanted == SecurityLevel.biometric)
        )
        session_id = self._remember(
            _OpenCeremony(kind="session", state=dict(state), deadline=0.0, level=wanted,
                     client=client)
        )
        return {
            "session_id": session_id,
            "publicKey": dict(options)["publicKey"],
            "origin": self.origin,
        }

    def complete_session(self, session_id: str, credential: Mapping[str, Any]) -> VerifiedPresence:
        pending = self._take(session_id, "session")
        assert pending.level is not None
        require_uv = pending.level == SecurityLevel.biometric
        enrolled, auth_data = self._check_assertion(pending.state, credential, require_uv)
        self._commit_counter(enrolled, auth_data, used_challenge=None)
        return VerifiedPresence(
            level=pending.level,
            credential_id=enrolled.credential_id,
            user_present=auth_data.is_user_present(),
            user_verified=auth_data.is_user_verified(),
            software=enrolled.software,
        )

    # --- approvals and carbonProof -----------------------------------------

    def request_options_for_challenge(self, challenge: bytes, require_uv: bool) -> dict[str, Any]:
        """Request options whose challenge is ``challenge`` (the SHA-256 digest of the
        canonical action payload). Handing them out starts the carbonProof clock."""
        _check_challenge(challenge)
        descriptors = self._allow_list()
        options, _state = self._server.authenticate_begin(
            descriptors, user_verification=_uv_requirement(require_uv), challenge=challenge
        )
        with self._lock:
            self._issued[challenge] = self.clock.monotonic()
            self._issued.move_to_end(challenge)
            while len(self._issued) > MAX_ISSUED_APPROVAL_CHALLENGES:
                self._issued.popitem(last=False)
        return {"publicKey": dict(options)["publicKey"], "origin": self.origin}

    def verify_for_challenge(
        self,
        challenge: bytes,
        credential: Mapping[str, Any],
        require_uv: bool,
        carbon_proof: bool = False,
    ) -> VerifiedPresence:
        """Check an assertion over ``challenge``; each challenge is accepted once.

        ``carbon_proof``: the assertion must carry UV and the options for this
        challenge must have been handed out by this process at most
        ``carbon_proof_max_age_s`` ago.
        """
        _check_challenge(challenge)
        if carbon_proof:
            require_uv = True
            with self._lock:
                issued = self._issued.get(challenge)
            if issued is None:
                raise PresenceFailed(
                    "no fresh request options for this action: fetch them again and sign"
                )
            if self.clock.monotonic() - issued > self.carbon_proof_max_age_s:
                raise PresenceFailed(
                    f"carbonProof is older than {self.carbon_proof_max_age_s:g} s:"
                    " fetch the request options again and sign"
                )
        if self._challenge_used(challenge):
            raise PresenceFailed("this action was already signed: an assertion is used once")
        from fido2.utils import websafe_encode

        state = {
            "challenge": websafe_encode(challenge),
            "user_verification": _uv_requirement(require_uv),
        }
        enrolled, auth_data = self._check_assertion(state, credential, require_uv)
        self._commit_counter(enrolled, auth_data, used_challenge=challenge)
        with self._lock:
            self._issued.pop(challenge, None)
        verified = auth_data.is_user_verified()
        if carbon_proof:
            level = SecurityLevel.carbonProof
        else:
            level = SecurityLevel.biometric if verified else SecurityLevel.enhanced
        return VerifiedPresence(
            level=level,
            credential_id=enrolled.credential_id,
            user_present=auth_data.is_user_present(),
            user_verified=verified,
            challenge=challenge,
            software=enrolled.software,
        )

    # --- internals ----------------------------------------------------------

    def _allow_list(self) -> list[PublicKeyCredentialDescriptor]:
        credentials = self.owners.list_credentials()
        if not credentials:
            raise NotFound("no presence credential enrolled: enrol one first (pacd enroll)")
        return [_descriptor(c) for c in credentials]

    def _remember(self, pending: _OpenCeremony) -> str:
        now = self.clock.monotonic()
        pending.deadline = now + self.challenge_ttl_s
        ceremony_id = secrets.token_urlsafe(24)
        with self._lock:
            for key in [k for k, p in self._pending.items() if p.deadline < now]:
                del self._pending[key]
            # Unfinished ceremonies never lock the owner out: past the bounds the
            # oldest are dropped (first the same client's, then anyone's), so a
            # fresh begin always gets a challenge.
            mine = [k for k, p in self._pending.items() if p.client == pending.client]
            for key in mine[: max(0, len(mine) - MAX_PENDING_PER_CLIENT + 1)]:
                del self._pending[key]
            while len(self._pending) >= MAX_PENDING:
                del self._pending[next(iter(self._pending))]
            self._pending[ceremony_id] = pending
        return ceremony_id

    def _drop_unauthorised_registrations(self) -> None:
        """A key is enrolled: no registration begun without a session may finish."""
        with self._lock:
            for key in [k for k, p in self._pending.items()
                        if p.kind == "registration" and p.authorised == FIRST_CREDENTIAL]:
                del self._pending[key]

    def _take(self, ceremony_id: str, kind: str) -> _OpenCeremony:
        """Single use: the state is gone after this call, whatever the outcome."""
        if not isinstance(ceremony_id, str):
            raise InvalidRequest(f"{kind} id must be a string")
        with self._lock:
            pending = self._pending.get(ceremony_id)
            if pending is not None and pending.kind == kind:
                del self._pending[ceremony_id]
            else:
                pending = None
        if pending is None:
            raise PresenceFailed(f"unknown, used or expired {kind}: begin again")
        if self.clock.monotonic() > pending.deadline:
            raise PresenceFailed(f"the {kind} challenge expired: begin again")
        return pending

    def _check_assertion(
        self, state: Mapping[str, Any], credential: Mapping[str, Any], require_uv: bool
    ) -> tuple[Credential, AuthenticatorData]:
        from fido2.webauthn import AuthenticationResponse

        try:
            response = AuthenticationResponse.from_dict(credential)
        except Exception as exc:
            raise InvalidRequest(
                "credential is not a WebAuthn AuthenticationResponseJSON"
            ) from exc
        enrolled = self.owners.find_credential(response.raw_id)
        if enrolled is None:
            raise PresenceFailed("this key is not enrolled with pacd")
        check_software_allowed(enrolled.aaguid, self.allow_software, "assertion")
        try:
            self._server.authenticate_complete(state, [_attested(enrolled)], response)
        except ValueError as exc:
            raise PresenceFailed(f"assertion refused: {exc}") from exc
        auth_data = response.response.authenticator_data
        # Fido2Server checks these too; checked here again because the level
        # granted depends on them and must not rest on a library default.
        if not auth_data.is_user_present():
            raise PresenceFailed("assertion refused: the key did not report a touch (UP)")
        if require_uv and not auth_data.is_user_verified():
            raise PresenceFailed(
                "assertion refused: the key did not verify you (no PIN or biometric, UV)"
            )
        return enrolled, auth_data

    def _commit_counter(
        self, enrolled: Credential, auth_data: AuthenticatorData, used_challenge: bytes | None
    ) -> None:
        refusal: dict[str, Any] | None = None
        with self.store.transaction() as conn:
            row = conn.execute(
                "SELECT sign_count FROM presence_credentials WHERE credential_id = ?",
                (enrolled.credential_id,),
            ).fetchone()
            if row is None:
                raise PresenceFailed("this key is not enrolled with pacd")
            stored, new = int(row[0]), auth_data.counter
            uses_counter = stored != 0 or new != 0
            if uses_counter and new <= stored:
                refusal = {
                    "credential_id": enrolled.credential_id.hex(),
                    "label": enrolled.label,
                    "stored_counter": stored,
                    "presented_counter": new,
                }
            else:
                if used_challenge is not None:
                    hit = conn.execute(
                        "SELECT 1 FROM presence_used_challenges WHERE challenge = ?",
                        (used_challenge,),
                    ).fetchone()
                    if hit is not None:
                        raise PresenceFailed(
                            "this action was already signed: an assertion is used once"
                        )
                    conn.execute(
                        "INSERT INTO presence_used_challenges (challenge, credential_id, used_at)"
                        " VALUES (?, ?, ?)",
                        (used_challenge, enrolled.credential_id, self.clock.wall()),
                    )
                if uses_counter:
                    self.owners.update_sign_count(enrolled.credential_id, new)
                self.owners.note_use(enrolled.credential_id, self.clock.wall())
        if refusal is not None:
            if self.on_refusal is not None:
                self.on_refusal("possible_cloned_authenticator", refusal)
            raise ClonedAuthenticator(
                f"the signature counter of key {enrolled.label!r} did not move forward"
                f" ({refusal['presented_counter']} after {refusal['stored_counter']}):"
                " it may have been cloned; the assertion was refused",
                credential_id=refusal["credential_id"],
            )

    def _challenge_used(self, challenge: bytes) -> bool:
        return self.store.query_one(
            "SELECT 1 FROM presence_used_challenges WHERE challenge = ?", (challenge,)
        ) is not None


def _session_level(level: SecurityLevel | str) -> SecurityLevel:
    wanted: SecurityLevel | None
    try:
        wanted = SecurityLevel(level)
    except ValueError:
        wanted = None
    if wanted is None or wanted not in (SecurityLevel.enhanced, SecurityLevel.biometric):
        raise InvalidRequest(
            "session level must be 'enhanced' or 'biometric'"
            " (carbonProof is proven per action, basic needs no ceremony)"
        )
    return wanted


def _uv_requirement(require_uv: bool) -> UserVerificationRequirement:
    from fido2.webauthn import UserVerificationRequirement

    return (
        UserVerificationRequirement.REQUIRED if require_uv
        else UserVerificationRequirement.DISCOURAGED
    )


def _check_challenge(challenge: bytes) -> None:
    if not isinstance(challenge, bytes) or len(challenge) < 16:
        raise InvalidRequest("challenge must be at least 16 bytes (an action digest is 32)")


def _descriptor(credential: Credential) -> PublicKeyCredentialDescriptor:
    from fido2.webauthn import PublicKeyCredentialDescriptor, PublicKeyCredentialType

    return PublicKeyCredentialDescriptor(
        type=PublicKeyCredentialType.PUBLIC_KEY, id=credential.credential_id
    )


def _attested(credential: Credential) -> AttestedCredentialData:
    from fido2.webauthn import AttestedCredentialData

    key: CoseKey = credential.cose_key()
    return AttestedCredentialData.create(credential.aaguid, credential.credential_id, key)
