"""The seed's models as frozen dataclasses.

Enum values are the seed's camelCase names, because they appear verbatim in
ContainerSpec documents and plugin schemas. Dataclass fields and ``to_json``
keys are snake_case, the wire convention of the HTTP API. Owners are
identified by enrolled presence credentials, never by biometric data, so
``Owner`` has no biometric field at all.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pacd.core import fields as f
from pacd.core.canonical import canonical_json
from pacd.core.egress import is_domain_pattern
from pacd.errors import SpecError

# --- enums -------------------------------------------------------------------


class SecurityLevel(StrEnum):
    """How much presence the owner proved; each level includes the ones below it."""

    basic = "basic"
    enhanced = "enhanced"
    biometric = "biometric"
    carbonProof = "carbonProof"

    @property
    def rank(self) -> int:
        return _LEVEL_ORDER.index(self)

    def satisfies(self, required: SecurityLevel) -> bool:
        """True when a caller holding ``self`` may do what needs ``required``."""
        return self.rank >= required.rank


_LEVEL_ORDER: tuple[SecurityLevel, ...] = (
    SecurityLevel.basic,
    SecurityLevel.enhanced,
    SecurityLevel.biometric,
    SecurityLevel.carbonProof,
)


class Capability(StrEnum):
    dataAnalysis = "dataAnalysis"
    textGeneration = "textGeneration"
    imageProcessing = "imageProcessing"
    codeGeneration = "codeGeneration"
    webSearch = "webSearch"
    fileAccess = "fileAccess"
    networkAccess = "networkAccess"
    databaseQuery = "databaseQuery"
    apiCall = "apiCall"


#: capabilities that reach outside the machine; they need ``allow_external_apis``
EXTERNAL_CAPABILITIES: frozenset[Capability] = frozenset(
    {Capability.webSearch, Capability.networkAccess, Capability.apiCall}
)


class DataAccessLevel(StrEnum):
    none = "none"
    readOnly = "readOnly"
    readWrite = "readWrite"
    crossDomain = "crossDomain"

    @property
    def rank(self) -> int:
        return _ACCESS_ORDER.index(self)

    @property
    def can_read(self) -> bool:
        return self is not DataAccessLevel.none

    @property
    def can_write(self) -> bool:
        return self in (DataAccessLevel.readWrite, DataAccessLevel.crossDomain)


_ACCESS_ORDER: tuple[DataAccessLevel, ...] = (
    DataAccessLevel.none,
    DataAccessLevel.readOnly,
    DataAccessLevel.readWrite,
    DataAccessLevel.crossDomain,
)


class IsolationLevel(StrEnum):
    strict = "strict"
    managed = "managed"
    collaborative = "collaborative"


class ConcernCategory(StrEnum):
    personal = "personal"
    professional = "professional"
    health = "health"
    financial = "financial"
    social = "social"
    creative = "creative"
    learning = "learning"
    technical = "technical"


class Scope(StrEnum):
    local = "local"
    shared = "shared"
    federated = "federated"


class CrossContainerPolicy(StrEnum):
    isolated = "isolated"
    ownerOnly = "ownerOnly"
    trusted = "trusted"
    public = "public"


class ConnectionType(StrEnum):
    ownerShared = "ownerShared"
    trusted = "trusted"
    federated = "federated"


class HttpMethod(StrEnum):
    GET = "GET"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"


# --- owner, domains ----------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """The one human a pacd installation belongs to (the seed's CarbonBasedEntity)."""

    id: str
    name: str
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "created_at": self.created_at}

    @classmethod
    def from_json(cls, data: Any) -> Owner:
        problems = f.Problems("owner")
        obj = f.Obj(data, "", problems, ("id", "name", "created_at"), ("id", "name", "created_at"))
        owner_id = obj.string("id")
        name = obj.string("name")
        created = _read_time(obj, "created_at")
        problems.raise_if_any("owner")
        assert owner_id is not None and name is not None and created is not None
        return cls(owner_id, name, created)


CarbonBasedEntity = Owner


@dataclass(frozen=True)
class AgentDomain:
    """An isolated capability sphere; one container per agent domain."""

    id: str
    name: str
    image: str
    capabilities: tuple[Capability, ...] = ()
    #: names of agents (in the same container) this one may reach
    allowed_connections: tuple[str, ...] = ()
    data_access: DataAccessLevel = DataAccessLevel.none
    isolation: IsolationLevel = IsolationLevel.strict

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "image": self.image,
            "capabilities": [c.value for c in self.capabilities],
            "allowed_connections": list(self.allowed_connections),
            "data_access": self.data_access.value,
            "isolation": self.isolation.value,
        }


@dataclass(frozen=True)
class ConcernDomain:
    """A context that separates data (personal, work, health, ...)."""

    id: str
    name: str
    category: ConcernCategory
    scope: Scope = Scope.local
    #: names of agents (in the same container) connected to this domain
    connected_agents: tuple[str, ...] = ()
    cross_container: CrossContainerPolicy = CrossContainerPolicy.isolated

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "category": self.category.value,
            "scope": self.scope.value,
            "connected_agents": list(self.connected_agents),
            "cross_container": self.cross_container.value,
        }


# --- security policy ---------------------------------------------------------

POLICY_FIELDS: tuple[str, ...] = (
    "requires_carbon_based_auth",
    "max_concurrent_connections",
    "allowed_network_ports",
    "encryption_required",
    "audit_logging",
    "data_retention_days",
    "allow_plugins",
    "allow_external_apis",
    "trusted_domains",
)
#: the seed's spelling of each policy field (``allowExternalAPIs``: Swift keeps the acronym)
POLICY_ALIASES: dict[str, str] = f.spellings(POLICY_FIELDS,
                                             {"allow_external_apis": "allowExternalAPIs"})
POLICY_PRESETS: tuple[str, ...] = ("default", "strict")
MAX_CONNECTIONS_LIMIT = 1000
MAX_RETENTION_DAYS = 36500


@dataclass(frozen=True)
class SecurityPolicy:
    """The seed's SecurityPolicy. Construction validates, so no invalid policy exists.

    Presets:

    * ``default()`` -- the seed's defaults: no plugins, no external APIs.
    * ``strict()`` -- for sensitive data: as default, and additionally at most
      4 concurrent connections (instead of 10), no published network ports
      (instead of 8080/8443) and 30 days of retention (instead of 90).
    * ``custom(**fields)`` -- any field overridden, validated; omitted fields
      keep the default value.

    ``requires_carbon_based_auth``, ``encryption_required`` and
    ``audit_logging`` must be true: pacd always authenticates, encrypts and
    audits, so a policy turning one off is refused rather than ignored.
    """

    requires_carbon_based_auth: bool = True
    max_concurrent_connections: int = 10
    allowed_network_ports: tuple[int, ...] = (8080, 8443)
    encryption_required: bool = True
    audit_logging: bool = True
    data_retention_days: int = 90
    allow_plugins: bool = False
    allow_external_apis: bool = False
    trusted_domains: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = f.Problems("policy")
        _check_policy_values(dataclasses.asdict(self), "policy", problems)
        problems.raise_if_any("security policy")

    @classmethod
    def default(cls) -> SecurityPolicy:
        return cls()

    @classmethod
    def strict(cls) -> SecurityPolicy:
        return cls(max_concurrent_connections=4, allowed_network_ports=(), data_retention_days=30)

    @classmethod
    def custom(cls, **fields: Any) -> SecurityPolicy:
        """A validated policy; raises ``SpecError`` naming every bad field."""
        problems = f.Problems("policy")
        policy = read_policy(fields, "policy", problems)
        problems.raise_if_any("security policy")
        assert policy is not None
        return policy

    @classmethod
    def preset(cls, name: str) -> SecurityPolicy:
        if name == "default":
            return cls.default()
        if name == "strict":
            return cls.strict()
        raise SpecError(
            f"policy: {f.show(name)} is not one of {f.one_of(POLICY_PRESETS)}",
            errors=[f"policy: {f.show(name)} is not one of {f.one_of(POLICY_PRESETS)}"],
        )

    def preset_name(self) -> str | None:
        """``"default"``/``"strict"`` when this policy equals a preset, else None."""
        for name in POLICY_PRESETS:
            if self == SecurityPolicy.preset(name):
                return name
        return None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["allowed_network_ports"] = list(self.allowed_network_ports)
        out["trusted_domains"] = list(self.trusted_domains)
        return out


def _check_policy_values(values: Mapping[str, Any], path: str, problems: f.Problems,
                         at: Callable[[str], str] | None = None) -> None:
    """Type and range checks on already-decoded policy values.

    ``at`` gives a field's path as the document spells it (``Obj.at``)."""
    def where(name: str) -> str:
        return at(name) if at is not None else f.join(path, name)

    for name in ("requires_carbon_based_auth", "encryption_required", "audit_logging",
                 "allow_plugins", "allow_external_apis"):
        if not isinstance(values[name], bool):
            problems.add(where(name),
                         f"expected a boolean, got {f.json_type(values[name])}")
    if values["requires_carbon_based_auth"] is not True:
        problems.add(where("requires_carbon_based_auth"),
                     "must be true: every pacd container requires carbon-based authentication")
    # pacd has no way to turn these off, so a policy asking for that would be a
    # promise pacd silently breaks: refused instead of ignored.
    if values["encryption_required"] is False:
        problems.add(where("encryption_required"),
                     "must be true: pacd always encrypts concern data (AES-256-GCM in the "
                     "vault) and cannot store it unencrypted")
    if values["audit_logging"] is False:
        problems.add(where("audit_logging"),
                     "must be true: pacd always audits (every decision is an entry in the "
                     "HMAC-chained audit log) and cannot turn auditing off")
    _check_range(values["max_concurrent_connections"], where("max_concurrent_connections"),
                 problems, 1, MAX_CONNECTIONS_LIMIT)
    _check_range(values["data_retention_days"], where("data_retention_days"),
                 problems, 1, MAX_RETENTION_DAYS)
    ports_path = where("allowed_network_ports")
    ports = values["allowed_network_ports"]
    if not isinstance(ports, tuple | list):
        problems.add(ports_path, f"expected an array, got {f.json_type(ports)}")
    else:
        seen: set[int] = set()
        for i, port in enumerate(ports):
            if _check_range(port, f.index(ports_path, i), problems, 1, 65535):
                if port in seen:
                    problems.add(f.index(ports_path, i), f"duplicate port {port}")
                seen.add(port)
    domains_path = where("trusted_domains")
    domains = values["trusted_domains"]
    if not isinstance(domains, tuple | list):
        problems.add(domains_path, f"expected an array, got {f.json_type(domains)}")
    else:
        seen_domains: set[str] = set()
        for i, domain in enumerate(domains):
            item = f.index(domains_path, i)
            if f.read_string(domain, item, problems, check=is_domain_pattern,
                             expect="a lowercase host name (like api.example.org) or "
                                    "*.example.org for the names below it", max_len=255):
                if domain in seen_domains:
                    problems.add(item, f"duplicate domain {f.show(domain)}")
                seen_domains.add(domain)


def _check_range(value: Any, path: str, problems: f.Problems, lo: int, hi: int) -> bool:
    if f.read_int(value, path, problems) is None:
        return False
    if not lo <= value <= hi:
        problems.add(path, f"{value} is out of range {lo}..{hi}")
        return False
    return True


def read_policy(data: Any, path: str, problems: f.Problems) -> SecurityPolicy | None:
    """A policy from a preset name or an object of SecurityPolicy fields (either spelling)."""
    if isinstance(data, str):
        if data not in POLICY_PRESETS:
            problems.add(path, f"{f.show(data)} is not one of {f.one_of(POLICY_PRESETS)} "
                               "(or a custom policy object)")
            return None
        return SecurityPolicy.preset(data)
    if not isinstance(data, Mapping):
        problems.add(path, "expected a preset name (default, strict) or a policy object, "
                           f"got {f.json_type(data)}")
        return None
    obj = f.Obj(data, path, problems, POLICY_FIELDS, aliases=POLICY_ALIASES)
    values: dict[str, Any] = dataclasses.asdict(SecurityPolicy.default())
    values.update({k: v for k, v in obj.data.items() if k in POLICY_FIELDS})
    before = problems.count
    _check_policy_values(values, path, problems, obj.at)
    if problems.count != before or not obj.ok:
        return None
    values["allowed_network_ports"] = tuple(values["allowed_network_ports"])
    values["trusted_domains"] = tuple(values["trusted_domains"])
    return SecurityPolicy(**values)


# --- container ---------------------------------------------------------------


@dataclass(frozen=True)
class PersonalAIContainer:
    """One owner's container: agents, concerns and the policy over them."""

    id: str
    name: str
    owner_id: str
    agents: tuple[AgentDomain, ...]
    concerns: tuple[ConcernDomain, ...]
    policy: SecurityPolicy = field(default_factory=SecurityPolicy.default)
    created_at: float = 0.0

    def agent(self, name: str) -> AgentDomain | None:
        for agent in self.agents:
            if agent.name == name:
                return agent
        return None

    def concern(self, name: str) -> ConcernDomain | None:
        for concern in self.concerns:
            if concern.name == name:
                return concern
        return None

    def concerns_of(self, agent_name: str) -> tuple[ConcernDomain, ...]:
        """The concern domains an agent is connected to."""
        return tuple(c for c in self.concerns if agent_name in c.connected_agents)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "owner_id": self.owner_id,
            "agents": [a.to_json() for a in self.agents],
            "concerns": [c.to_json() for c in self.concerns],
            "policy": self.policy.to_json(),
            "created_at": self.created_at,
        }


# --- plugins -----------------------------------------------------------------


@dataclass(frozen=True)
class RateLimit:
    requests_per_minute: int
    burst_size: int

    def to_json(self) -> dict[str, Any]:
        return {"requests_per_minute": self.requests_per_minute, "burst_size": self.burst_size}


@dataclass(frozen=True)
class APIEndpoint:
    path: str
    method: HttpMethod
    requires_auth: bool = True
    rate_limit: RateLimit | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "method": self.method.value,
            "requires_auth": self.requires_auth,
            "rate_limit": None if self.rate_limit is None else self.rate_limit.to_json(),
        }


@dataclass(frozen=True)
class PluginSecurityRequirements:
    carbon_based_auth_required: bool = True
    domain_isolation: bool = True
    encrypted_transport: bool = True
    audit_log: bool = True
    max_data_access: DataAccessLevel = DataAccessLevel.readOnly

    def to_json(self) -> dict[str, Any]:
        return {
            "carbon_based_auth_required": self.carbon_based_auth_required,
            "domain_isolation": self.domain_isolation,
            "encrypted_transport": self.encrypted_transport,
            "audit_log": self.audit_log,
            "max_data_access": self.max_data_access.value,
        }


_SLUG_DROP = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class PluginAPISchema:
    """A plugin's declared surface. ``image`` is the container image it runs as."""

    id: str
    name: str
    version: str
    required_capabilities: tuple[Capability, ...]
    endpoints: tuple[APIEndpoint, ...]
    security_requirements: PluginSecurityRequirements = field(
        default_factory=PluginSecurityRequirements
    )
    image: str | None = None

    @property
    def slug(self) -> str:
        """The name as a DNS label (``Text Formatter`` → ``text-formatter``).

        Used wherever the plugin's name becomes part of a URL or container name.
        """
        slug = _SLUG_DROP.sub("-", self.name.lower()).strip("-")[:63].strip("-")
        return slug or "plugin"

    @property
    def title(self) -> str:
        """Name and version as the owner reads them (``Text Formatter 1.0.0``); the
        name alone for a schema that states no version."""
        return f"{self.name} {self.version}" if self.version else self.name

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            # written as given: a schema without one has none (parsing reads that as "")
            **({"version": self.version} if self.version else {}),
            "required_capabilities": [c.value for c in self.required_capabilities],
            "endpoints": [e.to_json() for e in self.endpoints],
            "security_requirements": self.security_requirements.to_json(),
        }
        if self.image is not None:
            out["image"] = self.image
        return out


# --- cross-container ---------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(value: Any, path: str, problems: f.Problems) -> bytes | None:
    if not isinstance(value, str):
        problems.add(path, f"expected a base64url string, got {f.json_type(value)}")
        return None
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        problems.add(path, "is not valid base64url")
        return None


def _read_time(obj: f.Obj, key: str) -> float | None:
    value = obj.raw(key)
    if not obj.has(key):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        obj.problems.add(obj.at(key), f"expected a number, got {f.json_type(value)}")
        return None
    if not math.isfinite(value) or value < 0:
        obj.problems.add(obj.at(key), "must be a finite, non-negative number of seconds")
        return None
    return float(value)


_PACKET_FIELDS = ("source_container_id", "source_owner_id", "concern_domain_id",
                  "encrypted_data", "connection_type", "timestamp", "nonce", "signature")


@dataclass(frozen=True)
class SharedDataPacket:
    """Data crossing containers: encrypted twice, signed, time-stamped, with a nonce."""

    source_container_id: str
    source_owner_id: str
    concern_domain_id: str
    encrypted_data: bytes
    connection_type: ConnectionType
    timestamp: float
    nonce: bytes
    signature: bytes = b""

    def signed_payload(self) -> bytes:
        """The exact bytes the signature covers: every field except the signature."""
        body = self.to_json()
        del body["signature"]
        return canonical_json(body)

    def to_json(self) -> dict[str, Any]:
        return {
            "source_container_id": self.source_container_id,
            "source_owner_id": self.source_owner_id,
            "concern_domain_id": self.concern_domain_id,
            "encrypted_data": _b64(self.encrypted_data),
            "connection_type": self.connection_type.value,
            "timestamp": self.timestamp,
            "nonce": _b64(self.nonce),
            "signature": _b64(self.signature),
        }

    @classmethod
    def from_json(cls, data: Any) -> SharedDataPacket:
        problems = f.Problems("packet")
        obj = f.Obj(data, "", problems, _PACKET_FIELDS, _PACKET_FIELDS)
        container = obj.string("source_container_id")
        owner = obj.string("source_owner_id")
        concern = obj.string("concern_domain_id")
        conn = obj.enum("connection_type", ConnectionType)
        stamp = _read_time(obj, "timestamp")
        blobs = {
            key: _unb64(obj.raw(key), key, problems) if obj.has(key) else None
            for key in ("encrypted_data", "nonce", "signature")
        }
        problems.raise_if_any("shared data packet")
        assert container and owner and concern and conn is not None and stamp is not None
        enc, nonce, sig = blobs["encrypted_data"], blobs["nonce"], blobs["signature"]
        assert enc is not None and nonce is not None and sig is not None
        return cls(container, owner, concern, enc, conn, stamp, nonce, sig)
