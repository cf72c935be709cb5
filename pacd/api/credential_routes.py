"""The owner's presence credentials: enrol, list, remove (API.md).

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

from fido2.utils import websafe_decode

from pacd import messages as m
from pacd.api.decisions import DecisionLog
from pacd.api.route import Call, Reply, Route
from pacd.api.services import Services
from pacd.approvals import Approval, b64url, iso
from pacd.core.rules import Action, required_level
from pacd.errors import (
    AuditError,
    Conflict,
    Forbidden,
    InvalidRequest,
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
from pacd.presence.owner import Credential
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


class Credentials:
    """The credential routes and the executors of their approvals."""

    def __init__(self, services: Services, sink: DecisionLog, actor: str,
                 on_change: Callable[[], None]) -> None:
        self.s = services
        self.sink = sink
        self.actor = actor
        #: the owner's keys changed (the status body counts them)
        self._on_change = on_change

    # --- enrolment ------------------------------------------------------------

    async def begin(self, call: Call, require: Callable[..., Any]) -> m.CredentialOptions:
        body: m.CredentialBegin = call.body
        authorised = FIRST_CREDENTIAL
        if await asyncio.to_thread(self.s.owners.has_credentials):
            # Even to begin, adding a key to an enrolled owner needs a session;
            # completing it then needs an approval by an enrolled key.
            principal = await require(call.request, required_level(Action.enroll_credential),
                                      "begin_credential")
            authorised = principal.level
        # A begin without a session counts only while no key exists: the relying
        # party checks that again when the registration completes.
        options = await asyncio.to_thread(self.s.rp.begin_registration,
                                          body.label or "security key", False, authorised)
        return m.CredentialOptions(publicKey=options["publicKey"], origin=options["origin"],
                                   registration_id=str(options["registration_id"]))

    async def complete(self, call: Call) -> Reply:
        body: m.CredentialComplete = call.body
        if not body.registration_id:
            # Never "whichever registration began last": that could be someone else's.
            raise MalformedRequest(
                "registration_id is required: pass the one credentials/begin returned")
        registration_id = body.registration_id

        def record(cred: Credential) -> None:
            # Inside the transaction that stores the key: no entry, no key.
            self.sink.append(self.actor, ENROL_ACTION, cred.credential_id.hex(), "allow",
                             "first presence credential enrolled",
                             {"label": cred.label, "uv_capable": cred.uv_capable,
                              "aaguid": aaguid_text(cred.aaguid),
                              "software": cred.software}, checkpoint=True)

        def complete() -> Reply:
            registration = self.s.rp.verify_registration(registration_id, body.credential)
            if (registration.authorised == FIRST_CREDENTIAL
                    or not self.s.owners.has_credentials()):
                cred = self.s.rp.enrol_first(registration, record)
                return Reply(m.CredentialView(credential_id=cred.credential_id.hex(),
                                              label=cred.label,
                                              user_verifying=cred.uv_capable), 201)
            return Reply(self._queue_addition(registration, call.process()), 202)

        try:
            reply = await asyncio.to_thread(complete)
        except UncoveredEntry as exc:
            # The enrolment entry is durable but the key was not stored (its
            # checkpoint failed): say so after it, or the log claims a key that isn't.
            try:
                await self.sink.append_async(
                    self.actor, ENROL_ACTION, registration_id, "deny",
                    "not stored: the audit checkpoint could not be written",
                    {"code": exc.code, "enroll_seq": exc.entry_seq})
            except AuditError:
                log.exception("enrolment entry %s is not followed by its undoing",
                              exc.entry_seq)
            raise
        except AuditError:
            raise  # nothing was stored, and there is no log to record the refusal in
        except PacdError as exc:
            await self.sink.append_async(self.actor, ENROL_ACTION, registration_id, "deny",
                                         exc.message, {"code": exc.code, **exc.extra})
            raise
        if reply.status == 201:
            self._on_change()
        return reply

    def _queue_addition(self, registration: Registration, process: dict[str, Any] | None
                        ) -> m.ApprovalAccepted:
        cred = registration.credential
        if self.s.owners.find_credential(cred.credential_id) is not None:
            raise Conflict("this credential is already enrolled")
        payload = add_payload(registration)
        summary = (f"add {'SOFTWARE (demo, not secure) ' if cred.software else ''}"
                   f"presence credential {cred.label!r} (authenticator "
                   f"{payload['aaguid']}, key {payload['credential_id'][:16]}…)")
        approval = self.s.approvals.submit(CREDENTIAL_ADD, payload, self.actor, summary,
                                           float(self.s.config.approval_ttl_s),
                                           process=process)
        return _accepted(approval)

    def execute_add(self, conn: Any, approval: Approval) -> dict[str, Any]:
        cred = credential_from_payload(approval.body, self.s.clock.wall())
        stored = self.s.rp.add_approved(cred)
        self._on_change()
        return {"credential_id": stored.credential_id.hex(), "label": stored.label}

    # --- listing and removal ----------------------------------------------------

    def _entries(self) -> m.CredentialList:
        used = self.s.owners.last_used()
        return m.CredentialList(credentials=[
            m.CredentialEntry(
                credential_id=c.credential_id.hex(), label=c.label, kind=c.kind,
                aaguid=aaguid_text(c.aaguid), user_verifying=c.uv_capable,
                created_at=iso(c.created_at) or "",
                last_used_at=iso(used.get(c.credential_id)),
                # What the key says about itself (its AAGUID): true for pacd's own
                # software authenticator; false is no proof of hardware.
                software=c.software)
            for c in self.s.owners.list_credentials()])

    async def list_all(self, call: Call) -> m.CredentialList:
        return await asyncio.to_thread(self._entries)

    async def remove(self, call: Call) -> Reply:
        credential_id = _id(call.params["id"])

        def queue() -> m.ApprovalAccepted:
            cred = self.s.owners.get_credential(credential_id)
            _not_the_last(self.s.owners.count_credentials())
            payload: dict[str, Any] = {
                "credential_id": cred.credential_id.hex(),
                "public_key": b64url(cred.public_key),
                "aaguid": aaguid_text(cred.aaguid),
                "label": cred.label,
                "software": cred.software,
            }
            summary = (f"remove presence credential {cred.label!r} "
                       f"(key {payload['credential_id'][:16]}…)")
            approval = self.s.approvals.submit(CREDENTIAL_REMOVE, payload, self.actor,
                                               summary, float(self.s.config.approval_ttl_s),
                                               process=call.process())
            return _accepted(approval)

        return Reply(await asyncio.to_thread(queue), 202)

    def execute_remove(self, conn: Any, approval: Approval) -> dict[str, Any]:
        credential_id = _id(str(approval.body.get("credential_id", "")))
        cred = self.s.owners.get_credential(credential_id)
        # Asked again here: another removal may have been approved meanwhile.
        _not_the_last(self.s.owners.count_credentials())
        self.s.owners.remove_credential(credential_id)
        self._on_change()
        return {"credential_id": credential_id.hex(), "label": cred.label}

    # --- the table ----------------------------------------------------------------

    def routes(self, require: Callable[..., Any]) -> list[Route]:
        async def begin(call: Call) -> m.CredentialOptions:
            return await self.begin(call, require)

        return [
            Route("POST", "/v1/owner/credentials/begin", "begin_credential",
                  "start enrolling a presence credential (biometric token needed once one "
                  "is enrolled)", begin, request=m.CredentialBegin,
                  response=m.CredentialOptions,
                  errors=(NotFound, Unauthorized, PresenceRequired, InvalidRequest)),
            Route("POST", "/v1/owner/credentials/complete", "complete_credential",
                  "finish enrolling a presence credential: the first is stored (201); "
                  "any later one is queued as a credential.add approval (202, "
                  "ApprovalAccepted) that an enrolled key must sign", self.complete,
                  request=m.CredentialComplete, response=m.CredentialView, status=201,
                  extra_statuses={202: "queued as a credential.add approval: "
                                       "{approval_id, required_level, expires_at}"},
                  errors=(PresenceFailed, PresenceRequired, Forbidden, InvalidRequest,
                          MalformedRequest, NotFound, Conflict, AuditError)),
            Route("GET", "/v1/owner/credentials", "list_credentials",
                  "the enrolled presence credentials", self.list_all,
                  level=required_level(Action.list_credentials).value,
                  response=m.CredentialList),
            Route("DELETE", "/v1/owner/credentials/{id}", "remove_credential",
                  "queue the removal of a presence credential as a credential.remove "
                  "approval (carbonProof); the last one cannot be removed", self.remove,
                  level=required_level(Action.request_credential_removal).value,
                  response=m.ApprovalAccepted, status=202,
                  errors=(NotFound, Conflict, InvalidRequest, Unauthorized, PresenceRequired,
                          TooMany, AuditError),
                  path_patterns={"id": f"^{_HEX.pattern}$"}),
        ]


def _not_the_last(count: int) -> None:
    if count <= 1:
        raise Conflict("this is the only enrolled presence credential: enrol another one "
                       "before removing it (without a key nobody could approve anything, "
                       "and the next key enrolled would need no approval)")


def _accepted(approval: Approval) -> m.ApprovalAccepted:
    return m.ApprovalAccepted(approval_id=approval.id,
                              required_level=approval.required_level.value,
                              expires_at=iso(approval.expires_at) or "")
