from __future__ import annotations

import datetime

import pytest

from pacd.core import fields as f
from pacd.errors import SpecError


@pytest.mark.parametrize(("value", "ok"), [
    ("a", True), ("writer-2", True), ("0", True), ("a" * 63, True),
    ("", False), ("a" * 64, False), ("-a", False), ("a-", False), ("A", False),
    ("a_b", False), ("a.b", False), ("é", False),
])
def test_is_label(value: str, ok: bool) -> None:
    assert f.is_label(value) is ok


@pytest.mark.parametrize(("value", "ok"), [
    ("example.org", True), ("localhost", True), ("a-b.c-d.io", True), ("10.0.0.1", True),
    ("", False), ("*.example.org", False), ("example.org.", False), ("-a.org", False),
    ("a..org", False), ("Example.org", False), (("a" * 63 + ".") * 4 + "org", False),
    ("a" * 64 + ".org", False),
])
def test_is_hostname(value: str, ok: bool) -> None:
    assert f.is_hostname(value) is ok


def test_image_name_length_limit() -> None:
    assert f.is_image_reference("a" * 255)
    assert not f.is_image_reference("a" * 256)


@pytest.mark.parametrize(("value", "name"), [
    (None, "null"), (True, "boolean"), (1, "integer"), (1.5, "number"), ("s", "string"),
    ({}, "object"), ([], "array"), ((), "array"), (datetime.date(2020, 1, 1), "date"),
])
def test_json_type(value: object, name: str) -> None:
    assert f.json_type(value) == name


def test_show_cuts_long_values() -> None:
    assert f.show("abc") == "'abc'"
    shown = f.show("x" * 1000)
    assert len(shown) == 60 and shown.endswith("...")


@pytest.mark.parametrize(("path", "key", "joined"), [
    ("", "name", "name"), ("agents[0]", "image", "agents[0].image"),
    ("", "0", '["0"]'), ("policy", "a b", 'policy["a b"]'), ("p", 'q"', 'p["q\\""]'),
    ("", "k" * 50, "k" * 50), ("", "-" * 50, '["' + "-" * 37 + '..."]'),
])
def test_join(path: str, key: str, joined: str) -> None:
    assert f.join(path, key) == joined


def test_problems_prefix_and_raise() -> None:
    problems = f.Problems("doc")
    assert not problems
    problems.raise_if_any("doc")  # nothing to raise
    problems.add("", "bad root")
    problems.add('["x"]', "odd key")
    problems.add("a.b", "deep")
    assert problems
    with pytest.raises(SpecError) as info:
        problems.raise_if_any("the doc")
    assert info.value.errors == ["doc: bad root", 'doc["x"]: odd key', "a.b: deep"]
    assert str(info.value) == "the doc is invalid (3 problems): doc: bad root"
