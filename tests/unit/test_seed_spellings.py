"""The seed's camelCase field names (as Swift's Codable writes them) are read
like pacd's snake_case ones; pacd writes snake_case only."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacd.core import fields as f
from pacd.core.canonical import canonical_json
from pacd.core.models import (
    POLICY_ALIASES,
    AgentDomain,
    Capability,
    DataAccessLevel,
    IsolationLevel,
    SecurityPolicy,
)
from pacd.core.plugins import (
    ENDPOINT_ALIASES,
    RATE_LIMIT_ALIASES,
    SCHEMA_ALIASES,
    SECURITY_ALIASES,
    parse_plugin_schema,
    validate_plugin,
)
from pacd.core.spec import (
    AGENT_ALIASES,
    CONCERN_ALIASES,
    SPEC_ALIASES,
    parse_container_spec,
)
from pacd.errors import SpecError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEED_ID = "E621E1F8-C36C-495A-93FC-0C247A3E6E5F"

#: the seed's Text Formatter, every field as Swift's Codable names it, plus its id
SEED_TEXT_FORMATTER: dict[str, Any] = {
    "id": SEED_ID,
    "name": "Text Formatter",
    "version": "1.0.0",
    "requiredCapabilities": ["textGeneration"],
    "endpoints": [
        {"path": "/format", "method": "POST", "requiresAuth": True,
         "rateLimit": {"requestsPerMinute": 60, "burstSize": 10}},
    ],
    "securityRequirements": {
        "carbonBasedAuthRequired": True,
        "domainIsolation": True,
        "encryptedTransport": True,
        "auditLog": True,
        "maxDataAccess": "readOnly",
    },
}


def load(path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / path).read_text())
    return data


def refusal(parse: Callable[[Any], object], data: Any) -> list[str]:
    with pytest.raises(SpecError) as raised:
        parse(data)
    return raised.value.errors


# A plugin schema's shape: the aliases of each object and its nested objects.
Shape = tuple[Mapping[str, str], Mapping[str, Any]]
PLUGIN_SHAPE: Shape = (SCHEMA_ALIASES, {
    "endpoints": (ENDPOINT_ALIASES, {"rate_limit": (RATE_LIMIT_ALIASES, {})}),
    "security_requirements": (SECURITY_ALIASES, {}),
})
SPEC_SHAPE: Shape = (SPEC_ALIASES, {
    "policy": (POLICY_ALIASES, {}),
    "agents": (AGENT_ALIASES, {}),
    "concerns": (CONCERN_ALIASES, {}),
})


def respell(data: Any, shape: Shape, camel: Callable[[str], bool]) -> Any:
    """``data`` (snake_case) with each field renamed to its other spelling when ``camel(name)``."""
    aliases, children = shape
    if isinstance(data, list):
        return [respell(item, shape, camel) for item in data]
    if not isinstance(data, dict):
        return data
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in children:
            value = respell(value, children[key], camel)
        out[aliases[key] if key in aliases and camel(key) else key] = value
    return out


def test_the_seeds_camel_case_text_formatter_is_the_same_plugin_as_its_snake_case_twin() -> None:
    assert load("plugins/text-formatter-seed.json") == SEED_TEXT_FORMATTER
    snake = load("plugins/text-formatter.json") | {"id": SEED_ID}
    seed = parse_plugin_schema(SEED_TEXT_FORMATTER)
    assert seed == parse_plugin_schema(snake)
    # the seed's id is kept (in UUID's canonical lowercase), not replaced by a content id
    assert seed.id == SEED_ID.lower()
    # pacd writes one spelling: what it stores and signs is the snake_case schema
    written = seed.to_json()
    assert canonical_json(written) == canonical_json(parse_plugin_schema(snake).to_json())
    assert "required_capabilities" in written and "requiredCapabilities" not in written
    assert written["endpoints"][0]["rate_limit"] == {"requests_per_minute": 60, "burst_size": 10}
    assert parse_plugin_schema(written) == seed


def test_a_seed_id_that_is_not_a_uuid_is_refused() -> None:
    errors = refusal(parse_plugin_schema, SEED_TEXT_FORMATTER | {"id": "text-formatter"})
    assert errors == ["id: 'text-formatter' is not a UUID"]


def test_both_spellings_of_one_field_in_one_object_are_refused_naming_both() -> None:
    schema = json.loads(json.dumps(SEED_TEXT_FORMATTER))
    schema["endpoints"][0]["requires_auth"] = True
    schema["securityRequirements"]["audit_log"] = True
    errors = refusal(parse_plugin_schema, schema)
    assert errors == [
        "endpoints[0].requiresAuth: 'requires_auth' and 'requiresAuth' are two spellings of one "
        "field; write only one of them",
        "securityRequirements.auditLog: 'audit_log' and 'auditLog' are two spellings of one "
        "field; write only one of them",
    ]
    spec = load("specs/home.json")
    spec["agents"][0]["dataAccessLevel"] = "none"
    spec["policy"] = {"allow_plugins": True, "allowPlugins": False}
    errors = refusal(parse_container_spec, spec)
    assert any("'data_access' and 'dataAccessLevel'" in e and e.startswith(
        "agents[0].dataAccessLevel:") for e in errors), errors
    assert any("'allow_plugins' and 'allowPlugins'" in e and e.startswith(
        "policy.allowPlugins:") for e in errors), errors
    mixed_top = load("specs/home.json") | {"agentDomains": []}
    assert any("'agents' and 'agentDomains'" in e for e in refusal(parse_container_spec,
                                                                   mixed_top))


def test_an_error_in_a_camel_case_field_names_the_path_as_written() -> None:
    schema = json.loads(json.dumps(SEED_TEXT_FORMATTER))
    schema["endpoints"][0]["rateLimit"] = {"requestsPerMinute": "sixty"}
    schema["securityRequirements"]["maxDataAccess"] = "everything"
    schema["requiredCapabilities"] = ["mindReading"]
    schema["unknownThing"] = 1
    errors = refusal(parse_plugin_schema, schema)
    assert "requiredCapabilities[0]: 'mindReading' is not one of" in "\n".join(errors)
    assert "endpoints[0].rateLimit.requestsPerMinute: expected an integer, got string" in errors
    # a missing field of a camelCase object is named in camelCase too
    assert "endpoints[0].rateLimit.burstSize: is required" in errors
    assert any(e.startswith("securityRequirements.maxDataAccess: 'everything' is not one of")
               for e in errors), errors
    unknown = next(e for e in errors if e.startswith("unknownThing:"))
    assert "requiredCapabilities" in unknown and "securityRequirements" in unknown

    spec = respell(load("specs/home.json"), SPEC_SHAPE, lambda _: True)
    spec["securityPolicy"] = {"maxConcurrentConnections": 0, "allowExternalAPIs": "yes",
                              "trustedDomains": ["Not A Host"]}
    spec["agentDomains"][1]["allowedConnections"] = ["nobody"]
    spec["agentDomains"][0]["dataAccessLevel"] = "all"
    spec["concernDomains"][1]["connectedAgents"] = ["ghost"]
    errors = refusal(parse_container_spec, spec)
    for prefix in ("securityPolicy.maxConcurrentConnections: 0 is out of range",
                   "securityPolicy.allowExternalAPIs: expected a boolean",
                   "securityPolicy.trustedDomains[0]:",
                   "agentDomains[1].allowedConnections[0]: unknown agent 'nobody'",
                   "agentDomains[0].dataAccessLevel: 'all' is not one of",
                   "concernDomains[1].connectedAgents[0]: unknown agent 'ghost'"):
        assert any(e.startswith(prefix) for e in errors), (prefix, errors)
    assert not any("_" in e.split(":")[0] for e in errors), errors


def test_a_container_spec_in_the_seeds_spelling_equals_the_snake_case_one() -> None:
    snake = load("specs/home.json")
    snake["policy"] = {"allow_plugins": True, "allow_external_apis": True,
                       "trusted_domains": ["api.example.org"], "data_retention_days": 7}
    camel = respell(snake, SPEC_SHAPE, lambda _: True)
    assert set(camel) == {"name", "securityPolicy", "agentDomains", "concernDomains"}
    assert set(camel["agentDomains"][0]) == {"name", "image", "capabilities", "dataAccessLevel",
                                             "isolation", "allowedConnections"}
    assert set(camel["concernDomains"][0]) == {"name", "category", "scope", "connectedAgents",
                                               "crossContainerPolicy"}
    assert set(camel["securityPolicy"]) == {"allowPlugins", "allowExternalAPIs",
                                            "trustedDomains", "dataRetentionDays"}
    parsed = parse_container_spec(camel)
    assert parsed == parse_container_spec(snake)
    # written back out in the one spelling pacd writes
    assert parsed.to_json() == parse_container_spec(snake).to_json()
    assert "allow_external_apis" in parsed.to_json()["policy"]


def test_a_policy_object_takes_the_seeds_names() -> None:
    policy = SecurityPolicy.custom(allowPlugins=True, maxConcurrentConnections=3)
    assert policy == SecurityPolicy.custom(allow_plugins=True, max_concurrent_connections=3)
    assert "allowPlugins" not in policy.to_json()


def test_camel_case_is_derived_with_the_seeds_exceptions() -> None:
    assert f.camel_case("requires_auth") == "requiresAuth"
    assert f.camel_case("carbon_based_auth_required") == "carbonBasedAuthRequired"
    assert f.spellings(("name", "rate_limit")) == {"rate_limit": "rateLimit"}
    assert POLICY_ALIASES["allow_external_apis"] == "allowExternalAPIs"
    assert AGENT_ALIASES == {"data_access": "dataAccessLevel", "connections": "allowedConnections"}


@given(st.data())
def test_any_mix_of_spellings_across_fields_reads_the_same(data: st.DataObject) -> None:
    def camel(_: str) -> bool:
        return data.draw(st.booleans())

    snake_plugin = load("plugins/text-formatter.json")
    assert parse_plugin_schema(respell(snake_plugin, PLUGIN_SHAPE, camel)) == (
        parse_plugin_schema(snake_plugin))
    snake_spec = load("specs/home.json") | {"policy": {"allow_plugins": True,
                                                       "data_retention_days": 30}}
    assert parse_container_spec(respell(snake_spec, SPEC_SHAPE, camel)) == (
        parse_container_spec(snake_spec))


def test_the_seeds_rejected_plugin_in_camel_case_is_refused_with_reasons_as_written() -> None:
    snake = load("plugins/external-data-harvester.json")
    camel = respell(snake, PLUGIN_SHAPE, lambda _: True)
    schema = parse_plugin_schema(camel)
    assert schema == parse_plugin_schema(snake)
    analyst = AgentDomain("a", "analyst", "localhost/agent:1", (Capability.dataAnalysis,), (),
                          DataAccessLevel.readWrite, IsolationLevel.collaborative)
    policy = SecurityPolicy.custom(allow_plugins=True)
    reasons = validate_plugin(schema, policy, analyst, written=camel)
    # the same reasons as for the snake_case document, each naming the field as written
    canonical = validate_plugin(schema, policy, analyst)
    assert len(reasons) == len(canonical) >= 5
    paths = [reason.split(": ")[0] for reason in reasons]
    for path in ("securityRequirements.carbonBasedAuthRequired",
                 "securityRequirements.domainIsolation", "securityRequirements.maxDataAccess",
                 "requiredCapabilities[0]", "endpoints[0].requiresAuth"):
        assert path in paths, (path, reasons)
    assert not any("_" in path for path in paths if path != "policy.allow_plugins"), paths
    # written in snake_case, the reasons are unchanged
    assert validate_plugin(schema, policy, analyst, written=snake) == canonical
