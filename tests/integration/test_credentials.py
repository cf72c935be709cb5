"""Who the owner is changes only with the owner's key, through the real daemon.

A session token — stolen, cached on disk, or opened by a fingerprint reader
that signs nothing — must not be enough to add a key (which would then
approve anything) or to remove one. Every test arranges the attack with the
real daemon, the real client ceremony and software CTAP2 keys, and checks
both the refusal and its audit entry.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fido2 import cbor
from fido2.cose import ES256, CoseKey
from fido2.utils import websafe_decode

from pacd.approvals import b64url
from pacd.core.canonical import digest
from pacd.errors import PacdError
from pacd.presence.client import authenticate, register
from pacd.transport import UnixHTTPConnection
from tests.integration.harness import DaemonProcess, Owner, Silent
from tests.softauthn import SOFT_AAGUID, SoftAuthenticator


def _listed(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return daemon.client().credentials()


def _refused(fn: Callable[[], Any]) -> PacdError:
    with pytest.raises(PacdError) as caught:
        fn()
    return caught.value


def _raw_post(daemon: DaemonProcess, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    """A request whose HTTP status is kept (the client maps errors to classes by code)."""
    conn = UnixHTTPConnection(str(daemon.socket), 30)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _entries(daemon: DaemonProcess, action: str) -> list[dict[str, Any]]:
    return [e for e in daemon.audit() if e["action"] == action]


def _register_new_key(owner: Owner, label: str, device: SoftAuthenticator
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Begin with the owner's session token and register ``device``: (begin, credential)."""
    c = owner.authed()
    begin = c.request("POST", "/v1/owner/credentials/begin", {"label": label})
    credential = register(begin["publicKey"], begin["origin"], Silent(), device=device)
    return begin, credential


def _sign_as(daemon: DaemonProcess, options: dict[str, Any], origin: str,
             device: SoftAuthenticator, credential_id: str) -> dict[str, Any]:
    """What a hostile client does: point the request options at a key of its own."""
    forged = dict(options)
    forged["allowCredentials"] = [{"type": "public-key", "id": credential_id}]
    return authenticate(forged, origin, Silent(), device=device)


def _owner_with_token(daemon: DaemonProcess) -> Owner:
    owner = Owner(daemon)
    owner.init()
    owner.enroll("key A")
    owner.session("biometric")
    return owner


def _cannot_open_a_session(daemon: DaemonProcess, device: SoftAuthenticator,
                           credential_id: str) -> PacdError:
    c = daemon.client()
    begin = c.request("POST", "/v1/sessions/begin", {"level": "biometric"})
    assertion = _sign_as(daemon, begin["publicKey"], begin["origin"], device, credential_id)
    return _refused(lambda: c.request("POST", "/v1/sessions/complete", {
        "session_id": begin["session_id"], "credential": assertion}))


def _can_open_a_session(daemon: DaemonProcess, device: SoftAuthenticator) -> str:
    c = daemon.client()
    begin = c.request("POST", "/v1/sessions/begin", {"level": "biometric"})
    assertion = authenticate(begin["publicKey"], begin["origin"], Silent(), device=device)
    token = c.request("POST", "/v1/sessions/complete",
                      {"session_id": begin["session_id"], "credential": assertion})
    return str(token["level"])


def test_a_biometric_token_alone_cannot_add_a_credential(daemon: DaemonProcess) -> None:
    owner = _owner_with_token(daemon)
    before = _listed(daemon)
    intruder = SoftAuthenticator()
    begin, credential = _register_new_key(owner, "intruder", intruder)
    c = daemon.client()
    status, queued = _raw_post(daemon, "/v1/owner/credentials/complete", {
        "credential": credential, "registration_id": begin["registration_id"]})
    # 202: queued, not enrolled.
    assert status == 202, queued
    assert set(queued) == {"approval_id", "required_level", "expires_at"}
    assert queued["required_level"] == "carbonProof"
    assert _listed(daemon) == before
    assert daemon.client().status()["owner"]["credentials"] == 1
    # The new key cannot open a session (it is not one of the owner's keys yet).
    refused = _cannot_open_a_session(daemon, intruder, credential["id"])
    assert (refused.status, refused.code) == (403, "presence_failed")
    assert _entries(daemon, "session.create")[-1]["decision"] == "deny"
    # What the owner is asked to sign is the new key itself.
    detail = c.request("GET", f"/v1/approvals/{queued['approval_id']}")
    body = detail["payload"]["body"]
    assert detail["kind"] == "credential.add" and detail["state"] == "pending"
    assert body["credential_id"] == websafe_decode(credential["id"]).hex()
    assert body["label"] == "intruder"
    assert body["aaguid"] == str(uuid.UUID(bytes=SOFT_AAGUID))
    signed_key = CoseKey.parse(cbor.decode(websafe_decode(body["public_key"])))
    device_key = intruder.credentials[websafe_decode(credential["id"])].private_key
    assert signed_key == ES256.from_cryptography_key(device_key.public_key())
    assert detail["challenge"] == b64url(digest(detail["payload"]))
    assert detail["publicKey"]["userVerification"] == "required"
    # Recorded as a queued request, never as an enrolment.
    requested = _entries(daemon, "approval.credential.add.request")
    assert [(e["decision"], e["target"]) for e in requested] == [
        ("info", queued["approval_id"])]
    assert [e["decision"] for e in _entries(daemon, "credential.enroll")] == ["allow"]


def test_the_new_key_cannot_approve_its_own_addition(daemon: DaemonProcess) -> None:
    owner = _owner_with_token(daemon)
    intruder = SoftAuthenticator()
    begin, credential = _register_new_key(owner, "key B", intruder)
    c = daemon.client()
    approval_id = c.request("POST", "/v1/owner/credentials/complete", {
        "credential": credential, "registration_id": begin["registration_id"]})["approval_id"]
    detail = c.request("GET", f"/v1/approvals/{approval_id}")
    # Signed over exactly this approval's challenge, with UV — by the key being added.
    own = _sign_as(daemon, detail["publicKey"], detail["origin"], intruder, credential["id"])
    refused = _refused(lambda: c.request("POST", f"/v1/approvals/{approval_id}/approve",
                                         {"credential": own}))
    assert (refused.status, refused.code) == (403, "presence_failed")
    assert c.request("GET", f"/v1/approvals/{approval_id}")["state"] == "pending"
    assert [x["label"] for x in _listed(daemon)] == ["key A"]
    denied = _entries(daemon, "approval.credential.add.approve")
    assert [(e["decision"], e["target"], e["details"]["code"]) for e in denied] == [
        ("deny", approval_id, "presence_failed")]
    # The enrolled key, with a fresh carbonProof over the same payload, adds it.
    done = owner.approve(approval_id)
    assert done["state"] == "approved"
    assert done["result"]["credential_id"] == websafe_decode(credential["id"]).hex()
    listed = _listed(daemon)
    assert [x["label"] for x in listed] == ["key A", "key B"]
    assert listed[1]["aaguid"] == str(uuid.UUID(bytes=SOFT_AAGUID))
    assert all(x["created_at"].endswith("Z") for x in listed), listed
    assert listed[1]["last_used_at"] is None and listed[0]["last_used_at"] is not None
    allowed = _entries(daemon, "approval.credential.add.approve")[-1]
    assert allowed["decision"] == "allow"
    assert allowed["details"]["evidence"]["level"] == "carbonProof"
    assert allowed["details"]["evidence"]["credential_id"] == listed[0]["credential_id"]
    # Now, and only now, the new key opens sessions.
    assert _can_open_a_session(daemon, intruder) == "biometric"
    assert _listed(daemon)[1]["last_used_at"] is not None
    assert c.request("POST", "/v1/audit/verify")["ok"] is True


def test_a_biometric_session_assertion_cannot_approve_a_new_key(
        daemon: DaemonProcess) -> None:
    owner = _owner_with_token(daemon)
    begin, credential = _register_new_key(owner, "key B", SoftAuthenticator())
    c = daemon.client()
    approval_id = c.request("POST", "/v1/owner/credentials/complete", {
        "credential": credential, "registration_id": begin["registration_id"]})["approval_id"]
    # The approval's options are handed out (its carbonProof clock runs)...
    c.request("GET", f"/v1/approvals/{approval_id}")
    # ...but what is posted is the enrolled key's assertion over a session challenge.
    session = c.request("POST", "/v1/sessions/begin", {"level": "biometric"})
    other = authenticate(session["publicKey"], session["origin"], Silent(),
                         device=owner.device)
    refused = _refused(lambda: c.request("POST", f"/v1/approvals/{approval_id}/approve",
                                         {"credential": other}))
    assert (refused.status, refused.code) == (403, "presence_failed")
    assert "challenge" in refused.message
    assert len(_listed(daemon)) == 1
    assert _entries(daemon, "approval.credential.add.approve")[-1]["decision"] == "deny"


def test_the_last_key_cannot_be_removed(daemon: DaemonProcess) -> None:
    owner = _owner_with_token(daemon)
    (only,) = _listed(daemon)
    c = owner.authed()
    refused = _refused(lambda: c.remove_credential(only["credential_id"]))
    assert (refused.status, refused.code) == (409, "conflict")
    assert c.request("GET", "/v1/approvals")["approvals"] == []
    entry = _entries(daemon, "credential.remove")[-1]
    assert (entry["decision"], entry["target"], entry["details"]["code"]) == (
        "deny", only["credential_id"], "conflict")
    # Unknown and malformed ids are refused too.
    assert _refused(lambda: c.remove_credential("00" * 32)).code == "not_found"
    hex_id = only["credential_id"]
    spaced = " ".join(hex_id[i:i + 2] for i in range(0, len(hex_id), 2))
    for bad in ("not-hex", hex_id[:-1], spaced):
        assert _refused(lambda b=bad: c.remove_credential(b)).code == "invalid_request"
    assert _listed(daemon) == [only]
    # Asking queues an approval for the owner's attention: not without a session.
    anonymous = _refused(lambda: daemon.client().remove_credential(only["credential_id"]))
    assert (anonymous.status, anonymous.code) == (401, "unauthorized")


def test_a_second_key_is_removed_only_by_an_approved_removal(daemon: DaemonProcess) -> None:
    owner = _owner_with_token(daemon)
    spare = SoftAuthenticator()
    owner.add_key("key B", spare)
    key_a, key_b = _listed(daemon)
    c = owner.authed()
    queued = c.remove_credential(key_b["credential_id"])
    assert queued["required_level"] == "carbonProof"
    assert len(_listed(daemon)) == 2  # queued, not removed
    detail = c.request("GET", f"/v1/approvals/{queued['approval_id']}")
    assert detail["kind"] == "credential.remove"
    assert detail["payload"]["body"]["credential_id"] == key_b["credential_id"]
    assert owner.approve(queued["approval_id"])["state"] == "approved"
    assert [x["credential_id"] for x in _listed(daemon)] == [key_a["credential_id"]]
    refused = _cannot_open_a_session(daemon, spare,
                                     b64url(bytes.fromhex(key_b["credential_id"])))
    assert refused.code == "presence_failed"
    assert _entries(daemon, "approval.credential.remove.approve")[-1]["decision"] == "allow"


def test_removing_down_to_no_key_is_refused_when_approved(daemon: DaemonProcess) -> None:
    owner = _owner_with_token(daemon)
    spare = SoftAuthenticator()
    owner.add_key("key B", spare)
    key_a, key_b = _listed(daemon)
    c = owner.authed()
    # Two removals, each allowed when asked (two keys exist)...
    first = c.remove_credential(key_b["credential_id"])["approval_id"]
    second = c.remove_credential(key_a["credential_id"])["approval_id"]
    assert owner.approve(first)["state"] == "approved"
    # ...but the second would leave no key: checked again when it executes.
    refused = _refused(lambda: owner.approve(second))
    assert (refused.status, refused.code) == (409, "conflict")
    assert c.request("GET", f"/v1/approvals/{second}")["state"] == "failed"
    assert [x["credential_id"] for x in _listed(daemon)] == [key_a["credential_id"]]
    last = _entries(daemon, "approval.credential.remove.approve")[-1]
    assert (last["decision"], last["target"], last["details"]["code"]) == (
        "deny", second, "conflict")


def test_complete_without_a_registration_id_is_refused(daemon: DaemonProcess) -> None:
    Owner(daemon).init()
    c = daemon.client()
    mine = c.request("POST", "/v1/owner/credentials/begin", {"label": "mine"})
    # Another process begins after the owner; "the latest registration" would be its.
    c.request("POST", "/v1/owner/credentials/begin", {"label": "theirs"})
    credential = register(mine["publicKey"], mine["origin"], Silent(),
                          device=SoftAuthenticator())
    for body in ({"credential": credential}, {"credential": credential,
                                              "registration_id": None}):
        status, answer = _raw_post(daemon, "/v1/owner/credentials/complete", body)
        assert (status, answer["error"]["code"]) == (400, "invalid_request")
        assert "registration_id" in answer["error"]["message"]
    assert c.status()["owner"]["credentials"] == 0
    denied = _entries(daemon, "credential.enroll")
    assert [(e["decision"], e["details"]["status"]) for e in denied] == [("deny", 400)] * 2
    # With its id the same registration completes: the first key is stored (201).
    status, done = _raw_post(daemon, "/v1/owner/credentials/complete",
                             {"credential": credential, "registration_id": mine["registration_id"]})
    assert (status, done["label"]) == (201, "mine"), done
    assert c.status()["owner"]["credentials"] == 1


def test_direct_attestation_refuses_an_unlisted_authenticator_model(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    listed_only = "cb69481e-8ff7-4039-93ec-0a2729a154a8"
    daemon = make_daemon(settings={"attestation": "direct", "allowed_aaguids": [listed_only]})
    Owner(daemon).init()
    c = daemon.client()
    begin = c.request("POST", "/v1/owner/credentials/begin", {"label": "unlisted"})
    assert begin["publicKey"]["attestation"] == "direct"
    credential = register(begin["publicKey"], begin["origin"], Silent(),
                          device=SoftAuthenticator(attestation="packed"))
    refused = _refused(lambda: c.request("POST", "/v1/owner/credentials/complete", {
        "credential": credential, "registration_id": begin["registration_id"]}))
    assert (refused.status, refused.code) == (403, "forbidden")
    assert c.status()["owner"]["credentials"] == 0
    (entry,) = _entries(daemon, "credential.enroll")
    assert entry["decision"] == "deny"
    assert entry["details"]["aaguid"] == str(uuid.UUID(bytes=SOFT_AAGUID))


def test_direct_attestation_enrols_a_listed_model_with_a_statement(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    daemon = make_daemon(settings={"attestation": "direct",
                                   "allowed_aaguids": [SOFT_AAGUID.hex()]})
    owner = Owner(daemon, SoftAuthenticator(attestation="packed"))
    owner.init()
    # The listed model without an attestation statement: refused.
    refused = _refused(lambda: owner.enroll("bare", SoftAuthenticator(attestation="none")))
    assert (refused.status, refused.code) == (403, "forbidden")
    assert owner.enroll("packed")["label"] == "packed"
    assert [x["aaguid"] for x in _listed(daemon)] == [str(uuid.UUID(bytes=SOFT_AAGUID))]


def test_cli_lists_and_queues_removal(daemon: DaemonProcess) -> None:
    owner = _owner_with_token(daemon)
    daemon.env["PACD_TOKEN"] = str(owner.token)  # the CLI asks with the owner's session
    only = json.loads(daemon.cli("credentials", "list", "--json").stdout)["credentials"]
    assert [x["label"] for x in only] == ["key A"]
    last = daemon.cli("credentials", "remove", only[0]["credential_id"])
    assert last.returncode == 5, last.stderr  # conflict
    assert "only enrolled presence credential" in last.stderr
    owner.add_key("key B", SoftAuthenticator())
    listed = daemon.cli("credentials", "list")
    assert listed.returncode == 0 and "'key B'" in listed.stdout
    key_b = json.loads(daemon.cli("credentials", "list", "--json").stdout)["credentials"][1]
    out = daemon.cli("credentials", "remove", key_b["credential_id"], "--json")
    assert out.returncode == 0, out.stderr
    queued = json.loads(out.stdout)
    assert queued["required_level"] == "carbonProof"
    assert daemon.client().request(
        "GET", f"/v1/approvals/{queued['approval_id']}")["kind"] == "credential.remove"
    assert len(_listed(daemon)) == 2
