"""Hostile Unicode in documents: parsers answer with a SpecError naming the path, never crash.

Any string may hold lone surrogates (legal in JSON's ``\\u`` escapes, not
Unicode text), control characters, or format characters such as the bidi
override U+202E that make a name read as another. The ContainerSpec and
PluginAPISchema parsers either return a value whose canonical JSON (what gets
hashed, signed and audited) can be made, or raise ``SpecError`` whose messages
can be audited too; no other exception escapes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacd.core.canonical import canonical_json
from pacd.core.fields import first_surrogate, text_problem
from pacd.core.plugins import parse_plugin_schema
from pacd.core.spec import parse_container_spec
from pacd.errors import SpecError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SPEC: dict[str, Any] = json.loads((EXAMPLES / "specs" / "home.json").read_text())
SCHEMA: dict[str, Any] = {
    "name": "Formatter", "version": "1.0.0", "required_capabilities": ["textGeneration"],
    "endpoints": [{"path": "/format", "method": "POST",
                   "rate_limit": {"requests_per_minute": 60, "burst_size": 10}}],
}

#: the characters attacks use: lone surrogates, controls, format (bidi, zero-width)
hostile_char = st.one_of(
    st.sampled_from(["\ud800", "\udfff", "\u202e", "\u200b", "\x00", "\x1b", "\x85",
                     "\ufeff", "\u2066"]),
    st.characters(categories=["Cs", "Cc", "Cf"]),
)
#: any text at all, hostile characters mixed in
any_text = st.text(alphabet=st.one_of(st.characters(), hostile_char), max_size=40)
#: text with at least one hostile character somewhere
hostile_text = st.builds(lambda a, c, b: a + c + b, any_text, hostile_char, any_text)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), any_text, hostile_text,
                      st.floats(allow_nan=False, allow_infinity=False))
hostile_json = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(any_text, inner, max_size=4)),
    max_leaves=20,
)


def _paths(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a document a value sits (to put a hostile one there)."""
    out = [path]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*path, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, (*path, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    doc = copy.deepcopy(doc)
    node = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return doc


def assert_parses_or_refuses(parse: Any, doc: Any) -> None:
    try:
        parsed = parse(doc)
    except SpecError as exc:
        assert exc.errors, "a refusal lists its problems"
        canonical_json({"message": exc.message, "errors": exc.errors})  # auditable
        return
    canonical_json(parsed.to_json())


def _mutations(base: dict[str, Any]) -> Any:
    places = _paths(base)
    text_places = [p for p in places if isinstance(_get(base, p), str)]
    return st.one_of(
        # hostile text where the document has text (names, images, enum values)
        st.tuples(st.sampled_from(text_places), hostile_text).map(
            lambda pv: _replace(base, pv[0], _get(base, pv[0]) + pv[1])),
        st.tuples(st.sampled_from(places), hostile_json).map(
            lambda pv: _replace(base, pv[0], pv[1])),
        # a hostile member name anywhere an object is
        st.tuples(st.sampled_from([p for p in places if isinstance(_get(base, p), dict)]),
                  hostile_text, hostile_json).map(
            lambda pkv: _replace(base, pkv[0], {**_get(base, pkv[0]), pkv[1]: pkv[2]})),
    )


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.one_of(_mutations(SPEC), hostile_json))
def test_container_spec_parser_never_crashes_on_hostile_unicode(doc: Any) -> None:
    assert_parses_or_refuses(parse_container_spec, doc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.one_of(_mutations(SCHEMA), hostile_json))
def test_plugin_schema_parser_never_crashes_on_hostile_unicode(doc: Any) -> None:
    assert_parses_or_refuses(parse_plugin_schema, doc)


def test_lone_surrogate_in_plugin_name_is_refused_naming_the_path() -> None:
    with pytest.raises(SpecError) as info:
        parse_plugin_schema({**SCHEMA, "name": "Formatter\ud800"})
    assert info.value.errors == [
        "name: contains a lone surrogate U+D800, which is not Unicode text"]


@pytest.mark.parametrize(("where", "char"), [
    ("name", "\u202e"), ("name", "\u200b"), ("name", "\x1b"), ("name", "\x85"),
    ("name", "\u2066"), ("endpoints[0].path", "\u202e"),
])
def test_invisible_and_control_characters_in_plugin_names_are_refused(where: str,
                                                                      char: str) -> None:
    schema = copy.deepcopy(SCHEMA)
    if where == "name":
        schema["name"] = "Format" + char + "ter"
    else:
        schema["endpoints"][0]["path"] = "/for" + char + "mat"
    with pytest.raises(SpecError) as info:
        parse_plugin_schema(schema)
    assert info.value.errors[0].startswith(f"{where}: contains the ")
    assert f"U+{ord(char):04X}" in info.value.errors[0]


def test_bidi_override_in_container_name_is_refused() -> None:
    """``home\u202egpj.exe`` would read as something else in a prompt: refused, path named."""
    for place in ("name", "agents[0].name", "concerns[0].name"):
        spec = copy.deepcopy(SPEC)
        if place == "name":
            spec["name"] = "home\u202eevil"
        elif place.startswith("agents"):
            spec["agents"][0]["name"] = "ag\u202eent"
        else:
            spec["concerns"][0]["name"] = "con\u202ecern"
        with pytest.raises(SpecError) as info:
            parse_container_spec(spec)
        assert any(e.startswith(f"{place}: contains the format (invisible or bidi) character "
                                "U+202E (RIGHT-TO-LEFT OVERRIDE)") for e in info.value.errors)


def test_text_rule_allows_ordinary_text_in_any_script() -> None:
    for text in ("Formatter", "Zoë's notes", "日本語の整形", "Ελληνικά", "emoji 🙂"):
        assert text_problem(text) is None


def test_first_surrogate_names_member_names_and_values() -> None:
    assert first_surrogate({"a": [1, {"b": "x\udfff"}]}, "body") == "body.a[1].b"
    assert first_surrogate({"a\ud800": 1}, "body") == 'body["a\\ud800"]'
    assert first_surrogate({"a": ["fine", "Zoë"]}, "body") is None
