from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacd.core.models import (
    AgentDomain,
    APIEndpoint,
    Capability,
    DataAccessLevel,
    HttpMethod,
    IsolationLevel,
    PluginAPISchema,
    PluginSecurityRequirements,
    RateLimit,
    SecurityPolicy,
)
from pacd.core.plugins import content_id, parse_plugin_schema, validate_plugin
from pacd.core.spec import parse_plugin_schema as reexported
from pacd.errors import SpecError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"
PLUGINS_ON = SecurityPolicy.custom(allow_plugins=True)


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return data


def text_formatter() -> PluginAPISchema:
    return parse_plugin_schema(load("text-formatter.json"))


def writer(access: DataAccessLevel = DataAccessLevel.readOnly,
           caps: tuple[Capability, ...] = (Capability.textGeneration,)) -> AgentDomain:
    return AgentDomain("w", "writer", "localhost/agent:1", caps, (), access,
                       IsolationLevel.strict)


def test_text_formatter_parses_as_the_seed_describes() -> None:
    tf = text_formatter()
    assert reexported is parse_plugin_schema
    assert (tf.name, tf.version, tf.required_capabilities) == (
        "Text Formatter", "1.0.0", (Capability.textGeneration,))
    assert tf.endpoints == (APIEndpoint("/format", HttpMethod.POST, True, RateLimit(60, 10)),)
    assert tf.security_requirements == PluginSecurityRequirements()
    assert tf.slug == "text-formatter"
    assert tf.id == content_id(tf)


#: the seed's two example plugins as it writes them, field for field (its
#: Text Formatter with an id added): neither states a version, the harvester no endpoints
SEED_TEXT_FORMATTER = {
    "id": "E621E1F8-C36C-495A-93FC-0C247A3E6E5F",
    "name": "Text Formatter",
    "requiredCapabilities": ["textGeneration"],
    "endpoints": [{"path": "/format", "method": "POST", "requiresAuth": True,
                   "rateLimit": {"requestsPerMinute": 60, "burstSize": 10}}],
    "securityRequirements": {"carbonBasedAuthRequired": True, "domainIsolation": True,
                             "maxDataAccess": "readOnly"},
}
SEED_HARVESTER = {
    "name": "External Data Harvester",
    "requiredCapabilities": ["networkAccess", "fileAccess", "databaseQuery"],
    "securityRequirements": {"carbonBasedAuthRequired": False, "domainIsolation": False,
                             "maxDataAccess": "crossDomain"},
}


def test_the_seeds_text_formatter_as_written_parses_and_passes_without_a_version() -> None:
    tf = parse_plugin_schema(SEED_TEXT_FORMATTER)
    assert (tf.id, tf.name, tf.version, tf.title) == (
        "e621e1f8-c36c-495a-93fc-0c247a3e6e5f", "Text Formatter", "", "Text Formatter")
    assert tf.endpoints == (APIEndpoint("/format", HttpMethod.POST, True, RateLimit(60, 10)),)
    assert validate_plugin(tf, PLUGINS_ON, writer()) == []
    # written without a version, as given, and read back the same
    assert "version" not in tf.to_json()
    assert parse_plugin_schema(tf.to_json()) == tf
    assert text_formatter().title == "Text Formatter 1.0.0"


def test_the_seeds_harvester_as_written_reaches_validation_with_every_reason() -> None:
    harvester = parse_plugin_schema(SEED_HARVESTER)
    assert harvester.endpoints == ()
    reasons = validate_plugin(harvester, PLUGINS_ON, writer(), written=SEED_HARVESTER)
    assert [r.split(":")[0] for r in reasons] == [
        "securityRequirements.carbonBasedAuthRequired", "securityRequirements.domainIsolation",
        "securityRequirements.maxDataAccess", "requiredCapabilities[0]",
        "requiredCapabilities[0]", "requiredCapabilities[1]", "requiredCapabilities[2]",
        "endpoints"]
    assert reasons[-1] == "endpoints: a plugin must declare at least one endpoint"


def test_text_formatter_passes_when_plugins_are_allowed() -> None:
    tf = text_formatter()
    assert validate_plugin(tf, PLUGINS_ON) == []
    assert validate_plugin(tf, PLUGINS_ON, writer()) == []


def test_text_formatter_fails_the_default_policy_for_exactly_one_reason() -> None:
    assert validate_plugin(text_formatter(), SecurityPolicy.default()) == [
        "policy.allow_plugins: this container's policy does not allow plugins"]


def test_harvester_fails_with_every_reason_listed_separately() -> None:
    harvester = parse_plugin_schema(load("external-data-harvester.json"))
    errors = validate_plugin(harvester, SecurityPolicy.default(), writer())
    assert errors == [
        "policy.allow_plugins: this container's policy does not allow plugins",
        "security_requirements.carbon_based_auth_required: must be true (only the verified "
        "human owner may use a plugin)",
        "security_requirements.domain_isolation: must be true (a plugin may not break domain "
        "isolation)",
        "security_requirements.max_data_access: crossDomain is never granted to a plugin "
        "(it would cross concern isolation)",
        "required_capabilities[0]: networkAccess is not a capability of agent 'writer'",
        "required_capabilities[0]: networkAccess reaches outside this machine, which the "
        "policy does not allow (allow_external_apis is false)",
        "required_capabilities[1]: fileAccess is not a capability of agent 'writer'",
        "required_capabilities[2]: databaseQuery is not a capability of agent 'writer'",
        "endpoints[0].requires_auth: must be true (every plugin endpoint needs carbon-based "
        "authentication)",
        "endpoints[0].rate_limit: is required (every plugin endpoint is rate limited)",
    ]
    # even a permissive policy and no agent to compare against leave the seed's three reasons
    lenient = SecurityPolicy.custom(allow_plugins=True, allow_external_apis=True)
    remaining = validate_plugin(harvester, lenient)
    assert {e.split(":")[0] for e in remaining} >= {
        "security_requirements.carbon_based_auth_required",
        "security_requirements.domain_isolation",
        "security_requirements.max_data_access",
    }


def test_every_security_requirement_is_checked() -> None:
    tf = text_formatter()
    off = PluginSecurityRequirements(encrypted_transport=False, audit_log=False)
    errors = validate_plugin(dataclasses.replace(tf, security_requirements=off), PLUGINS_ON)
    assert errors == [
        "security_requirements.encrypted_transport: must be true",
        "security_requirements.audit_log: must be true (every plugin call is audited)",
    ]


@pytest.mark.parametrize(("plugin_access", "agent_access", "ok"), [
    (DataAccessLevel.none, None, True),
    (DataAccessLevel.readOnly, None, True),
    (DataAccessLevel.readWrite, None, False),
    (DataAccessLevel.crossDomain, None, False),
    (DataAccessLevel.readWrite, DataAccessLevel.readWrite, True),
    (DataAccessLevel.readWrite, DataAccessLevel.crossDomain, True),
    (DataAccessLevel.readWrite, DataAccessLevel.readOnly, False),
    (DataAccessLevel.readOnly, DataAccessLevel.none, False),
    (DataAccessLevel.crossDomain, DataAccessLevel.crossDomain, False),
])
def test_max_data_access(plugin_access: DataAccessLevel, agent_access: DataAccessLevel | None,
                         ok: bool) -> None:
    tf = text_formatter()
    schema = dataclasses.replace(
        tf, security_requirements=PluginSecurityRequirements(max_data_access=plugin_access))
    agent = None if agent_access is None else writer(agent_access)
    errors = validate_plugin(schema, PLUGINS_ON, agent)
    assert (errors == []) is ok, errors
    assert all(e.startswith("security_requirements.max_data_access: ") for e in errors)


def test_external_capabilities_need_the_policy() -> None:
    schema = dataclasses.replace(text_formatter(), required_capabilities=(
        Capability.webSearch, Capability.apiCall, Capability.networkAccess,
        Capability.fileAccess))
    errors = validate_plugin(schema, PLUGINS_ON)
    assert [e.split(":")[0] for e in errors] == [
        "required_capabilities[0]", "required_capabilities[1]", "required_capabilities[2]"]
    assert validate_plugin(schema, SecurityPolicy.custom(allow_plugins=True,
                                                         allow_external_apis=True)) == []


@pytest.mark.parametrize(("endpoint", "expected"), [
    (APIEndpoint("format", HttpMethod.GET, True, RateLimit(60, 10)), "endpoints[0].path: "),
    (APIEndpoint("/a/../b", HttpMethod.GET, True, RateLimit(60, 10)), "endpoints[0].path: "),
    (APIEndpoint("/a/{id}", HttpMethod.GET, True, RateLimit(60, 10)), "endpoints[0].path: "),
    (APIEndpoint("/a?x=1", HttpMethod.GET, True, RateLimit(60, 10)), "endpoints[0].path: "),
    (APIEndpoint("/", HttpMethod.GET, True, RateLimit(60, 10)), "endpoints[0].path: "),
    (APIEndpoint("/a//b", HttpMethod.GET, True, RateLimit(60, 10)), "endpoints[0].path: "),
    (APIEndpoint("/" + "a" * 200, HttpMethod.GET, True, RateLimit(60, 10)),
     "endpoints[0].path: "),
    (APIEndpoint("/a", HttpMethod.GET, False, RateLimit(60, 10)),
     "endpoints[0].requires_auth: must be true"),
    (APIEndpoint("/a", HttpMethod.GET, True, None), "endpoints[0].rate_limit: is required"),
    (APIEndpoint("/a", HttpMethod.GET, True, RateLimit(0, 1)),
     "endpoints[0].rate_limit.requests_per_minute: 0 is out of range 1..6000"),
    (APIEndpoint("/a", HttpMethod.GET, True, RateLimit(10**6, 1)),
     "endpoints[0].rate_limit.requests_per_minute: 1000000 is out of range 1..6000"),
    (APIEndpoint("/a", HttpMethod.GET, True, RateLimit(60, 0)),
     "endpoints[0].rate_limit.burst_size: 0 is out of range 1..1000"),
    (APIEndpoint("/a", HttpMethod.GET, True, RateLimit(6000, 5000)),
     "endpoints[0].rate_limit.burst_size: 5000 is out of range 1..1000"),
    (APIEndpoint("/a", HttpMethod.GET, True, RateLimit(60, 61)),
     "endpoints[0].rate_limit.burst_size: 61 is more than requests_per_minute (60)"),
])
def test_bad_endpoints(endpoint: APIEndpoint, expected: str) -> None:
    schema = dataclasses.replace(text_formatter(), endpoints=(endpoint,))
    errors = validate_plugin(schema, PLUGINS_ON)
    assert len(errors) == 1 and errors[0].startswith(expected), errors


@pytest.mark.parametrize("path", ["/a", "/a/b-c/d_e.json", "/~x", "/v1/format"])
def test_good_paths(path: str) -> None:
    schema = dataclasses.replace(
        text_formatter(), endpoints=(APIEndpoint(path, HttpMethod.PUT, True, RateLimit(1, 1)),))
    assert validate_plugin(schema, PLUGINS_ON) == []


def test_no_and_duplicate_endpoints() -> None:
    tf = text_formatter()
    assert validate_plugin(dataclasses.replace(tf, endpoints=()), PLUGINS_ON) == [
        "endpoints: a plugin must declare at least one endpoint"]
    twice = dataclasses.replace(tf, endpoints=tf.endpoints * 2)
    assert validate_plugin(twice, PLUGINS_ON) == [
        "endpoints[1]: duplicate endpoint POST /format"]
    other_method = dataclasses.replace(
        tf, endpoints=(*tf.endpoints, dataclasses.replace(tf.endpoints[0],
                                                          method=HttpMethod.GET)))
    assert validate_plugin(other_method, PLUGINS_ON) == []


# --- parsing -------------------------------------------------------------------


def test_schema_round_trips_and_keeps_its_id() -> None:
    tf = text_formatter()
    assert parse_plugin_schema(tf.to_json()) == tf
    harvester = parse_plugin_schema(load("external-data-harvester.json"))
    assert parse_plugin_schema(harvester.to_json()) == harvester
    assert harvester.endpoints[0].rate_limit is None
    with_image = parse_plugin_schema({**load("text-formatter.json"),
                                      "image": "localhost/text-formatter:1.0.0"})
    assert with_image.image == "localhost/text-formatter:1.0.0"
    assert with_image.id != tf.id  # the id names the content
    assert parse_plugin_schema(with_image.to_json()) == with_image
    explicit = parse_plugin_schema({**load("text-formatter.json"),
                                    "id": "8F7C7F5E-0D5C-4BB0-9A55-5B1D1F7E4C11"})
    assert explicit.id == "8f7c7f5e-0d5c-4bb0-9a55-5b1d1f7e4c11"


def test_omitted_optional_fields_default_closed() -> None:
    schema = parse_plugin_schema({"name": "P", "version": "1", "required_capabilities": [],
                                  "endpoints": [{"path": "/p", "method": "GET"}]})
    assert schema.security_requirements == PluginSecurityRequirements()
    assert schema.endpoints[0].requires_auth is True
    assert schema.endpoints[0].rate_limit is None


def test_schema_errors_name_their_paths() -> None:
    data = load("text-formatter.json")
    data["id"] = "not-a-uuid"
    data["version"] = "one point oh"
    data["name"] = "bad\nname"
    data["image"] = "NOPE"
    data["required_capabilities"] = ["textGeneration", "mindReading", "textGeneration"]
    data["endpoints"] = [
        {"path": 5, "method": "FETCH", "requires_auth": "yes",
         "rate_limit": {"requests_per_minute": 1.5}, "verb": "x"},
        "nope",
    ]
    data["security_requirements"] = {"audit_log": 1, "max_data_access": "everything",
                                     "extra": True}
    data["homepage"] = "x"
    with pytest.raises(SpecError) as info:
        parse_plugin_schema(data)
    assert info.value.errors == [
        "homepage: unknown field (expected one of id, name, version, required_capabilities, "
        "endpoints, security_requirements, image)",
        "id: 'not-a-uuid' is not a UUID",
        "name: contains the control character U+000A",
        "version: 'one point oh' is not a version (like 1.2.0)",
        "image: 'NOPE' is not a container image reference (like localhost/plugin:1.0)",
        "required_capabilities[1]: 'mindReading' is not one of dataAnalysis, textGeneration, "
        "imageProcessing, codeGeneration, webSearch, fileAccess, networkAccess, databaseQuery, "
        "apiCall",
        "required_capabilities[2]: duplicate capability 'textGeneration'",
        "endpoints[0].verb: unknown field (expected one of path, method, requires_auth, "
        "rate_limit)",
        "endpoints[0].path: expected a string, got integer",
        "endpoints[0].method: 'FETCH' is not one of GET, POST, PUT, PATCH, DELETE",
        "endpoints[0].requires_auth: expected a boolean, got string",
        "endpoints[0].rate_limit.burst_size: is required",
        "endpoints[0].rate_limit.requests_per_minute: expected an integer, got number",
        "endpoints[1]: expected an object, got string",
        "security_requirements.extra: unknown field (expected one of "
        "carbon_based_auth_required, domain_isolation, encrypted_transport, audit_log, "
        "max_data_access)",
        "security_requirements.audit_log: expected a boolean, got integer",
        "security_requirements.max_data_access: 'everything' is not one of none, readOnly, "
        "readWrite, crossDomain",
    ]
    with pytest.raises(SpecError) as info:
        parse_plugin_schema({"endpoints": [{}] * 65, "security_requirements": []})
    every = [
        "name: is required", "required_capabilities: is required",
        "endpoints: has 65 endpoints, at most 64",
        *[f"endpoints[{i}].{k}: is required" for i in range(64) for k in ("path", "method")],
        "security_requirements: expected an object, got array",
    ]
    # Every problem is counted, the first 50 are listed.
    assert info.value.errors == [*every[:50], f"and {len(every) - 50} more"]
    assert info.value.message.startswith(f"plugin schema is invalid ({len(every)} problems)")
    with pytest.raises(SpecError, match=r"^plugin schema is invalid \(1 problem\): schema: "
                                        "expected an object, got null"):
        parse_plugin_schema(None)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from(["id", "name", "version", "required_capabilities",
                                        "endpoints", "security_requirements", "image", "x"]),
                       json_values))
def test_arbitrary_schemas_only_ever_raise_spec_error(data: dict[str, Any]) -> None:
    try:
        schema = parse_plugin_schema(data)
    except SpecError as exc:
        assert exc.errors
        return
    assert parse_plugin_schema(schema.to_json()) == schema
    assert isinstance(validate_plugin(schema, PLUGINS_ON), list)


def test_plugin_conflicts_by_slug() -> None:
    from pacd.core.plugins import plugin_conflicts

    tf = text_formatter()
    harvester = parse_plugin_schema(load("external-data-harvester.json"))
    assert plugin_conflicts(tf, [harvester]) == []
    assert plugin_conflicts(tf, [tf]) == []  # re-submitting the same schema
    newer = parse_plugin_schema({**load("text-formatter.json"), "version": "2.0.0"})
    assert plugin_conflicts(newer, [harvester, tf]) == [
        f"name: 'Text Formatter' is served as 'text-formatter', already used by plugin "
        f"'Text Formatter' ({tf.id})"]
