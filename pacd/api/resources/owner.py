"""The owner: ``POST /v1/owner`` and the presence credentials (enrol, list, remove).

Who the owner is — which keys may prove presence — changes only with a key:

- The first key is enrolled by its registration alone (nothing exists that
  could approve it). ``complete`` stores it and answers 201.
- Every later key needs a biometric session to *begin* (as before), but a
  session proves only that someone opened one: a stolen token, or a session
  opened by a fingerprint reader that signs nothing, must not be able to add a
  key that will then approve anything. So ``complete`` stores nothing: it
  queues a ``credential.add`` approval whose payload is the new key itself
  (id, COSE public key, AAGUID, label) and answers 202. Only a carbonProof
  assertion by an already-enrolled key over that payload adds it — the new key
  is not enrolled, so its own assertion is refused like any stranger's.
- Removing a key is a ``credential.remove`` approval (carbonProof); the last
  key can never be removed (checked when asked and again when approved), or
  the next registration would be a first key anyone could enrol.

Both executors run inside the approval's transaction (see
:mod:`pacd.approvals`): the key is added or removed, and the approval's audit
entry written, together or not at all.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

from pacd import messages
from pacd.api.access import OwnerAccess
from pacd.api.decisions import RequestDecision
from pacd.api.resources.common import in_thread
from pacd.api.route import WRITTEN, Call, Reply, Route
from pacd.api.services import Services
from pacd.approvals import Approval, b64url, iso
from pacd.core.rules import Action, required_level
from pacd.errors import (
    AuditError,
    Conflict,
    Forbidden,
    IntegrityError,
    InvalidRequest,
    KeychainError,
    MalformedRequest,
    NotFound,
    PacdError,
    PresenceFailed,
    PresenceRequired,
    TooMany,
    Unauthorized,
    UncoveredEntry,
)
from pacd.presence.attestation import aaguid_text
from pacd.presence.owner import Credential, refuse_if_owner_vanished, remember_owner
from pacd.presence.rp import FIRST_CREDENTIAL, Registration

CREDENTIAL_ADD = "credential.add"
CREDENTIAL_REMOVE = "credential.remove"
ENROL_ACTION = "credential.enroll"
log = logging.getLogger(__name__)
_HEX = re.compile(r"(?:[0-9a-fA-F]{2}){1,1024}")


def _id(text: str) -> bytes:
    # Exactly hex digits (bytes.fromhex would also take spaces).
    raw = bytes.fromhex(text) if _HEX.fullmatch(text) else b""
    if not raw:
        raise InvalidRequest(f"credential id {text[:80]!r} is not a hex string "
                             "(as GET /v1/owner/credentials lists it)")
    return raw


def add_payload(registration: Registration) -> dict[str, Any]:
    """What the owner signs to add a key: the key itself, and what it said about itself."""
    c = registration.credential
    return {
        "credential_id": c.credential_id.hex(),
        "public_key": b64url(c.public_key),
        "aaguid": aaguid_text(c.aaguid),
        "label": c.label,
        "kind": c.kind,
        "user_verifying": c.uv_capable,
        "software": c.software,
        "sign_count": c.sign_count,
        "attestation_format": registration.attestation_format,
    }


def credential_from_payload(body: dict[str, Any], now: float) -> Credential:
    from fido2.utils import websafe_decode  # lazy: python-fido2 is not loaded at start

    try:
        kind = str(body["kind"])
        return Credential(
            credential_id=bytes.fromhex(str(body["credential_id"])),
            public_key=websafe_decode(str(body["public_key"])),
            sign_count=int(body["sign_count"]),
            aaguid=uuid.UUID(str(body["aaguid"])).bytes,
            uv_capable=bool(body["user_verifying"]),
            label=str(body["label"]),
            created_at=now,
            kind="platform" if kind == "platform" else "fido2",
        )
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise InvalidRequest("the credential.add payload is not a credential") from exc


class OwnerRoutes:
    """The owner identity, its credential routes and the executors of their approvals."""

    def __init__(self, services: Services, access: OwnerAccess,
                 on_change: Callable[[], None]) -> None:
        self.services = services
        self.access = access
        #: the owner or their keys changed (the status body shows them)
        self._on_change = on_change

    # --- the owner ------------------------------------------------------------

    async def create_owner(self, call: Call) -> Reply:
        body: messages.OwnerCreate = call.body
        services = self.services

        def create() -> messages.OwnerView:
            services.vault.initialize()
            refuse_if_owner_vanished(services.secrets, services.owners)
            with services.store.transaction():
                owner = services.owners.create_owner(body.name, services.clock.wall())
                call.decision.append(call.decision.actor, "owner.create", owner.id, "allow",
                                     "owner identity created", {"name": owner.name})
            remember_owner(services.secrets, owner)
            return messages.OwnerView(owner.id, owner.name, iso(owner.created_at) or "", 0)

        try:
            view = await in_thread(create)
        except Conflict as exc:
            await call.decision.record("owner.create", "", "deny", exc.message)
            raise
        self._on_change()
        return Reply(view, 201)

    # --- enrolment ------------------------------------------------------------

    async def begin(self, call: Call) -> messages.CredentialOptions:
        body: messages.CredentialBegin = call.body
        authorised = FIRST_CREDENTIAL
        if await asyncio.to_thread(self.services.owners.has_credentials):
            # Even to begin, adding a key to an enrolled owner needs a session;
            # completing it then needs an approval by an enrolled key.
            principal = await self.access.require(
                call.request, required_level(Action.enroll_credential), "begin_credential")
            authorised = principal.level
        # A begin without a session counts only while no key exists: the relying
        # party checks that again when the registration completes.
        options = await asyncio.to_thread(self.services.rp.begin_registration,
                                          body.label or "security key", False, authorised)
        return messages.CredentialOptions(publicKey=options["publicKey"], origin=options["origin"],
                                          registration_id=str(options["registration_id"]))

    async def complete(self, call: Call) -> Reply:
        body: messages.CredentialComplete = call.body
        if not body.registration_id:
            # Never "whichever registration began last": that could be someone else's.
            raise MalformedRequest(
                "registration_id is required: pass the one credentials/begin returned")
        registration_id = body.registration_id

        def record(cred: Credential) -> None:
            # Inside the transaction that stores the key: no entry, no key.
            call.decision.append(call.decision.actor, ENROL_ACTION, cred.credential_id.hex(),
                                 "allow", "first presence credential enrolled",
                                 {"label": cred.label, "uv_capable": cred.uv_capable,
                                  "aaguid": aaguid_text(cred.aaguid),
                                  "software": cred.software}, checkpoint=True)

        def complete() -> Reply:
            registration = self.services.rp.verify_registration(registration_id, body.credential)
            if (registration.authorised == FIRST_CREDENTIAL
                    or not self.services.owners.has_credentials()):
                cred = self.services.rp.enrol_first(registration, record)
                return Reply(messages.CredentialView(credential_id=cred.credential_id.hex(),
                                                     label=cred.label,
                                                     user_verifying=cred.uv_capable), 201)
            return Reply(self._queue_addition(registration, call.decision, call.process()), 202)

        try:
            reply = await asyncio.to_thread(complete)
        except UncoveredEntry as exc:
            # The enrolment entry is durable but the key was not stored (its
            # checkpoint failed): say so after it, or the log claims a key that isn't.
            try:
                await call.decision.append_async(
                    call.decision.actor, ENROL_ACTION, registration_id, "deny",
                    "not stored: the audit checkpoint could not be written",
                    {"code": exc.code, "enroll_seq": exc.entry_seq})
            except AuditError:
                log.exception("enrolment entry %s is not followed by its undoing",
                              exc.entry_seq)
            raise
        except AuditError:
            raise  # nothing was stored, and there is no log to record the refusal in
        except PacdError as exc:
            await call.decision.append_async(call.decision.actor, ENROL_ACTION, registration_id,
                                             "deny", exc.message,
                                             {"code": exc.code, **exc.extra})
            raise
        if reply.status == 201:
            self._on_change()
        return reply

    def _queue_addition(self, registration: Registration, decision: RequestDecision,
                        process: dict[str, Any] | None) -> messages.ApprovalAccepted:
        cred = registration.credential
        if self.services.owners.find_credential(cred.credential_id) is not None:
            raise Conflict("this credential is already enrolled")
        payload = add_payload(registration)
        summary = (f"add {'SOFTWARE (demo, not secure) ' if cred.software else ''}"
                   f"presence credential {cred.label!r} (authenticator "
                   f"{payload['aaguid']}, key {payload['credential_id'][:16]}…)")
        approval = self.services.approvals.submit(
            CREDENTIAL_ADD, payload, decision.actor, summary,
            float(self.services.config.approval_ttl_s), record=decision, process=process)
        return _accepted(approval)

    def execute_add(self, conn: Any, approval: Approval) -> dict[str, Any]:
        cred = credential_from_payload(approval.body, self.services.clock.wall())
        stored = self.services.rp.add_approved(cred)
        self._on_change()
        return {"credential_id": stored.credential_id.hex(), "label": stored.label}

    # --- listing and removal ----------------------------------------------------

    def _entries(self) -> messages.CredentialList:
        used = self.services.owners.last_used()
        return messages.CredentialList(credentials=[
            messages.CredentialEntry(
                credential_id=c.credential_id.hex(), label=c.label, kind=c.kind,
                aaguid=aaguid_text(c.aaguid), user_verifying=c.uv_capable,
                created_at=iso(c.created_at) or "",
                last_used_at=iso(used.get(c.credential_id)),
                # What the key says about itself (its AAGUID): true for pacd's own
                # software authenticator; false is no proof of hardware.
                software=c.software)
            for c in self.services.owners.list_credentials()])

    async def list_all(self, call: Call) -> messages.CredentialList:
        return await asyncio.to_thread(self._entries)

    async def remove(self, call: Call) -> Reply:
        credential_id = _id(call.params["id"])

        def queue() -> messages.ApprovalAccepted:
            cred = self.services.owners.get_credential(credential_id)
            _not_the_last(self.services.owners.count_credentials())
            payload: dict[str, Any] = {
                "credential_id": cred.credential_id.hex(),
                "public_key": b64url(cred.public_key),
                "aaguid": aaguid_text(cred.aaguid),
                "label": cred.label,
                "software": cred.software,
            }
            summary = (f"remove presence credential {cred.label!r} "
                       f"(key {payload['credential_id'][:16]}…)")
            approval = self.services.approvals.submit(
                CREDENTIAL_REMOVE, payload, call.decision.actor, summary,
                float(self.services.config.approval_ttl_s), record=call.decision,
                process=call.process())
            return _accepted(approval)

        return Reply(await asyncio.to_thread(queue), 202)

    def execute_remove(self, conn: Any, approval: Approval) -> dict[str, Any]:
        credential_id = _id(str(approval.body.get("credential_id", "")))
        cred = self.services.owners.get_credential(credential_id)
        # Asked again here: another removal may have been approved meanwhile.
        _not_the_last(self.services.owners.count_credentials())
        self.services.owners.remove_credential(credential_id)
        self._on_change()
        return {"credential_id": credential_id.hex(), "label": cred.label}

    # --- the table ----------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/v1/owner", "create_owner", "create the owner identity and master key",
                  self.create_owner, request=messages.OwnerCreate,
                  response=messages.OwnerView, status=201,
                  errors=(Conflict, KeychainError, AuditError, IntegrityError),
                  action="owner.create"),
            Route("POST", "/v1/owner/credentials/begin", "begin_credential",
                  "start enrolling a presence credential (biometric token needed once one "
                  "is enrolled)", self.begin, request=messages.CredentialBegin,
                  response=messages.CredentialOptions,
                  errors=(NotFound, Unauthorized, PresenceRequired, InvalidRequest),
                  action="credential.begin"),
            Route("POST", "/v1/owner/credentials/complete", "complete_credential",
                  "finish enrolling a presence credential: the first is stored (201); "
                  "any later one is queued as a credential.add approval (202, "
                  "ApprovalAccepted) that an enrolled key must sign", self.complete,
                  request=messages.CredentialComplete, response=messages.CredentialView, status=201,
                  extra_statuses={202: "queued as a credential.add approval: "
                                       "{approval_id, required_level, expires_at}"},
                  errors=(PresenceFailed, PresenceRequired, Forbidden, InvalidRequest,
                          MalformedRequest, NotFound, Conflict, AuditError),
                  action=ENROL_ACTION),
            Route("GET", "/v1/owner/credentials", "list_credentials",
                  "the enrolled presence credentials", self.list_all,
                  level=required_level(Action.list_credentials).value,
                  response=messages.CredentialList, action="credential.list", audit=WRITTEN),
            Route("DELETE", "/v1/owner/credentials/{id}", "remove_credential",
                  "queue the removal of a presence credential as a credential.remove "
                  "approval (carbonProof); the last one cannot be removed", self.remove,
                  level=required_level(Action.request_credential_removal).value,
                  response=messages.ApprovalAccepted, status=202,
                  errors=(NotFound, Conflict, InvalidRequest, Unauthorized, PresenceRequired,
                          TooMany, AuditError),
                  path_patterns={"id": f"^{_HEX.pattern}$"}, action="credential.remove"),
        ]


def _not_the_last(count: int) -> None:
    if count <= 1:
        raise Conflict("this is the only enrolled presence credential: enrol another one "
                       "before removing it (without a key nobody could approve anything, "
                       "and the next key enrolled would need no approval)")


def _accepted(approval: Approval) -> messages.ApprovalAccepted:
    return messages.ApprovalAccepted(approval_id=approval.id,
                                     required_level=approval.required_level.value,
                                     expires_at=iso(approval.expires_at) or "")
