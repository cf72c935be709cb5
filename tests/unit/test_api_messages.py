"""Message decoding and the JSON schemas generated from the same classes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openapi_spec_validator import validate

from pacd import messages
from pacd.errors import InvalidRequest


def test_decode_accepts_a_valid_body() -> None:
    body = messages.decode(messages.PluginSubmit, {"agent": "writer", "schema": {"name": "x"}})
    assert body == messages.PluginSubmit(agent="writer", schema={"name": "x"})
    assert messages.decode(messages.Deny, {}) == messages.Deny(reason=None)


def test_decode_reports_every_error_with_its_path() -> None:
    with pytest.raises(InvalidRequest) as exc:
        messages.decode(messages.SessionComplete, {"credential": [], "extra": 1, "session_id": ""})
    assert exc.value.errors == [
        "body.extra: unknown field",
        "body.session_id: must not be shorter than 1",
        "body.credential: expected an object",
    ]


@pytest.mark.parametrize("value", [True, 1.5, "1", None])
def test_decode_is_strict_about_types(value: Any) -> None:
    with pytest.raises(InvalidRequest):
        messages.decode(messages.AuditQuery, {"after": value})


def test_literal_fields() -> None:
    assert messages.decode(messages.SessionBegin, {"level": "enhanced"}).level == "enhanced"
    with pytest.raises(InvalidRequest) as exc:
        messages.decode(messages.SessionBegin, {"level": "carbonProof"})
    assert "must be one of enhanced, biometric" in exc.value.errors[0]


def test_query_decoding_parses_integers_and_checks_ranges() -> None:
    assert messages.decode_query(messages.AuditQuery, {"after": "5", "limit": "10"}) == \
        messages.AuditQuery(5, 10)
    with pytest.raises(InvalidRequest):
        messages.decode_query(messages.AuditQuery, {"after": "x"})
    with pytest.raises(InvalidRequest):
        messages.decode_query(messages.AuditQuery, {"limit": "100000"})


def test_schemas_form_a_valid_openapi_document() -> None:
    components: dict[str, Any] = {}
    for cls in (messages.StatusView, messages.ApprovalDetail, messages.ContainerList,
                messages.AuditPage, messages.PluginSubmit):
        messages.schema_for(cls, components)
    doc = {"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": {},
           "components": {"schemas": components}}
    validate(doc)
    detail = components["ApprovalDetail"]
    assert detail["additionalProperties"] is False
    assert {"payload", "challenge", "publicKey", "origin", "id", "state"} <= set(
        detail["properties"])
    assert detail["properties"]["publicKey"]["nullable"] is True


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=4))
def test_decode_never_crashes(body: dict[str, Any]) -> None:
    try:
        messages.decode(messages.OwnerCreate, body)
    except InvalidRequest as exc:
        assert exc.errors


def test_encode_round_trips_through_decode() -> None:
    view = messages.SessionToken(token="t", level="biometric", expires_at="2030-01-01T00:00:00Z")
    assert messages.decode(messages.SessionToken, messages.encode(view)) == view


def test_query_integers_stay_in_sqlite_range() -> None:
    # Found by the fuzzer: 2**63 reached SQLite and overflowed.
    with pytest.raises(InvalidRequest):
        messages.decode_query(messages.AuditQuery, {"after": str(2**63)})
    assert messages.decode_query(messages.AuditQuery, {"after": str(2**63 - 1)}).after == 2**63 - 1


def test_bidi_override_in_a_name_field_is_refused_naming_the_path() -> None:
    with pytest.raises(InvalidRequest) as info:
        messages.decode(messages.PluginSubmit, {"agent": "wri\u202eter", "schema": {}})
    assert info.value.errors == [
        "body.agent: contains the format (invisible or bidi) character U+202E "
        "(RIGHT-TO-LEFT OVERRIDE)"]
    with pytest.raises(InvalidRequest, match=r"body.label: contains the format .* U\+200B"):
        messages.decode(messages.CredentialBegin, {"label": "my\u200bkey"})
    assert messages.decode(messages.CredentialBegin, {"label": "Zoë's key"}).label == "Zoë's key"
