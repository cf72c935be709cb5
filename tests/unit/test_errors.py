"""The error hierarchy: every class carries a wire code, an HTTP status and an exit code."""

from __future__ import annotations

import pytest

from pacd import errors


@pytest.mark.parametrize("cls", errors.ALL_ERRORS)
def test_every_error_has_wire_code_status_and_exit_code(cls: type[errors.PacdError]) -> None:
    assert cls.code and cls.code == cls.code.lower() and " " not in cls.code
    assert 400 <= cls.status <= 599
    assert cls.exit_code != 0


def test_api_contract_codes() -> None:
    # API.md names these codes and statuses; changing them breaks outside tools.
    assert (errors.Unauthorized.code, errors.Unauthorized.status) == ("unauthorized", 401)
    assert (errors.TokenExpired.code, errors.TokenExpired.status) == ("token_expired", 401)
    assert (errors.Forbidden.code, errors.Forbidden.status) == ("forbidden", 403)
    assert (errors.NotFound.code, errors.NotFound.status) == ("not_found", 404)
    assert errors.InvalidRequest.code == "invalid_request"
    assert (errors.Conflict.code, errors.Conflict.status) == ("conflict", 409)
    assert (errors.Busy.code, errors.Busy.status) == ("busy", 503)
    assert errors.PresenceRequired.status == 403
    assert errors.RateLimited.code == "rate_limited" and errors.RateLimited.status == 429


def test_wire_shape_carries_extras() -> None:
    err = errors.PresenceRequired("touch your key", required_level="enhanced")
    assert err.to_wire() == {"error": {"code": "presence_required", "message": "touch your key",
                                       "required_level": "enhanced"}}
    many = errors.InvalidRequest("2 problems", errors=["a: bad", "b: bad"])
    assert many.to_wire()["error"]["errors"] == ["a: bad", "b: bad"]


def test_error_for_code_round_trip() -> None:
    for cls in errors.ALL_ERRORS:
        found = errors.error_for_code(cls.code)
        assert found.code == cls.code
    assert errors.error_for_code("no_such_code") is errors.PacdError


def test_integrity_error_is_opaque() -> None:
    assert str(errors.IntegrityError()) == "sealed data failed authentication"


def test_api_md_exit_code_table_matches_the_hierarchy() -> None:
    # One situation, one documented exit code: the CLI exits with its error's class code.
    import re
    from pathlib import Path

    from pacd.api.server import ExpectationFailed, RequestTimeout

    text = (Path(__file__).resolve().parents[2] / "docs" / "API.md").read_text()
    section = text.split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, int] = {}
    for exit_code, codes in re.findall(r"^\| (\d+) \| ([^|]*) \|", section, re.MULTILINE):
        for code in re.findall(r"`([a-z_]+)`", codes):
            assert code not in documented, f"{code} listed twice"
            documented[code] = int(exit_code)
    served = (*errors.ALL_ERRORS, RequestTimeout, ExpectationFailed)
    actual = {cls.code: cls.exit_code for cls in served}
    assert documented == actual
