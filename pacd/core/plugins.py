"""Plugin schemas: strict parsing, and validation against a container's policy.

Parsing checks the *shape* of a schema (types, known fields, enum names).
Validation checks what the schema *asks for* against the policy and the agent
it would serve, and returns every reason at once so the owner sees the whole
picture before deciding.

Data access decision: ``crossDomain`` is never granted to a plugin (it would
cross concern isolation). Up to ``readWrite`` is allowed only when the agent
the plugin serves has at least that access itself; without an agent to
compare against, the seed's default ``readOnly`` is the ceiling.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from pacd.core import fields as f
from pacd.core.canonical import canonical_json
from pacd.core.models import (
    EXTERNAL_CAPABILITIES,
    AgentDomain,
    APIEndpoint,
    Capability,
    DataAccessLevel,
    HttpMethod,
    PluginAPISchema,
    PluginSecurityRequirements,
    RateLimit,
    SecurityPolicy,
)

SCHEMA_FIELDS = ("id", "name", "version", "required_capabilities", "endpoints",
                 "security_requirements", "image")
ENDPOINT_FIELDS = ("path", "method", "requires_auth", "rate_limit")
RATE_LIMIT_FIELDS = ("requests_per_minute", "burst_size")
SECURITY_FIELDS = ("carbon_based_auth_required", "domain_isolation", "encrypted_transport",
                   "audit_log", "max_data_access")
# The seed's (Swift Codable) camelCase spellings, accepted besides snake_case.
SCHEMA_ALIASES = f.spellings(SCHEMA_FIELDS)
ENDPOINT_ALIASES = f.spellings(ENDPOINT_FIELDS)
RATE_LIMIT_ALIASES = f.spellings(RATE_LIMIT_FIELDS)
SECURITY_ALIASES = f.spellings(SECURITY_FIELDS)
SCHEMA_SHAPE = f.Shape(SCHEMA_ALIASES, {
    "endpoints": f.Shape(ENDPOINT_ALIASES, {"rate_limit": f.Shape(RATE_LIMIT_ALIASES)}),
    "security_requirements": f.Shape(SECURITY_ALIASES),
})
MAX_ENDPOINTS = 64
#: 100 requests per second is far beyond what a local plugin call should need
MAX_REQUESTS_PER_MINUTE = 6000
MAX_BURST = 1000
MAX_PATH_LENGTH = 200

_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")
# Plain path segments only: no templates, queries, fragments, '.' or '..'.
_ENDPOINT_PATH = re.compile(r"(?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+")


# --- parsing -----------------------------------------------------------------


def parse_plugin_schema(data: Any) -> PluginAPISchema:
    """A ``PluginAPISchema`` from decoded JSON; one ``SpecError`` lists every problem.

    Without an ``id`` the plugin gets one derived from its content, so the same
    schema always has the same id and any change gives a new one.

    ``version`` and ``endpoints`` may be left out, as the seed's own examples
    write them (its Text Formatter has no version, its External Data Harvester
    neither a version nor endpoints): a missing version is ``""``; missing
    endpoints are none, which validation refuses with its reason beside the
    plugin's other reasons instead of the parser hiding them.
    """
    problems = f.Problems("schema")
    obj = f.Obj(data, "", problems, SCHEMA_FIELDS, ("name", "required_capabilities"),
                aliases=SCHEMA_ALIASES)
    plugin_id = obj.string("id", None, check=_is_uuid, expect="a UUID", max_len=36)
    # a name the owner reads in prompts: read_string refuses control, bidi and
    # other invisible characters (fields.text_problem)
    name = obj.string("name", max_len=100)
    version = obj.string("version", "", check=lambda s: _VERSION.fullmatch(s) is not None,
                         expect="a version (like 1.2.0)", max_len=64)
    image = obj.string("image", None, check=f.is_image_reference,
                       expect="a container image reference (like localhost/plugin:1.0)",
                       max_len=512)
    # More items than there are capabilities cannot be valid: said once, not per item.
    capabilities = f.read_unique(
        obj.array("required_capabilities", max_items=len(Capability)), problems,
        lambda v, p: f.read_enum(v, p, problems, Capability), "capability")
    endpoint_items = obj.array("endpoints", [])
    endpoints: list[APIEndpoint | None] = []
    if endpoint_items is not None:
        if len(endpoint_items) > MAX_ENDPOINTS:
            problems.add("endpoints", f"has {len(endpoint_items)} endpoints, at most "
                                      f"{MAX_ENDPOINTS}")
        endpoints = [_read_endpoint(raw, path, problems)
                     for path, raw in endpoint_items[:MAX_ENDPOINTS]]
    security = (_read_security(obj.raw("security_requirements"),
                               obj.at("security_requirements"), problems)
                if obj.has("security_requirements") else PluginSecurityRequirements())
    problems.raise_if_any("plugin schema")
    assert name is not None and version is not None and capabilities is not None
    assert security is not None
    schema = PluginAPISchema(
        id=plugin_id.lower() if plugin_id else "",
        name=name,
        version=version,
        required_capabilities=capabilities,
        endpoints=tuple(e for e in endpoints if e is not None),
        security_requirements=security,
        image=image,
    )
    return schema if plugin_id else replace(schema, id=content_id(schema))


def content_id(schema: PluginAPISchema) -> str:
    """A UUID naming the schema's content (everything but its id)."""
    body = schema.to_json()
    del body["id"]
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "pacd:plugin:" + canonical_json(body).hex()))


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def _read_endpoint(data: Any, path: str, problems: f.Problems) -> APIEndpoint | None:
    before = problems.count
    obj = f.Obj(data, path, problems, ENDPOINT_FIELDS, ("path", "method"), aliases=ENDPOINT_ALIASES)
    if not obj.ok:
        return None
    endpoint_path = obj.string("path", max_len=MAX_PATH_LENGTH)
    method = obj.enum("method", HttpMethod)
    requires_auth = obj.boolean("requires_auth", True)
    rate_limit: RateLimit | None = None
    raw_limit = obj.raw("rate_limit")
    if raw_limit is not None:
        limit = f.Obj(raw_limit, obj.at("rate_limit"), problems, RATE_LIMIT_FIELDS,
                      RATE_LIMIT_FIELDS, aliases=RATE_LIMIT_ALIASES)
        rpm = limit.integer("requests_per_minute")
        burst = limit.integer("burst_size")
        if rpm is not None and burst is not None:
            rate_limit = RateLimit(rpm, burst)
    if problems.count != before:
        return None
    assert endpoint_path is not None and method is not None and requires_auth is not None
    return APIEndpoint(endpoint_path, method, requires_auth, rate_limit)


def _read_security(data: Any, path: str, problems: f.Problems
                   ) -> PluginSecurityRequirements | None:
    before = problems.count
    obj = f.Obj(data, path, problems, SECURITY_FIELDS, aliases=SECURITY_ALIASES)
    if not obj.ok:
        return None
    defaults = PluginSecurityRequirements()
    values = {
        name: obj.boolean(name, getattr(defaults, name))
        for name in SECURITY_FIELDS[:4]
    }
    access = obj.enum("max_data_access", DataAccessLevel, defaults.max_data_access)
    if problems.count != before:
        return None
    assert access is not None
    return PluginSecurityRequirements(
        carbon_based_auth_required=bool(values["carbon_based_auth_required"]),
        domain_isolation=bool(values["domain_isolation"]),
        encrypted_transport=bool(values["encrypted_transport"]),
        audit_log=bool(values["audit_log"]),
        max_data_access=access,
    )


# --- validation --------------------------------------------------------------


def validate_plugin(schema: PluginAPISchema, policy: SecurityPolicy,
                    agent: AgentDomain | None = None, *, written: Any = None) -> list[str]:
    """Every reason the plugin may not be installed; an empty list means valid.

    ``agent`` is the agent domain the plugin would serve: when given, the
    plugin may not ask for capabilities or data access that agent lacks.
    ``written`` is the document the schema was parsed from, when there is one:
    reasons then name its fields as it spells them (camelCase or snake_case).
    """
    errors = _plugin_errors(schema, policy, agent)
    if written is None:
        return errors
    return [f.as_written(error, written, SCHEMA_SHAPE) for error in errors]


def _plugin_errors(schema: PluginAPISchema, policy: SecurityPolicy,
                   agent: AgentDomain | None) -> list[str]:
    errors: list[str] = []
    if not policy.allow_plugins:
        errors.append("policy.allow_plugins: this container's policy does not allow plugins")
    errors.extend(_security_errors(schema.security_requirements, agent))
    for i, capability in enumerate(schema.required_capabilities):
        where = f"required_capabilities[{i}]"
        if agent is not None and capability not in agent.capabilities:
            errors.append(f"{where}: {capability.value} is not a capability of agent "
                          f"{f.show(agent.name)}")
        if capability in EXTERNAL_CAPABILITIES and not policy.allow_external_apis:
            errors.append(f"{where}: {capability.value} reaches outside this machine, which "
                          "the policy does not allow (allow_external_apis is false)")
    errors.extend(_endpoint_errors(schema.endpoints))
    return errors


def plugin_conflicts(schema: PluginAPISchema,
                     installed: Sequence[PluginAPISchema]) -> list[str]:
    """Why ``schema`` cannot sit next to ``installed`` plugins of the same container.

    Plugins are served under their slug (``/v1/plugins/<slug>/...``), so two
    plugins with the same slug would shadow each other. Re-submitting the same
    schema (same id) is not a conflict.
    """
    return [
        f"name: {f.show(schema.name)} is served as {f.show(schema.slug)}, already used by "
        f"plugin {f.show(other.name)} ({other.id})"
        for other in installed
        if other.slug == schema.slug and other.id != schema.id
    ]


def _security_errors(security: PluginSecurityRequirements,
                     agent: AgentDomain | None) -> list[str]:
    errors: list[str] = []
    where = "security_requirements"
    if not security.carbon_based_auth_required:
        errors.append(f"{where}.carbon_based_auth_required: must be true (only the verified "
                      "human owner may use a plugin)")
    if not security.domain_isolation:
        errors.append(f"{where}.domain_isolation: must be true (a plugin may not break domain "
                      "isolation)")
    if not security.encrypted_transport:
        errors.append(f"{where}.encrypted_transport: must be true")
    if not security.audit_log:
        errors.append(f"{where}.audit_log: must be true (every plugin call is audited)")
    access = security.max_data_access
    if access is DataAccessLevel.crossDomain:
        errors.append(f"{where}.max_data_access: crossDomain is never granted to a plugin "
                      "(it would cross concern isolation)")
    elif agent is None and access.rank > DataAccessLevel.readOnly.rank:
        errors.append(f"{where}.max_data_access: {access.value} is more than readOnly")
    elif agent is not None and access.rank > agent.data_access.rank:
        errors.append(f"{where}.max_data_access: {access.value} is more than agent "
                      f"{f.show(agent.name)} has ({agent.data_access.value})")
    return errors


def _endpoint_errors(endpoints: tuple[APIEndpoint, ...]) -> list[str]:
    if not endpoints:
        return ["endpoints: a plugin must declare at least one endpoint"]
    errors: list[str] = []
    seen: set[tuple[str, HttpMethod]] = set()
    for i, endpoint in enumerate(endpoints):
        where = f"endpoints[{i}]"
        if len(endpoint.path) > MAX_PATH_LENGTH or not _ENDPOINT_PATH.fullmatch(endpoint.path):
            errors.append(f"{where}.path: {f.show(endpoint.path)} is not a plain absolute path "
                          "(like /format: letters, digits, '-', '_', '.', '~'; no templates, "
                          "queries, '.' or '..' segments)")
        elif (endpoint.path, endpoint.method) in seen:
            errors.append(f"{where}: duplicate endpoint {endpoint.method.value} "
                          f"{endpoint.path}")
        seen.add((endpoint.path, endpoint.method))
        if not endpoint.requires_auth:
            errors.append(f"{where}.requires_auth: must be true (every plugin endpoint needs "
                          "carbon-based authentication)")
        errors.extend(_rate_limit_errors(endpoint.rate_limit, f"{where}.rate_limit"))
    return errors


def _rate_limit_errors(limit: RateLimit | None, where: str) -> list[str]:
    if limit is None:
        return [f"{where}: is required (every plugin endpoint is rate limited)"]
    errors: list[str] = []
    rpm, burst = limit.requests_per_minute, limit.burst_size
    if not 1 <= rpm <= MAX_REQUESTS_PER_MINUTE:
        errors.append(f"{where}.requests_per_minute: {rpm} is out of range "
                      f"1..{MAX_REQUESTS_PER_MINUTE}")
    if not 1 <= burst <= MAX_BURST:
        errors.append(f"{where}.burst_size: {burst} is out of range 1..{MAX_BURST}")
    elif burst > rpm >= 1:
        errors.append(f"{where}.burst_size: {burst} is more than requests_per_minute ({rpm})")
    return errors
