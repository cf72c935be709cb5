from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacd.core.canonical import canonical_json
from pacd.core.models import (
    EXTERNAL_CAPABILITIES,
    AgentDomain,
    Capability,
    CarbonBasedEntity,
    ConcernCategory,
    ConcernDomain,
    ConnectionType,
    CrossContainerPolicy,
    DataAccessLevel,
    IsolationLevel,
    Owner,
    PersonalAIContainer,
    PluginAPISchema,
    Scope,
    SecurityLevel,
    SecurityPolicy,
    SharedDataPacket,
)
from pacd.errors import SpecError

LEVELS = list(SecurityLevel)


def test_enum_values_are_the_seed_names() -> None:
    assert [c.value for c in Capability] == [
        "dataAnalysis", "textGeneration", "imageProcessing", "codeGeneration", "webSearch",
        "fileAccess", "networkAccess", "databaseQuery", "apiCall"]
    assert [d.value for d in DataAccessLevel] == ["none", "readOnly", "readWrite", "crossDomain"]
    assert [i.value for i in IsolationLevel] == ["strict", "managed", "collaborative"]
    assert [c.value for c in ConcernCategory] == [
        "personal", "professional", "health", "financial", "social", "creative", "learning",
        "technical"]
    assert [s.value for s in Scope] == ["local", "shared", "federated"]
    assert [p.value for p in CrossContainerPolicy] == ["isolated", "ownerOnly", "trusted",
                                                       "public"]
    assert [c.value for c in ConnectionType] == ["ownerShared", "trusted", "federated"]
    assert [level.value for level in LEVELS] == ["basic", "enhanced", "biometric",
                                                 "carbonProof"]
    # str enums format as their value, so they go straight into JSON and messages
    assert f"{SecurityLevel.carbonProof}" == "carbonProof"
    external = {Capability.webSearch, Capability.networkAccess, Capability.apiCall}
    assert external == EXTERNAL_CAPABILITIES


@given(st.sampled_from(LEVELS), st.sampled_from(LEVELS))
def test_security_level_satisfies_is_the_rank_order(held: SecurityLevel,
                                                    needed: SecurityLevel) -> None:
    assert held.satisfies(needed) == (LEVELS.index(held) >= LEVELS.index(needed))
    assert held.rank == LEVELS.index(held)


def test_security_level_extremes() -> None:
    assert SecurityLevel.carbonProof.satisfies(SecurityLevel.basic)
    assert not SecurityLevel.basic.satisfies(SecurityLevel.enhanced)
    assert not SecurityLevel.biometric.satisfies(SecurityLevel.carbonProof)


def test_data_access_read_write_flags() -> None:
    assert [d.can_read for d in DataAccessLevel] == [False, True, True, True]
    assert [d.can_write for d in DataAccessLevel] == [False, False, True, True]
    assert [d.rank for d in DataAccessLevel] == [0, 1, 2, 3]


def test_owner_has_no_biometric_field_and_round_trips() -> None:
    names = {fld.name for fld in dataclasses.fields(Owner)}
    assert names == {"id", "name", "created_at"}
    assert CarbonBasedEntity is Owner
    owner = Owner("8f7c7f5e-0d5c-4bb0-9a55-5b1d1f7e4c11", "Ada", 1700000000.5)
    assert Owner.from_json(owner.to_json()) == owner


def test_owner_from_json_reports_every_problem() -> None:
    with pytest.raises(SpecError) as info:
        Owner.from_json({"id": 3, "created_at": float("nan"), "extra": True})
    errors = info.value.errors
    assert "id: expected a string, got integer" in errors
    assert "name: is required" in errors
    assert "created_at: must be a finite, non-negative number of seconds" in errors
    assert any(e.startswith("extra: unknown field") for e in errors)
    with pytest.raises(SpecError, match="created_at: expected a number, got boolean"):
        Owner.from_json({"id": "x", "name": "n", "created_at": True})


# --- policy ----------------------------------------------------------------


def test_default_policy_is_the_seed() -> None:
    p = SecurityPolicy.default()
    assert p.to_json() == {
        "requires_carbon_based_auth": True,
        "max_concurrent_connections": 10,
        "allowed_network_ports": [8080, 8443],
        "encryption_required": True,
        "audit_logging": True,
        "data_retention_days": 90,
        "allow_plugins": False,
        "allow_external_apis": False,
        "trusted_domains": [],
    }
    assert p.preset_name() == "default"


def test_strict_policy_is_more_restrictive_than_default() -> None:
    d, s = SecurityPolicy.default(), SecurityPolicy.strict()
    assert s.max_concurrent_connections < d.max_concurrent_connections
    assert set(s.allowed_network_ports) < set(d.allowed_network_ports)
    assert s.data_retention_days < d.data_retention_days
    assert not s.allow_plugins and not s.allow_external_apis and s.trusted_domains == ()
    assert s.encryption_required and s.audit_logging and s.requires_carbon_based_auth
    assert s.preset_name() == "strict"
    assert SecurityPolicy.preset("strict") == s


def test_custom_policy_keeps_defaults_for_omitted_fields() -> None:
    p = SecurityPolicy.custom(allow_plugins=True, trusted_domains=["api.example.org"],
                              allowed_network_ports=[443])
    assert p.allow_plugins and p.trusted_domains == ("api.example.org",)
    assert p.allowed_network_ports == (443,)
    assert p.data_retention_days == 90
    assert p.preset_name() is None


def test_custom_policy_collects_every_error_with_its_path() -> None:
    with pytest.raises(SpecError) as info:
        SecurityPolicy.custom(
            requires_carbon_based_auth=False,
            max_concurrent_connections=0,
            allowed_network_ports=[80, 70000, 80, "x"],
            data_retention_days=0,
            encryption_required="yes",
            trusted_domains=["*.org", "ok.example.org", "ok.example.org", 5],
            colour="red",
        )
    errors = info.value.errors
    assert errors == [
        "policy.colour: unknown field (expected one of requires_carbon_based_auth, "
        "max_concurrent_connections, allowed_network_ports, encryption_required, audit_logging, "
        "data_retention_days, allow_plugins, allow_external_apis, trusted_domains)",
        "policy.encryption_required: expected a boolean, got string",
        "policy.requires_carbon_based_auth: must be true: every pacd container requires "
        "carbon-based authentication",
        "policy.max_concurrent_connections: 0 is out of range 1..1000",
        "policy.data_retention_days: 0 is out of range 1..36500",
        "policy.allowed_network_ports[1]: 70000 is out of range 1..65535",
        "policy.allowed_network_ports[2]: duplicate port 80",
        "policy.allowed_network_ports[3]: expected an integer, got string",
        "policy.trusted_domains[0]: '*.org' is not a lowercase host name "
        "(like api.example.org) or *.example.org for the names below it",
        "policy.trusted_domains[2]: duplicate domain 'ok.example.org'",
        "policy.trusted_domains[3]: expected a string, got integer",
    ]
    assert str(info.value).startswith("security policy is invalid (11 problems): policy.colour")


def test_policy_cannot_be_constructed_invalid() -> None:
    with pytest.raises(SpecError, match="requires_carbon_based_auth: must be true"):
        SecurityPolicy(requires_carbon_based_auth=False)
    with pytest.raises(SpecError, match="max_concurrent_connections: expected an integer"):
        SecurityPolicy(max_concurrent_connections=True)
    with pytest.raises(SpecError, match="allowed_network_ports: expected an array, got integer"):
        SecurityPolicy(allowed_network_ports=8080)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="trusted_domains: expected an array, got string"):
        SecurityPolicy(trusted_domains="example.org")  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="'nope' is not one of default, strict"):
        SecurityPolicy.preset("nope")


@pytest.mark.parametrize("port", [1, 65535])
def test_port_bounds_are_inclusive(port: int) -> None:
    assert SecurityPolicy.custom(allowed_network_ports=[port]).allowed_network_ports == (port,)


# --- containers, plugins, packets -----------------------------------------


def _container() -> PersonalAIContainer:
    a = AgentDomain("a-id", "writer", "localhost/agent:latest", (Capability.textGeneration,),
                    (), DataAccessLevel.readOnly, IsolationLevel.strict)
    c = ConcernDomain("c-id", "personal", ConcernCategory.personal, Scope.local, ("writer",),
                      CrossContainerPolicy.isolated)
    return PersonalAIContainer("cid", "home", "oid", (a,), (c,), SecurityPolicy.strict(), 5.0)


def test_container_lookups_and_json() -> None:
    c = _container()
    assert c.agent("writer") is c.agents[0]
    assert c.agent("nobody") is None
    assert c.concern("personal") is c.concerns[0]
    assert c.concern("work") is None
    assert c.concerns_of("writer") == c.concerns
    assert c.concerns_of("nobody") == ()
    body = c.to_json()
    assert body["agents"][0] == {
        "id": "a-id", "name": "writer", "image": "localhost/agent:latest",
        "capabilities": ["textGeneration"], "allowed_connections": [],
        "data_access": "readOnly", "isolation": "strict"}
    assert body["concerns"][0] == {
        "id": "c-id", "name": "personal", "category": "personal", "scope": "local",
        "connected_agents": ["writer"], "cross_container": "isolated"}
    assert body["policy"] == SecurityPolicy.strict().to_json()
    canonical_json(body)  # must be plain JSON


@pytest.mark.parametrize(("name", "slug"), [
    ("Text Formatter", "text-formatter"),
    ("  ***  ", "plugin"),
    ("Ünïcode Tool v2", "n-code-tool-v2"),
    ("x" * 80, "x" * 63),
])
def test_plugin_slug_is_a_dns_label(name: str, slug: str) -> None:
    schema = PluginAPISchema("id", name, "1", (), ())
    assert schema.slug == slug


def test_plugin_to_json_includes_image_only_when_set() -> None:
    assert "image" not in PluginAPISchema("id", "P", "1", (), ()).to_json()
    assert PluginAPISchema("id", "P", "1", (), (), image="localhost/p:1").to_json()["image"] == (
        "localhost/p:1")


@given(st.binary(), st.binary(min_size=1, max_size=32), st.binary(max_size=64),
       st.floats(min_value=0, max_value=4e9, allow_nan=False),
       st.sampled_from(list(ConnectionType)))
def test_packet_round_trips(data: bytes, nonce: bytes, sig: bytes, stamp: float,
                            kind: ConnectionType) -> None:
    packet = SharedDataPacket("c1", "o1", "d1", data, kind, stamp, nonce, sig)
    assert SharedDataPacket.from_json(packet.to_json()) == packet


def test_packet_signed_payload_excludes_only_the_signature() -> None:
    a = SharedDataPacket("c1", "o1", "d1", b"data", ConnectionType.ownerShared, 1.0, b"n", b"s1")
    b = dataclasses.replace(a, signature=b"s2")
    c = dataclasses.replace(a, nonce=b"m")
    assert a.signed_payload() == b.signed_payload()
    assert a.signed_payload() != c.signed_payload()
    assert b"signature" not in a.signed_payload()


def test_packet_from_json_refuses_bad_fields() -> None:
    good = SharedDataPacket("c1", "o1", "d1", b"x", ConnectionType.trusted, 1.0, b"n").to_json()
    with pytest.raises(SpecError) as info:
        SharedDataPacket.from_json({**good, "nonce": "!!!", "signature": 7,
                                    "connection_type": "public", "timestamp": -1})
    assert info.value.errors == [
        "connection_type: 'public' is not one of ownerShared, trusted, federated",
        "timestamp: must be a finite, non-negative number of seconds",
        "nonce: is not valid base64url",
        "signature: expected a base64url string, got integer",
    ]
    with pytest.raises(SpecError, match="packet: expected an object, got array"):
        SharedDataPacket.from_json([])
