"""Owner registry and the evidence → level mapping."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fido2 import cbor
from fido2.cose import ES256

from pacd.core.models import SecurityLevel
from pacd.core.rules import Action, required_level
from pacd.errors import Conflict, InvalidRequest, NotFound, PresenceRequired
from pacd.presence.evidence import VerifiedPresence
from pacd.presence.levels import allows, ceremony_for, ceremony_for_action, level_for, require
from pacd.presence.owner import Credential, OwnerRegistry
from pacd.store import Store


def _cose() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    cose = ES256.from_cryptography_key(key)  # type: ignore[no-untyped-call]
    return cbor.encode(dict(cose))


def _cred(cid: bytes, count: int = 0) -> Credential:
    return Credential(cid, _cose(), count, b"\x00" * 16, True, "key", 1.0)


@pytest.fixture
def owners(tmp_path: Path) -> OwnerRegistry:
    return OwnerRegistry(Store(tmp_path / "state.sqlite3"))


def test_one_owner_per_daemon(owners: OwnerRegistry) -> None:
    assert owners.get_owner() is None
    owner = owners.create_owner("  Ada  ", 10.0)
    assert (owner.name, owner.created_at) == ("Ada", 10.0)
    assert owners.get_owner() == owner
    with pytest.raises(Conflict):
        owners.create_owner("Eve", 11.0)
    assert owners.get_owner() == owner


@pytest.mark.parametrize("name", ["", "   ", "a\x00b", "x" * 121, 42])
def test_owner_name_validated(owners: OwnerRegistry, name: object) -> None:
    with pytest.raises(InvalidRequest):
        owners.create_owner(name, 1.0)  # type: ignore[arg-type]


def test_credentials_need_owner_and_are_unique(owners: OwnerRegistry) -> None:
    with pytest.raises(NotFound, match="owner"):
        owners.add_credential(_cred(b"a"))
    owners.create_owner("Ada", 1.0)
    stored = owners.add_credential(_cred(b"a", 5))
    assert stored.sign_count == 5 and owners.get_credential(b"a") == stored
    with pytest.raises(Conflict):
        owners.add_credential(_cred(b"a"))
    with pytest.raises(InvalidRequest, match="COSE"):
        owners.add_credential(dataclasses.replace(_cred(b"b"), public_key=b"\x01"))
    with pytest.raises(NotFound):
        owners.get_credential(b"zzz")


def test_no_biometric_data_anywhere() -> None:
    names = {f.name for f in dataclasses.fields(Credential)}
    assert names == {"credential_id", "public_key", "sign_count", "aaguid", "uv_capable",
                     "label", "created_at", "kind"}


def test_sign_count_only_moves_forward(owners: OwnerRegistry) -> None:
    owners.create_owner("Ada", 1.0)
    owners.add_credential(_cred(b"a", 5))
    owners.update_sign_count(b"a", 6)
    with pytest.raises(Conflict):
        owners.update_sign_count(b"a", 6)
    with pytest.raises(Conflict):
        owners.update_sign_count(b"a", 2)
    assert owners.get_credential(b"a").sign_count == 6
    owners.remove_credential(b"a")
    assert owners.list_credentials() == []


def _vp(level: SecurityLevel, up: bool, uv: bool, method: str = "fido2",
        challenge: bytes | None = None) -> VerifiedPresence:
    return VerifiedPresence(level, b"c", up, uv, method, challenge)


def test_level_for_evidence() -> None:
    assert level_for(None) == SecurityLevel.basic
    assert level_for(_vp(SecurityLevel.enhanced, False, False)) == SecurityLevel.basic
    assert level_for(_vp(SecurityLevel.enhanced, True, False)) == SecurityLevel.enhanced
    # Claims above the facts are cut down to the facts.
    assert level_for(_vp(SecurityLevel.biometric, True, False)) == SecurityLevel.enhanced
    assert level_for(_vp(SecurityLevel.biometric, True, True)) == SecurityLevel.biometric
    # Facts above the claim are cut down to the claim.
    assert level_for(_vp(SecurityLevel.enhanced, True, True)) == SecurityLevel.enhanced
    assert level_for(_vp(SecurityLevel.carbonProof, True, True, challenge=b"d" * 32)) \
        == SecurityLevel.carbonProof
    assert level_for(_vp(SecurityLevel.carbonProof, True, True)) == SecurityLevel.biometric
    # A fingerprint match signs nothing: never a carbonProof.
    assert level_for(_vp(SecurityLevel.carbonProof, True, True, "fprintd", b"d" * 32)) \
        == SecurityLevel.biometric


def test_ceremonies_follow_core_rules() -> None:
    for action in Action:
        ceremony = ceremony_for_action(action)
        assert ceremony.level == required_level(action)
    assert ceremony_for("basic").needed is False
    assert ceremony_for("enhanced").require_uv is False
    assert ceremony_for("biometric").require_uv and not ceremony_for("biometric").bound_to_action
    assert ceremony_for("carbonProof").bound_to_action


def test_require_and_allows() -> None:
    bio = _vp(SecurityLevel.biometric, True, True)
    assert allows(bio, Action.create_container)
    assert not allows(bio, Action.link_containers)
    assert allows(None, Action.status)
    require(SecurityLevel.biometric, Action.create_container)
    with pytest.raises(PresenceRequired) as needed:
        require(SecurityLevel.enhanced, Action.create_container)
    assert needed.value.required_level == "biometric"
