"""End to end: python-fido2 client → software authenticator → pacd relying party.

Nothing of pacd is mocked: the ceremony runs through ``pacd.presence.client``
and the real ``Fido2Client`` against a software CTAP2 key, and the resulting
WebAuthn JSON goes through a JSON round trip before the relying party checks it.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from pacd.core.canonical import digest
from pacd.core.models import SecurityLevel
from pacd.errors import (
    AuditError,
    CeremonyCancelled,
    CeremonyError,
    CeremonyTimeout,
    ClonedAuthenticator,
    Forbidden,
    InvalidRequest,
    NoAuthenticator,
    NotFound,
    PinBlocked,
    PinInvalid,
    PresenceFailed,
    PresenceRequired,
)
from pacd.presence import client
from pacd.presence.attestation import AttestationPolicy
from pacd.presence.clock import SettableClock
from pacd.presence.levels import level_for
from pacd.presence.owner import Credential, OwnerRegistry
from pacd.presence.rp import FIRST_CREDENTIAL, RelyingParty
from pacd.store import Store
from tests.softauthn import SOFT_AAGUID, ScriptedUser, SoftAuthenticator

RP_ID = "pacd.localhost"
ORIGIN = "https://pacd.localhost"


class World:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = Store(path / "state.sqlite3")
        self.clock = SettableClock()
        self.owners = OwnerRegistry(self.store)
        self.owners.create_owner("Ada", self.clock.wall())
        self.refusals: list[tuple[str, dict[str, Any]]] = []
        self.rp = self.new_rp()
        self.key = SoftAuthenticator()
        self.user = ScriptedUser()

    def new_rp(self, store: Store | None = None) -> RelyingParty:
        store = store or self.store
        return RelyingParty(
            store, OwnerRegistry(store), RP_ID, ORIGIN, self.clock,
            challenge_ttl_s=120,
            on_refusal=lambda kind, details: self.refusals.append((kind, details)),
        )

    def enroll(self, label: str = "blue key", key: SoftAuthenticator | None = None,
               authorised: str = FIRST_CREDENTIAL) -> Credential:
        begun = self.rp.begin_registration(label, authorised=authorised)
        assert begun["origin"] == ORIGIN
        response = client.register(begun["publicKey"], begun["origin"], self.user,
                                   device=key or self.key)
        return self.rp.complete_registration(begun["registration_id"], wire(response))

    def sign_session(self, level: str, **kw: Any) -> tuple[str, dict[str, Any]]:
        device = kw.pop("device", self.key)
        begun = self.rp.begin_session(level)
        options = dict(begun["publicKey"])
        options.update(kw)
        response = client.authenticate(options, begun["origin"], self.user, device=device)
        return begun["session_id"], wire(response)

    def sign_challenge(self, challenge: bytes, require_uv: bool = True) -> dict[str, Any]:
        options = self.rp.request_options_for_challenge(challenge, require_uv)
        return wire(client.authenticate(options["publicKey"], options["origin"], self.user,
                                        device=self.key))


def wire(obj: dict[str, Any]) -> dict[str, Any]:
    """What crosses the owner socket: JSON text."""
    loaded: dict[str, Any] = json.loads(json.dumps(obj))
    return loaded


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


# --- enrolment and sessions ------------------------------------------------


def test_enrolment_then_enhanced_and_biometric_sessions(world: World) -> None:
    cred = world.enroll()
    assert cred.aaguid == SOFT_AAGUID
    assert cred.uv_capable is True
    assert cred.kind == "fido2"
    assert cred.sign_count == 1
    assert [c.credential_id for c in world.owners.list_credentials()] == [cred.credential_id]

    sid, response = world.sign_session("enhanced")
    enhanced = world.rp.complete_session(sid, response)
    assert enhanced.level == SecurityLevel.enhanced
    assert enhanced.user_present and not enhanced.user_verified
    assert level_for(enhanced) == SecurityLevel.enhanced

    sid, response = world.sign_session("biometric")
    bio = world.rp.complete_session(sid, response)
    assert bio.level == SecurityLevel.biometric
    assert bio.user_verified and bio.credential_id == cred.credential_id
    assert level_for(bio) == SecurityLevel.biometric
    assert world.owners.get_credential(cred.credential_id).sign_count == world.key.counter
    assert "touch" in world.user.prompts
    assert world.refusals == []


def test_pin_gives_user_verification(world: World) -> None:
    world.key = SoftAuthenticator(uv_builtin=False, pin="4821")
    world.user = ScriptedUser(pins=["4821", "4821"])
    world.enroll()
    sid, response = world.sign_session("biometric")
    assert world.rp.complete_session(sid, response).user_verified
    assert world.user.prompts.count("pin") == 2


def test_biometric_refused_when_the_key_does_not_verify(world: World) -> None:
    world.enroll()
    world.key.report_uv = False  # a key that never sets UV
    sid, response = world.sign_session("biometric")
    with pytest.raises(PresenceFailed, match=r"(?i)verif"):
        world.rp.complete_session(sid, response)


def test_biometric_refused_when_client_drops_uv_requirement(world: World) -> None:
    world.enroll()
    # A tampering client asks the key for a touch only.
    sid, response = world.sign_session("biometric", userVerification="discouraged")
    with pytest.raises(PresenceFailed, match=r"(?i)verif"):
        world.rp.complete_session(sid, response)


def test_enhanced_refused_without_user_presence(world: World) -> None:
    world.enroll()
    world.key.report_up = False
    sid, response = world.sign_session("enhanced")
    with pytest.raises(PresenceFailed, match=r"(?i)present|touch"):
        world.rp.complete_session(sid, response)


def test_replayed_assertion_refused(world: World) -> None:
    world.enroll()
    sid, response = world.sign_session("enhanced")
    world.rp.complete_session(sid, response)
    with pytest.raises(PresenceFailed, match="unknown, used or expired"):
        world.rp.complete_session(sid, response)
    other = world.rp.begin_session("enhanced")["session_id"]
    with pytest.raises(PresenceFailed, match="challenge"):
        world.rp.complete_session(other, response)


def test_assertion_for_another_challenge_refused(world: World) -> None:
    world.enroll()
    first = world.rp.begin_session("enhanced")
    second = world.rp.begin_session("enhanced")
    response = wire(client.authenticate(first["publicKey"], ORIGIN, world.user, device=world.key))
    with pytest.raises(PresenceFailed, match="Wrong challenge"):
        world.rp.complete_session(second["session_id"], response)
    # A failed attempt burns the session too (single use whatever the outcome).
    with pytest.raises(PresenceFailed, match="unknown, used or expired"):
        world.rp.complete_session(second["session_id"], response)
    assert world.rp.complete_session(first["session_id"], response).user_present


def test_expired_challenge_refused(world: World) -> None:
    world.enroll()
    sid, response = world.sign_session("enhanced")
    world.clock.advance(121)
    with pytest.raises(PresenceFailed, match="expired"):
        world.rp.complete_session(sid, response)


def test_counter_rollback_refused_and_reported(world: World) -> None:
    cred = world.enroll()
    sid, response = world.sign_session("enhanced")
    world.rp.complete_session(sid, response)
    stored = world.owners.get_credential(cred.credential_id).sign_count
    assert stored == world.key.counter > 1

    world.key.counter = 0  # a clone made from the key before it was ever used
    sid, response = world.sign_session("biometric")
    with pytest.raises(ClonedAuthenticator) as refused:
        world.rp.complete_session(sid, response)
    assert refused.value.code == "possible_cloned_authenticator"
    assert world.refusals == [(
        "possible_cloned_authenticator",
        {"credential_id": cred.credential_id.hex(), "label": "blue key",
         "stored_counter": stored, "presented_counter": world.key.counter},
    )]
    assert world.key.counter < stored
    assert world.owners.get_credential(cred.credential_id).sign_count == stored


def test_frozen_counter_refused(world: World) -> None:
    world.enroll()
    world.key.freeze_counter = True
    sid, response = world.sign_session("enhanced")
    with pytest.raises(ClonedAuthenticator):
        world.rp.complete_session(sid, response)
    assert len(world.refusals) == 1


def test_authenticator_without_counter_is_accepted(world: World) -> None:
    world.key.freeze_counter = True  # counter stays 0: a key that does not use counters
    cred = world.enroll()
    assert cred.sign_count == 0
    for _ in range(2):
        sid, response = world.sign_session("enhanced")
        assert world.rp.complete_session(sid, response).user_present
    assert world.refusals == []


def test_origin_must_match_exactly(world: World) -> None:
    world.enroll()
    begun = world.rp.begin_session("enhanced")
    # Allowed by the RP-id rules, but not the origin this daemon reported.
    response = wire(client.authenticate(begun["publicKey"], "https://sub.pacd.localhost",
                                        world.user, device=world.key))
    with pytest.raises(PresenceFailed, match="origin"):
        world.rp.complete_session(begun["session_id"], response)


def test_unenrolled_key_and_malformed_credential(world: World) -> None:
    world.enroll()
    stranger = SoftAuthenticator()
    begun = world.rp.begin_session("enhanced")
    with pytest.raises(CeremonyError, match="not enrolled"):
        client.authenticate(begun["publicKey"], ORIGIN, world.user, device=stranger)
    with pytest.raises(InvalidRequest):
        world.rp.complete_session(world.rp.begin_session("enhanced")["session_id"],
                                  {"id": "x", "type": "public-key"})


def test_session_needs_enrolled_credential_and_valid_level(world: World) -> None:
    with pytest.raises(NotFound, match="enrol"):
        world.rp.begin_session("enhanced")
    world.enroll()
    for bad in ("basic", "carbonProof", "root"):
        with pytest.raises(InvalidRequest):
            world.rp.begin_session(bad)


def test_same_key_cannot_enrol_twice(world: World) -> None:
    world.enroll()
    with pytest.raises(CeremonyError, match="already enrolled"):
        world.enroll("again", authorised="biometric")


def test_a_second_key_is_never_stored_by_its_registration(world: World) -> None:
    first = world.enroll()
    spare = SoftAuthenticator()
    begun = world.rp.begin_registration("spare", authorised="biometric")
    registration = world.rp.verify_registration(begun["registration_id"],
                                                _register(world, begun, spare))
    with pytest.raises(PresenceRequired) as refused:
        world.rp.enrol_first(registration)
    assert refused.value.extra["required_level"] == "carbonProof"
    assert [c.credential_id for c in world.owners.list_credentials()] == [first.credential_id]
    # What the approval's executor does once an enrolled key signed for it:
    second = world.rp.add_approved(registration.credential)
    assert first.credential_id != second.credential_id
    sid, response = world.sign_session("biometric", device=spare)
    assert world.rp.complete_session(sid, response).credential_id == second.credential_id


def _direct(world: World, *aaguids: bytes) -> RelyingParty:
    return RelyingParty(world.store, world.owners, RP_ID, ORIGIN, world.clock,
                        attestation=AttestationPolicy("direct", frozenset(aaguids)))


def test_direct_attestation_refuses_an_unlisted_authenticator_model(world: World) -> None:
    rp = _direct(world, bytes(16))
    begun = rp.begin_registration("packed key")
    assert begun["publicKey"]["attestation"] == "direct"
    response = _register(world, begun, SoftAuthenticator(attestation="packed"))
    with pytest.raises(Forbidden, match="not in allowed_aaguids") as refused:
        rp.verify_registration(begun["registration_id"], response)
    assert refused.value.extra["aaguid"] == str(uuid.UUID(bytes=SOFT_AAGUID))
    assert world.owners.list_credentials() == []


def test_direct_attestation_needs_a_statement_that_verifies(world: World) -> None:
    rp = _direct(world, SOFT_AAGUID)
    begun = rp.begin_registration("no statement")
    response = _register(world, begun, SoftAuthenticator(attestation="none"))
    with pytest.raises(Forbidden, match="gave none"):
        rp.verify_registration(begun["registration_id"], response)
    begun = rp.begin_registration("listed")
    stored = rp.complete_registration(
        begun["registration_id"],
        _register(world, begun, SoftAuthenticator(attestation="packed")))
    assert stored.aaguid == SOFT_AAGUID


def test_an_approved_key_is_checked_against_the_aaguid_list_again(world: World) -> None:
    world.enroll()
    begun = world.rp.begin_registration("spare", authorised="biometric")
    registration = world.rp.verify_registration(
        begun["registration_id"], _register(world, begun, SoftAuthenticator()))
    # The policy was tightened while the approval waited (a restart with a new config).
    with pytest.raises(Forbidden, match="no longer"):
        _direct(world, bytes(16)).add_approved(registration.credential)
    assert len(world.owners.list_credentials()) == 1


def _register(world: World, begun: dict[str, Any], key: SoftAuthenticator) -> dict[str, Any]:
    return wire(client.register(begun["publicKey"], begun["origin"], world.user, device=key))


def test_a_first_key_registration_is_void_once_any_key_is_enrolled(world: World) -> None:
    early = world.rp.begin_registration("early")  # nothing enrolled: no session needed
    early_response = _register(world, early, SoftAuthenticator())
    world.enroll("owner's key")
    # Dropped when the first key was enrolled.
    with pytest.raises(PresenceFailed, match="unknown, used or expired"):
        world.rp.complete_registration(early["registration_id"], early_response)
    assert len(world.owners.list_credentials()) == 1


def test_a_first_key_registration_is_checked_again_when_it_completes(world: World) -> None:
    late = world.rp.begin_registration("late")
    # A key enrolled by another path (this relying party never saw it) still counts.
    other = world.new_rp()
    begun = other.begin_registration("owner's key")
    other.complete_registration(begun["registration_id"], _register(world, begun, world.key))
    with pytest.raises(PresenceRequired) as refused:
        world.rp.complete_registration(late["registration_id"],
                                       _register(world, late, SoftAuthenticator()))
    assert refused.value.extra["required_level"] == "biometric"
    assert [c.label for c in world.owners.list_credentials()] == ["owner's key"]


def test_a_failing_enrolment_hook_stores_nothing(world: World) -> None:
    begun = world.rp.begin_registration("blue key")
    response = _register(world, begun, world.key)

    def refuse(credential: Credential) -> None:
        assert world.owners.find_credential(credential.credential_id) is not None
        raise AuditError("the audit log could not record this request")

    with pytest.raises(AuditError):
        world.rp.complete_registration(begun["registration_id"], response, refuse)
    assert world.owners.list_credentials() == []


# --- approvals and carbonProof ---------------------------------------------


ACTION_A = {"kind": "link", "from": "c1", "to": "c2", "nonce": "n-1", "expires_at": 1}
ACTION_B = {"kind": "link", "from": "c1", "to": "c3", "nonce": "n-1", "expires_at": 1}


def test_assertion_for_action_a_cannot_approve_action_b(world: World) -> None:
    world.enroll()
    response = world.sign_challenge(digest(ACTION_A))
    with pytest.raises(PresenceFailed, match="Wrong challenge"):
        world.rp.verify_for_challenge(digest(ACTION_B), response, require_uv=True)
    verified = world.rp.verify_for_challenge(digest(ACTION_A), response, require_uv=True)
    assert verified.level == SecurityLevel.biometric
    assert verified.challenge == digest(ACTION_A)


def test_approval_assertion_is_single_use_even_after_restart(world: World) -> None:
    world.enroll()
    response = world.sign_challenge(digest(ACTION_A))
    world.rp.verify_for_challenge(digest(ACTION_A), response, require_uv=True)
    with pytest.raises(PresenceFailed, match="already signed"):
        world.rp.verify_for_challenge(digest(ACTION_A), response, require_uv=True)
    world.store.close()
    restarted = world.new_rp(Store(world.path / "state.sqlite3"))
    with pytest.raises(PresenceFailed, match="already signed"):
        restarted.verify_for_challenge(digest(ACTION_A), response, require_uv=True)


def test_approval_replay_with_fresh_signature_is_refused(world: World) -> None:
    """Even a new, valid signature over an already-approved action is refused."""
    world.enroll()
    world.rp.verify_for_challenge(digest(ACTION_A), world.sign_challenge(digest(ACTION_A)), True)
    again = world.sign_challenge(digest(ACTION_A))
    with pytest.raises(PresenceFailed, match="already signed"):
        world.rp.verify_for_challenge(digest(ACTION_A), again, require_uv=True)


def test_failed_approval_attempt_does_not_burn_the_action(world: World) -> None:
    world.enroll()
    world.key.report_uv = False
    with pytest.raises(PresenceFailed):
        world.rp.verify_for_challenge(digest(ACTION_A), world.sign_challenge(digest(ACTION_A)),
                                      require_uv=True)
    world.key.report_uv = True
    ok = world.rp.verify_for_challenge(digest(ACTION_A), world.sign_challenge(digest(ACTION_A)),
                                       require_uv=True)
    assert ok.user_verified


def test_carbon_proof_fresh_uv_and_single_use(world: World) -> None:
    world.enroll()
    response = world.sign_challenge(digest(ACTION_A))
    world.clock.advance(119)
    proof = world.rp.verify_for_challenge(digest(ACTION_A), response, require_uv=False,
                                          carbon_proof=True)
    assert proof.level == SecurityLevel.carbonProof
    assert level_for(proof) == SecurityLevel.carbonProof
    with pytest.raises(PresenceFailed):
        world.rp.verify_for_challenge(digest(ACTION_A), response, True, carbon_proof=True)


def test_carbon_proof_older_than_120s_refused(world: World) -> None:
    world.enroll()
    response = world.sign_challenge(digest(ACTION_B))
    world.clock.advance(121)
    with pytest.raises(PresenceFailed, match="older than 120"):
        world.rp.verify_for_challenge(digest(ACTION_B), response, True, carbon_proof=True)


def test_carbon_proof_needs_options_from_this_process(world: World) -> None:
    world.enroll()
    response = world.sign_challenge(digest(ACTION_B))
    restarted = world.new_rp()
    with pytest.raises(PresenceFailed, match="fresh request options"):
        restarted.verify_for_challenge(digest(ACTION_B), response, True, carbon_proof=True)


def test_carbon_proof_needs_uv(world: World) -> None:
    world.enroll()
    options = world.rp.request_options_for_challenge(digest(ACTION_A), require_uv=True)
    tampered = dict(options["publicKey"], userVerification="discouraged")
    response = wire(client.authenticate(tampered, ORIGIN, world.user, device=world.key))
    with pytest.raises(PresenceFailed, match=r"(?i)verif"):
        world.rp.verify_for_challenge(digest(ACTION_A), response, True, carbon_proof=True)


# --- the client ceremony's errors -------------------------------------------


def test_wrong_pin_then_blocked(world: World) -> None:
    world.key = SoftAuthenticator(uv_builtin=False, pin="4821")
    world.user = ScriptedUser(pins=["4821"])
    world.enroll()
    world.key.pin_retries = 2
    world.user.pins = ["0000"]
    with pytest.raises(PinInvalid):
        world.sign_session("biometric")
    world.user.pins = ["0000"]
    with pytest.raises(PinBlocked):
        world.sign_session("biometric")
    world.user.pins = ["4821"]
    with pytest.raises(PinBlocked):
        world.sign_session("biometric")


def test_no_pin_entered_is_a_cancel(world: World) -> None:
    world.key = SoftAuthenticator(uv_builtin=False, pin="4821")
    world.user = ScriptedUser(pins=["4821"])
    world.enroll()
    with pytest.raises(CeremonyCancelled):
        world.sign_session("biometric")


def test_cancel_while_waiting_for_touch(world: World) -> None:
    world.enroll()
    world.key.presence = "manual"
    cancel = threading.Event()
    timer = threading.Timer(0.2, cancel.set)
    timer.start()
    begun = world.rp.begin_session("enhanced")
    with pytest.raises(CeremonyCancelled):
        client.authenticate(begun["publicKey"], ORIGIN, world.user, device=world.key,
                            cancel=cancel)
    timer.join()


def test_manual_touch_completes(world: World) -> None:
    world.enroll()
    world.key.presence = "manual"
    toucher = threading.Timer(0.1, world.key.touch.set)
    toucher.start()
    sid, response = world.sign_session("enhanced")
    toucher.join()
    assert world.rp.complete_session(sid, response).user_present


def test_timeout_when_nobody_touches(world: World) -> None:
    world.enroll()
    world.key.presence = "manual"
    begun = world.rp.begin_session("enhanced")
    with pytest.raises(CeremonyTimeout):
        client.authenticate(begun["publicKey"], ORIGIN, world.user, device=world.key,
                            timeout_s=0.3)


def test_authenticator_side_timeout(world: World) -> None:
    world.enroll()
    world.key.presence = "never"
    world.key.touch_timeout_s = 0.2
    begun = world.rp.begin_session("enhanced")
    with pytest.raises(CeremonyTimeout):
        client.authenticate(begun["publicKey"], ORIGIN, world.user, device=world.key)


def test_no_device_found_explains_udev(world: World) -> None:
    if client.list_authenticators():
        pytest.skip("a real security key is connected")
    begun = world.rp.begin_registration("usb")
    with pytest.raises(NoAuthenticator) as missing:
        client.register(begun["publicKey"], ORIGIN, world.user)
    assert "security key" in missing.value.message
    assert missing.value.message == "no FIDO2 security key found: " + client.hidraw_diagnosis()


def test_unfinished_ceremonies_of_one_client_cannot_lock_the_owner_out(world: World) -> None:
    world.enroll()
    flood = [world.rp.begin_session("enhanced", "pid:666")["session_id"] for _ in range(200)]
    # The owner's own ceremony, begun after the flood, completes.
    sid, response = world.sign_session("enhanced")
    assert world.rp.complete_session(sid, response).user_present
    # The flooding client kept only its newest few; its oldest were dropped first.
    kept = [s for s in flood if s in world.rp._pending]
    assert kept == flood[-4:]
    # Many clients past the global bound: the oldest ceremonies go, a new one is served.
    for client_no in range(100):
        world.rp.begin_session("enhanced", f"pid:{client_no}")
    assert len(world.rp._pending) == 64
    sid, response = world.sign_session("enhanced")
    assert world.rp.complete_session(sid, response).user_present
