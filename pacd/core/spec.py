"""ContainerSpec: the owner's description of a container, as JSON or TOML.

The shape is the public contract in API.md. Parsing is strict: unknown fields
are errors, and every error names its path (``agents[1].isolation: ...``).
All problems are collected and raised together as one ``SpecError``.
The caller reads the file; this module only sees text or decoded data.
"""

from __future__ import annotations

import json
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from pacd.core import fields as f
from pacd.core.models import (
    AgentDomain,
    Capability,
    ConcernCategory,
    ConcernDomain,
    CrossContainerPolicy,
    DataAccessLevel,
    IsolationLevel,
    PersonalAIContainer,
    Scope,
    SecurityPolicy,
    read_policy,
)
from pacd.core.plugins import parse_plugin_schema
from pacd.errors import SpecError

__all__ = [
    "AgentSpec", "ConcernSpec", "ContainerSpec", "build_container", "decode_document",
    "derive_id", "load_container_spec", "parse_container", "parse_container_spec",
    "parse_plugin_schema", "spec_of",
]

_Named = TypeVar("_Named", AgentDomain, ConcernDomain)

SPEC_FIELDS = ("name", "policy", "agents", "concerns")
AGENT_FIELDS = ("name", "image", "capabilities", "data_access", "isolation", "connections")
CONCERN_FIELDS = ("name", "category", "scope", "agents", "cross_container")
# The seed's (Swift Codable) spelling of each field; see fields.spellings.
SPEC_ALIASES = f.spellings(SPEC_FIELDS, {"policy": "securityPolicy", "agents": "agentDomains",
                                         "concerns": "concernDomains"})
AGENT_ALIASES = f.spellings(AGENT_FIELDS, {"data_access": "dataAccessLevel",
                                           "connections": "allowedConnections"})
CONCERN_ALIASES = f.spellings(CONCERN_FIELDS, {"agents": "connectedAgents",
                                               "cross_container": "crossContainerPolicy"})
MAX_AGENTS = 64
MAX_CONCERNS = 64
_LABEL_EXPECT = ("a lowercase DNS label (a-z, 0-9 and '-', at most 63, "
                 "not starting or ending with '-')")
_IMAGE_EXPECT = "a container image reference (like localhost/agent:latest)"


@dataclass(frozen=True)
class AgentSpec:
    name: str
    image: str
    capabilities: tuple[Capability, ...] = ()
    data_access: DataAccessLevel = DataAccessLevel.none
    isolation: IsolationLevel = IsolationLevel.strict
    connections: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "capabilities": [c.value for c in self.capabilities],
            "data_access": self.data_access.value,
            "isolation": self.isolation.value,
            "connections": list(self.connections),
        }


@dataclass(frozen=True)
class ConcernSpec:
    name: str
    category: ConcernCategory
    scope: Scope = Scope.local
    agents: tuple[str, ...] = ()
    cross_container: CrossContainerPolicy = CrossContainerPolicy.isolated

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "category": self.category.value,
            "scope": self.scope.value,
            "agents": list(self.agents),
            "cross_container": self.cross_container.value,
        }


@dataclass(frozen=True)
class ContainerSpec:
    """A parsed, cross-checked ContainerSpec.

    Defaults for omitted fields lean closed: policy ``default``, agent
    ``data_access`` ``none``, ``isolation`` ``strict``, concern ``scope``
    ``local`` and ``cross_container`` ``isolated``.
    """

    name: str
    agents: tuple[AgentSpec, ...]
    concerns: tuple[ConcernSpec, ...] = ()
    policy: SecurityPolicy = field(default_factory=SecurityPolicy.default)

    def to_json(self) -> dict[str, Any]:
        preset = self.policy.preset_name()
        return {
            "name": self.name,
            "policy": preset if preset is not None else self.policy.to_json(),
            "agents": [a.to_json() for a in self.agents],
            "concerns": [c.to_json() for c in self.concerns],
        }


# --- parsing -----------------------------------------------------------------


def load_container_spec(text: str, fmt: Literal["json", "toml"]) -> ContainerSpec:
    """Parses ContainerSpec text; ``fmt`` comes from the file's extension."""
    return parse_container_spec(decode_document(text, fmt, "spec"))


def decode_document(text: str, fmt: str, root: str) -> Any:
    """JSON or TOML text to data, refusing duplicate keys and NaN/Infinity."""
    if fmt == "json":
        try:
            return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            message = f"{root}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        except _DuplicateKey as exc:
            message = f"{root}: not valid JSON: duplicate key {f.show(exc.key)}"
        except _BadConstant as exc:
            message = f"{root}: not valid JSON: {exc.name} is not a number"
        except RecursionError:
            message = f"{root}: not valid JSON: nested too deeply"
        except ValueError:  # an integer beyond Python's digit limit
            message = f"{root}: not valid JSON: a number is too long"
        raise SpecError(message, errors=[message])
    if fmt == "toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            message = f"{root}: not valid TOML: {exc}"
        except RecursionError:
            message = f"{root}: not valid TOML: nested too deeply"
        except ValueError:  # an integer beyond Python's digit limit
            message = f"{root}: not valid TOML: a number is too long"
        raise SpecError(message, errors=[message])
    message = f"{root}: unsupported format {f.show(fmt)} (expected json or toml)"
    raise SpecError(message, errors=[message])


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _BadConstant(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise _BadConstant(name)


def parse_container_spec(data: Mapping[str, Any] | Any) -> ContainerSpec:
    """Validates decoded data as a ContainerSpec; raises one ``SpecError`` listing every problem."""
    problems = f.Problems("spec")
    obj = f.Obj(data, "", problems, SPEC_FIELDS, ("name", "agents"), aliases=SPEC_ALIASES)
    name = obj.string("name", check=f.is_label, expect=_LABEL_EXPECT, max_len=63)
    policy = read_policy(obj.raw("policy"), obj.at("policy"), problems) if obj.has(
        "policy") else SecurityPolicy.default()

    agents: list[tuple[AgentSpec | None, f.Obj]] = []
    agent_items = obj.array("agents")
    if agent_items is not None:
        if not agent_items and obj.ok:
            problems.add(obj.at("agents"), "must list at least one agent")
        if len(agent_items) > MAX_AGENTS:
            problems.add(obj.at("agents"),
                         f"has {len(agent_items)} agents, at most {MAX_AGENTS}")
        agents = [_read_agent(raw, path, problems) for path, raw in agent_items[:MAX_AGENTS]]

    concerns: list[tuple[ConcernSpec | None, f.Obj]] = []
    concern_items = obj.array("concerns", [])
    if concern_items is not None:
        if len(concern_items) > MAX_CONCERNS:
            problems.add(obj.at("concerns"),
                         f"has {len(concern_items)} concerns, at most {MAX_CONCERNS}")
        concerns = [_read_concern(raw, path, problems)
                    for path, raw in concern_items[:MAX_CONCERNS]]

    _cross_check(agents, concerns, problems)
    problems.raise_if_any("container spec")
    assert name is not None and policy is not None
    return ContainerSpec(
        name=name,
        agents=tuple(a for a, _ in agents if a is not None),
        concerns=tuple(c for c, _ in concerns if c is not None),
        policy=policy,
    )


def _read_names(items: list[tuple[str, Any]] | None, problems: f.Problems,
                what: str) -> tuple[str, ...] | None:
    def read(value: Any, path: str) -> str | None:
        return f.read_string(value, path, problems, check=f.is_label, expect=_LABEL_EXPECT,
                             max_len=63)

    return f.read_unique(items, problems, read, what)


def _read_agent(data: Any, path: str, problems: f.Problems) -> tuple[AgentSpec | None, f.Obj]:
    """The agent (None if it has problems) and its reader, for cross-checks."""
    before = problems.count
    obj = f.Obj(data, path, problems, AGENT_FIELDS, ("name", "image"), aliases=AGENT_ALIASES)
    if not obj.ok:
        return None, obj
    name = obj.string("name", check=f.is_label, expect=_LABEL_EXPECT, max_len=63)
    image = obj.string("image", check=f.is_image_reference, expect=_IMAGE_EXPECT, max_len=512)
    capabilities = f.read_unique(
        obj.array("capabilities", []), problems,
        lambda v, p: f.read_enum(v, p, problems, Capability), "capability")
    data_access = obj.enum("data_access", DataAccessLevel, DataAccessLevel.none)
    isolation = obj.enum("isolation", IsolationLevel, IsolationLevel.strict)
    connections = _read_names(obj.array("connections", []), problems, "connection")
    if isolation is IsolationLevel.strict and connections:
        problems.add(obj.at("connections"),
                     "a strict agent never connects to other agents; use managed or "
                     "collaborative isolation, or remove the connections")
    if problems.count != before:
        return None, obj
    assert name and image and capabilities is not None and connections is not None
    assert data_access is not None and isolation is not None
    return AgentSpec(name, image, capabilities, data_access, isolation, connections), obj


def _read_concern(data: Any, path: str, problems: f.Problems
                  ) -> tuple[ConcernSpec | None, f.Obj]:
    before = problems.count
    obj = f.Obj(data, path, problems, CONCERN_FIELDS, ("name", "category"), aliases=CONCERN_ALIASES)
    if not obj.ok:
        return None, obj
    name = obj.string("name", check=f.is_label, expect=_LABEL_EXPECT, max_len=63)
    category = obj.enum("category", ConcernCategory)
    scope = obj.enum("scope", Scope, Scope.local)
    agents = _read_names(obj.array("agents", []), problems, "agent")
    cross = obj.enum("cross_container", CrossContainerPolicy, CrossContainerPolicy.isolated)
    if problems.count != before:
        return None, obj
    assert name and category is not None and scope is not None
    assert agents is not None and cross is not None
    return ConcernSpec(name, category, scope, agents, cross), obj


def _cross_check(agents: list[tuple[AgentSpec | None, f.Obj]],
                 concerns: list[tuple[ConcernSpec | None, f.Obj]],
                 problems: f.Problems) -> None:
    """Names unique; every referenced agent exists; no agent connects to itself.

    The known names include those written in agents entries that failed for
    another reason, so one mistake does not cascade into "unknown agent" noise
    elsewhere.
    """
    known: set[str] = set()
    for _, obj in agents:
        name = obj.data.get("name")
        if not isinstance(name, str):
            continue
        if name in known:
            problems.add(obj.at("name"), f"duplicate agent name {f.show(name)}")
        known.add(name)
    for agent, obj in agents:
        if agent is None:
            continue
        for j, target in enumerate(agent.connections):
            where = f.index(obj.at("connections"), j)
            if target == agent.name:
                problems.add(where, "an agent cannot connect to itself")
            elif target not in known:
                problems.add(where, f"unknown agent {f.show(target)}")
    concern_names: set[str] = set()
    for concern, obj in concerns:
        if concern is None:
            continue
        if concern.name in concern_names:
            problems.add(obj.at("name"), f"duplicate concern name {f.show(concern.name)}")
        concern_names.add(concern.name)
        for j, member in enumerate(concern.agents):
            if member not in known:
                problems.add(f.index(obj.at("agents"), j), f"unknown agent {f.show(member)}")


# --- building ----------------------------------------------------------------


def derive_id(container_id: str, kind: str, name: str) -> str:
    """A stable UUID for a named part of a container (same inputs, same id)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pacd:container:{container_id}:{kind}:{name}"))


def build_container(spec: ContainerSpec, container_id: str, owner_id: str,
                    created_at: float) -> PersonalAIContainer:
    """The container model for a spec. Agent and concern ids derive from the container id."""
    agents = tuple(
        AgentDomain(
            id=derive_id(container_id, "agent", a.name),
            name=a.name,
            image=a.image,
            capabilities=a.capabilities,
            allowed_connections=a.connections,
            data_access=a.data_access,
            isolation=a.isolation,
        )
        for a in spec.agents
    )
    concerns = tuple(
        ConcernDomain(
            id=derive_id(container_id, "concern", c.name),
            name=c.name,
            category=c.category,
            scope=c.scope,
            connected_agents=c.agents,
            cross_container=c.cross_container,
        )
        for c in spec.concerns
    )
    return PersonalAIContainer(
        id=container_id,
        name=spec.name,
        owner_id=owner_id,
        agents=agents,
        concerns=concerns,
        policy=spec.policy,
        created_at=created_at,
    )


def spec_of(container: PersonalAIContainer) -> ContainerSpec:
    """The spec a container was built from (ids aside)."""
    return ContainerSpec(
        name=container.name,
        agents=tuple(
            AgentSpec(a.name, a.image, a.capabilities, a.data_access, a.isolation,
                      a.allowed_connections)
            for a in container.agents
        ),
        concerns=tuple(
            ConcernSpec(c.name, c.category, c.scope, c.connected_agents, c.cross_container)
            for c in container.concerns
        ),
        policy=container.policy,
    )


_CONTAINER_FIELDS = ("id", "name", "owner_id", "agents", "concerns", "policy", "created_at")
_STORED_AGENT = ("id", "name", "image", "capabilities", "allowed_connections", "data_access",
                 "isolation")
_STORED_CONCERN = ("id", "name", "category", "scope", "connected_agents", "cross_container")


def parse_container(data: Any) -> PersonalAIContainer:
    """The inverse of ``PersonalAIContainer.to_json`` (for state read back from storage).

    The content is re-validated exactly like a spec, so a tampered or corrupted
    record is refused instead of loosening the rules.
    """
    problems = f.Problems("container")
    obj = f.Obj(data, "", problems, _CONTAINER_FIELDS, _CONTAINER_FIELDS)
    if not obj.ok:
        problems.raise_if_any("container")
    container_id = obj.string("id")
    owner_id = obj.string("owner_id")
    created = obj.raw("created_at")
    if obj.has("created_at") and (isinstance(created, bool)
                                  or not isinstance(created, int | float)):
        problems.add("created_at", f"expected a number, got {f.json_type(created)}")
    ids: dict[tuple[str, str], str] = {}
    spec_data: dict[str, Any] = {"name": obj.raw("name"), "policy": obj.raw("policy")}
    for key, kind, fields, rename in (
        ("agents", "agent", _STORED_AGENT, ("allowed_connections", "connections")),
        ("concerns", "concern", _STORED_CONCERN, ("connected_agents", "agents")),
    ):
        items = obj.array(key) or []
        converted: list[Any] = []
        for path, raw in items:
            item = f.Obj(raw, path, problems, fields, ("id",))
            if not item.ok:
                converted.append(raw)
                continue
            item_id = item.string("id")
            body = {(rename[1] if k == rename[0] else k): v for k, v in raw.items()
                    if k != "id" and k in fields}
            if item_id is not None and isinstance(raw.get("name"), str):
                ids[(kind, raw["name"])] = item_id
            converted.append(body)
        spec_data[key] = converted
    problems.raise_if_any("container")
    try:
        spec = parse_container_spec(spec_data)
    except SpecError as exc:
        problems.extend(exc.errors)
    problems.raise_if_any("container")
    assert container_id is not None and owner_id is not None
    built = build_container(spec, container_id, owner_id, float(created))
    return PersonalAIContainer(
        id=built.id,
        name=built.name,
        owner_id=built.owner_id,
        agents=tuple(_with_id(a, ids.get(("agent", a.name), a.id)) for a in built.agents),
        concerns=tuple(_with_id(c, ids.get(("concern", c.name), c.id)) for c in built.concerns),
        policy=built.policy,
        created_at=built.created_at,
    )


def _with_id(item: _Named, new_id: str) -> _Named:
    return replace(item, id=new_id)
