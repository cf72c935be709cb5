from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacd.core.models import (
    Capability,
    ConcernCategory,
    CrossContainerPolicy,
    DataAccessLevel,
    IsolationLevel,
    Scope,
    SecurityPolicy,
)
from pacd.core.rules import can_connect, may_read, may_write
from pacd.core.spec import (
    ContainerSpec,
    build_container,
    derive_id,
    load_container_spec,
    parse_container,
    parse_container_spec,
    spec_of,
)
from pacd.errors import SpecError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "specs"
# every error starts with a path: name, name[0], name.sub, name[0].sub[1], spec["odd key"]
_SUB = r'\[(?:\d+|"(?:[^"\\]|\\.)*")\]'
PATH = re.compile(rf"^[A-Za-z_][A-Za-z0-9_]*({_SUB})*(\.[A-Za-z_][A-Za-z0-9_]*({_SUB})*)*: ")


def home() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / "home.json").read_text())
    return data


def errors_of(data: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_container_spec(data)
    errors = info.value.errors
    # every listed reason names its path (a capped list ends with "and N more")
    assert errors and all(PATH.match(e) for e in info.value.reasons), errors
    return errors


def test_example_spec_parses_and_toml_twin_is_equal() -> None:
    spec = load_container_spec((EXAMPLES / "home.json").read_text(), "json")
    twin = load_container_spec((EXAMPLES / "home.toml").read_text(), "toml")
    assert spec == twin
    assert spec.name == "home"
    assert spec.policy == SecurityPolicy.strict()
    writer, analyst = spec.agents
    assert (writer.name, writer.isolation, writer.data_access, writer.capabilities) == (
        "writer", IsolationLevel.strict, DataAccessLevel.readOnly, (Capability.textGeneration,))
    assert analyst.connections == ("writer",)
    assert analyst.capabilities == (Capability.dataAnalysis, Capability.databaseQuery)
    personal, work = spec.concerns
    assert personal.agents == ("writer", "analyst")
    assert (work.category, work.scope, work.cross_container) == (
        ConcernCategory.professional, Scope.shared, CrossContainerPolicy.ownerOnly)


def test_example_spec_builds_a_container_with_the_seed_rules() -> None:
    spec = load_container_spec((EXAMPLES / "home.json").read_text(), "json")
    c = build_container(spec, "11111111-2222-3333-4444-555555555555", "owner-1", 12.5)
    assert (c.id, c.owner_id, c.created_at, c.name) == (
        "11111111-2222-3333-4444-555555555555", "owner-1", 12.5, "home")
    assert c.agents[0].id == derive_id(c.id, "agent", "writer")
    assert c.concerns[1].id == derive_id(c.id, "concern", "work")
    assert len({a.id for a in c.agents} | {k.id for k in c.concerns}) == 4
    # the same inputs give the same ids; another container gives others
    assert build_container(spec, c.id, "owner-1", 12.5) == c
    assert build_container(spec, "other", "owner-1", 12.5).agents[0].id != c.agents[0].id
    assert can_connect(c, "analyst", "writer")
    assert not can_connect(c, "writer", "analyst")
    assert may_read(c, "writer", "personal") and not may_write(c, "writer", "personal")
    assert may_write(c, "analyst", "work") and not may_read(c, "writer", "work")


def test_spec_json_round_trips() -> None:
    spec = parse_container_spec(home())
    assert spec.to_json()["policy"] == "strict"
    assert parse_container_spec(spec.to_json()) == spec
    custom = parse_container_spec({**home(), "policy": {"allow_plugins": True}})
    assert custom.to_json()["policy"]["allow_plugins"] is True
    assert parse_container_spec(custom.to_json()) == custom


def test_container_json_round_trips_through_parse_container() -> None:
    c = build_container(parse_container_spec(home()), "cid", "oid", 3.0)
    assert parse_container(c.to_json()) == c
    assert spec_of(c) == parse_container_spec(home())
    # stored ids win over derived ones
    body = c.to_json()
    body["agents"][0]["id"] = "kept"
    assert parse_container(body).agents[0].id == "kept"


def test_parse_container_refuses_tampered_records() -> None:
    body = build_container(parse_container_spec(home()), "cid", "oid", 3.0).to_json()
    body["agents"][1]["allowed_connections"] = ["ghost"]
    body["policy"]["requires_carbon_based_auth"] = False
    with pytest.raises(SpecError) as info:
        parse_container(body)
    assert info.value.errors == [
        "policy.requires_carbon_based_auth: must be true: every pacd container requires "
        "carbon-based authentication",
        "agents[1].connections[0]: unknown agent 'ghost'",
    ]
    body2 = build_container(parse_container_spec(home()), "cid", "oid", 3.0).to_json()
    del body2["agents"][0]["id"]
    body2["created_at"] = "yesterday"
    body2["extra"] = 1
    with pytest.raises(SpecError) as info:
        parse_container(body2)
    assert info.value.errors == [
        "extra: unknown field (expected one of id, name, owner_id, agents, concerns, policy, "
        "created_at)",
        "created_at: expected a number, got string",
        "agents[0].id: is required",
    ]
    with pytest.raises(SpecError, match="container: expected an object, got string"):
        parse_container("x")
    body3 = build_container(parse_container_spec(home()), "cid", "oid", 3.0).to_json()
    body3["concerns"][0] = "personal"
    with pytest.raises(SpecError) as info:
        parse_container(body3)
    assert info.value.errors == ["concerns[0]: expected an object, got string"]


def test_the_documented_error_format() -> None:
    data = home()
    data["agents"][1]["isolation"] = "stricter"
    assert errors_of(data) == [
        "agents[1].isolation: 'stricter' is not one of strict, managed, collaborative"]


def test_all_errors_are_collected_at_once() -> None:
    data = home()
    data["name"] = "Home Box"
    data["colour"] = "blue"
    data["policy"] = "paranoid"
    data["agents"][0]["image"] = "Not An Image!"
    data["agents"][0]["capabilities"] = ["textGeneration", "telepathy", "textGeneration"]
    data["agents"][0]["data_access"] = 3
    data["agents"][1]["connections"] = ["writer", "ghost", "analyst", "writer"]
    data["agents"].append({"name": "writer", "image": "localhost/agent:1"})
    data["agents"].append({"name": "-bad-", "image": "localhost/agent:1", "extra": 1})
    data["concerns"][0]["agents"] = ["writer", "nobody"]
    data["concerns"][1]["name"] = "personal"
    data["concerns"][1]["scope"] = "galactic"
    data["concerns"].append({"name": "x"})
    assert errors_of(data) == [
        "colour: unknown field (expected one of name, policy, agents, concerns)",
        "name: 'Home Box' is not a lowercase DNS label (a-z, 0-9 and '-', at most 63, "
        "not starting or ending with '-')",
        "policy: 'paranoid' is not one of default, strict (or a custom policy object)",
        "agents[0].image: 'Not An Image!' is not a container image reference "
        "(like localhost/agent:latest)",
        "agents[0].capabilities[1]: 'telepathy' is not one of dataAnalysis, textGeneration, "
        "imageProcessing, codeGeneration, webSearch, fileAccess, networkAccess, databaseQuery, "
        "apiCall",
        "agents[0].capabilities[2]: duplicate capability 'textGeneration'",
        "agents[0].data_access: expected a string (one of none, readOnly, readWrite, "
        "crossDomain), got integer",
        "agents[1].connections[3]: duplicate connection 'writer'",
        "agents[3].extra: unknown field (expected one of name, image, capabilities, "
        "data_access, isolation, connections)",
        "agents[3].name: '-bad-' is not a lowercase DNS label (a-z, 0-9 and '-', at most 63, "
        "not starting or ending with '-')",
        "concerns[1].scope: 'galactic' is not one of local, shared, federated",
        "concerns[2].category: is required",
        "agents[2].name: duplicate agent name 'writer'",
        "concerns[0].agents[1]: unknown agent 'nobody'",
    ]


def test_connection_cross_checks() -> None:
    data = home()
    data["agents"][1]["connections"] = ["ghost", "analyst"]
    data["agents"][0]["connections"] = ["analyst"]  # writer is strict
    data["concerns"][1]["name"] = "personal"
    assert errors_of(data) == [
        "agents[0].connections: a strict agent never connects to other agents; use managed or "
        "collaborative isolation, or remove the connections",
        "agents[1].connections[0]: unknown agent 'ghost'",
        "agents[1].connections[1]: an agent cannot connect to itself",
        "concerns[1].name: duplicate concern name 'personal'",
    ]


@pytest.mark.parametrize(("data", "expected"), [
    ([], ["spec: expected an object, got array"]),
    ({}, ["name: is required", "agents: is required"]),
    ({"name": "x", "agents": []}, ["agents: must list at least one agent"]),
    ({"name": "x", "agents": {}}, ["agents: expected an array, got object"]),
    ({"name": "x", "agents": [1]}, ["agents[0]: expected an object, got integer"]),
    ({"name": "x", "agents": [{"name": "a", "image": "i"}], "concerns": {}},
     ["concerns: expected an array, got object"]),
    ({"name": "x", "agents": [{"name": "a", "image": "i"}], "concerns": [None]},
     ["concerns[0]: expected an object, got null"]),
    ({"name": "x", "agents": [{"name": "a", "image": ""}]}, ["agents[0].image: must not be empty"]),
    ({"name": "x", "agents": [{"name": "a" * 64, "image": "i"}]},
     ["agents[0].name: is too long (64 characters, at most 63)"]),
    ({"name": "x", "agents": [{"name": "a", "image": "i"}], "policy": 5},
     ["policy: expected a preset name (default, strict) or a policy object, got integer"]),
    ({"name": "x", "agents": [{"name": "a", "image": "i"}], "policy": {"ports": [1]}},
     ["policy.ports: unknown field (expected one of requires_carbon_based_auth, "
      "max_concurrent_connections, allowed_network_ports, encryption_required, audit_logging, "
      "data_retention_days, allow_plugins, allow_external_apis, trusted_domains)"]),
    ({"name": "x", "agents": [{"name": "a", "image": "i"}] * 65},
     ["agents: has 65 agents, at most 64"]),
    ({"name": "x", "agents": [{"name": "a", "image": "i"}],
      "concerns": [{"name": f"k{i}", "category": "health"} for i in range(65)]},
     ["concerns: has 65 concerns, at most 64"]),
    ({"name": "x", "agents": [{"name": "a", "image": "i"}],
      # 255 = "*." and a name of the longest length DNS has (253)
      "policy": {"trusted_domains": [("a" * 62 + ".") * 4 + "orgx"]}},
     ["policy.trusted_domains[0]: is too long (256 characters, at most 255)"]),
])
def test_shape_errors(data: Any, expected: list[str]) -> None:
    assert errors_of(data)[: len(expected)] == expected


def test_defaults_lean_closed() -> None:
    spec = parse_container_spec({"name": "x", "agents": [{"name": "a", "image": "i"}],
                                 "concerns": [{"name": "k", "category": "health"}]})
    assert spec.policy == SecurityPolicy.default()
    (a,) = spec.agents
    assert (a.isolation, a.data_access, a.capabilities, a.connections) == (
        IsolationLevel.strict, DataAccessLevel.none, (), ())
    (k,) = spec.concerns
    assert (k.scope, k.cross_container, k.agents) == (Scope.local, CrossContainerPolicy.isolated,
                                                     ())


@pytest.mark.parametrize("image", [
    "alpine", "alpine:3.19", "localhost/agent:latest", "quay.io/org/img:v1.2-rc_3",
    "registry.example.org:5000/a/b/c", "docker.io/library/alpine@sha256:" + "a" * 64,
    "ghcr.io/o/x:1@sha256:" + "0" * 64, "my_registry__x/a.b-c",
])
def test_valid_images(image: str) -> None:
    spec = parse_container_spec({"name": "x", "agents": [{"name": "a", "image": image}]})
    assert spec.agents[0].image == image


@pytest.mark.parametrize("image", [
    "Alpine", "alpine:", ":tag", "a b", "alpine:3.19:x", "/alpine", "alpine/", "a//b",
    "alpine@sha256:short", "alpine:" + "t" * 129, "-a", "a\nFROM evil",
])
def test_invalid_images(image: str) -> None:
    assert errors_of({"name": "x", "agents": [{"name": "a", "image": image}]})[0].startswith(
        "agents[0].image: ")


@pytest.mark.parametrize(("text", "fmt", "message"), [
    ("{", "json", "spec: not valid JSON: Expecting property name enclosed in double quotes "
                  "(line 1, column 2)"),
    ('{"name": "a", "name": "b"}', "json", "spec: not valid JSON: duplicate key 'name'"),
    ('{"name": NaN}', "json", "spec: not valid JSON: NaN is not a number"),
    ("[" * 100000, "json", "spec: not valid JSON: nested too deeply"),
    ('{"a": ' + "9" * 5000 + "}", "json", "spec: not valid JSON: a number is too long"),
    ("name = ", "toml", "spec: not valid TOML: "),
    ("a = " + "9" * 5000, "toml", "spec: not valid TOML: a number is too long"),
    ("a = " + "[" * 100000, "toml", "spec: not valid TOML: nested too deeply"),
    ("name: x", "yaml", "spec: unsupported format 'yaml' (expected json or toml)"),
])
def test_decode_errors(text: str, fmt: Any, message: str) -> None:
    with pytest.raises(SpecError) as info:
        load_container_spec(text, fmt)
    assert info.value.errors[0].startswith(message)
    assert len(info.value.errors) == 1


def test_toml_values_without_a_json_type_are_named() -> None:
    with pytest.raises(SpecError) as info:
        load_container_spec('name = 1979-05-27\nagents = [{name = "a", image = "i"}]', "toml")
    assert info.value.errors == ["name: expected a string, got date"]


def test_toml_shape_errors_name_their_paths() -> None:
    text = (EXAMPLES / "home.toml").read_text().replace('isolation = "strict"',
                                                        'isolation = "stricter"')
    with pytest.raises(SpecError) as info:
        load_container_spec(text, "toml")
    assert info.value.errors == [
        "agents[0].isolation: 'stricter' is not one of strict, managed, collaborative"]
    assert info.value.status == 422 and info.value.code == "invalid_request"


# --- properties ----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_arbitrary_json_only_ever_raises_spec_error(data: Any) -> None:
    try:
        parse_container_spec(data)
    except SpecError as exc:
        assert exc.errors and all(PATH.match(e) for e in exc.errors), exc.errors


# Mutations of a valid spec reach the deep branches that random JSON rarely does.
FIELD_VALUES: dict[str, list[Any]] = {
    "name": ["home", "Home", "", 1, None, "a" * 70],
    "policy": ["default", "strict", "nope", {"allow_plugins": True}, {"x": 1}, [],
               {"allowed_network_ports": [0]}, {"trusted_domains": ["ok.org", "BAD"]}],
    "image": ["localhost/a:1", "BAD", 3, ""],
    "capabilities": [[], ["webSearch"], ["x"], "textGeneration", [1], ["apiCall", "apiCall"]],
    "data_access": ["none", "readWrite", "x", None],
    "isolation": ["strict", "managed", "collaborative", "x", True],
    "connections": [[], ["writer"], ["analyst"], ["ghost"], "writer", [None]],
    "category": ["health", "x", 2],
    "scope": ["local", "federated", "x"],
    "agents": [["writer"], ["ghost"], [], {}, ["analyst", "analyst"]],
    "cross_container": ["public", "x", []],
}


def _dicts(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = data.get(key)
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


@st.composite
def mutated_specs(draw: st.DrawFn) -> Any:
    data = copy.deepcopy(home())
    for _ in range(draw(st.integers(1, 6))):
        target = draw(st.sampled_from(["top", "agent", "concern", "drop", "extra"]))
        if target == "top":
            key = draw(st.sampled_from(["name", "policy"]))
            data[key] = draw(st.sampled_from(FIELD_VALUES[key]))
        elif target == "agent" and _dicts(data, "agents"):
            agent = draw(st.sampled_from(_dicts(data, "agents")))
            key = draw(st.sampled_from(["name", "image", "capabilities", "data_access",
                                        "isolation", "connections"]))
            agent[key] = draw(st.sampled_from(FIELD_VALUES[key]))
        elif target == "concern" and _dicts(data, "concerns"):
            concern = draw(st.sampled_from(_dicts(data, "concerns")))
            key = draw(st.sampled_from(["name", "category", "scope", "agents",
                                        "cross_container"]))
            concern[key] = draw(st.sampled_from(FIELD_VALUES[key]))
        elif target == "drop":
            obj = draw(st.sampled_from([data, *_dicts(data, "agents"),
                                        *_dicts(data, "concerns")]))
            if obj:
                obj.pop(draw(st.sampled_from(sorted(obj))))
        elif target == "extra":
            key = draw(st.sampled_from(["agents", "concerns"]))
            if isinstance(data.get(key), list):
                data[key].append(draw(json_values))
    return data


@settings(max_examples=300)
@given(mutated_specs())
def test_mutated_specs_give_path_errors_or_round_trip(data: Any) -> None:
    try:
        spec = parse_container_spec(data)
    except SpecError as exc:
        assert exc.errors and all(PATH.match(e) for e in exc.errors), exc.errors
        assert len(set(exc.errors)) == len(exc.errors)
        return
    assert isinstance(spec, ContainerSpec)
    assert parse_container_spec(spec.to_json()) == spec
    container = build_container(spec, "c", "o", 0.0)
    assert parse_container(container.to_json()) == container


@given(st.text(max_size=200))
def test_arbitrary_text_only_ever_raises_spec_error(text: str) -> None:
    for fmt in ("json", "toml"):
        try:
            load_container_spec(text, fmt)
        except SpecError as exc:
            assert all(PATH.match(e) for e in exc.errors), exc.errors
