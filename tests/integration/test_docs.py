"""docs/API.md cannot drift from what the daemon serves."""

from __future__ import annotations

import re

from pacd import daemon as daemon_module
from pacd.core.rules import Action, required_level
from tests.integration.harness import ROOT, DaemonProcess

API_MD = ROOT / "docs" / "API.md"
_ROW = re.compile(r"^\| `(GET|POST|PUT|PATCH|DELETE) (/v1/[^`]*)` \| (\w+) \| (yes|exempt) \| "
                  r"(durable|written) \|$")


def _route_index() -> dict[tuple[str, str], tuple[str, bool, str]]:
    text = API_MD.read_text(encoding="utf-8")
    section = text.split("### Route index", 1)[1].split("\n### ", 1)[0]
    rows: dict[tuple[str, str], tuple[str, bool, str]] = {}
    for line in section.splitlines():
        match = _ROW.match(line)
        if match:
            method, path, level, audited, durability = match.groups()
            assert (method, path) not in rows, f"listed twice: {method} {path}"
            rows[(method, path)] = (level, audited == "yes", durability)
    return rows


def test_every_served_route_is_documented_with_its_level_audit_and_durability_class(
        daemon: DaemonProcess) -> None:
    doc = daemon.client().request("GET", "/v1/openapi.json")
    served = {
        (method.upper(), path): (op["x-pacd-level"], op["x-pacd-audited"], op["x-pacd-audit"])
        for path, ops in doc["paths"].items() for method, op in ops.items()
    }
    index = _route_index()
    assert len(served) >= 25
    assert sorted(set(served) - set(index)) == [], "served but not in docs/API.md"
    assert sorted(set(index) - set(served)) == [], "in docs/API.md but not served"
    assert index == served
    # The exemptions are exactly the two documented ones.
    assert sorted(k for k, (_, audited, _) in served.items() if not audited) == [
        ("GET", "/v1/openapi.json"), ("GET", "/v1/status")]
    # What changes state or releases data is fsynced before its answer.
    for route in [("POST", "/v1/containers"), ("POST", "/v1/approvals/{id}/approve"),
                  ("DELETE", "/v1/containers/{id}"), ("POST", "/v1/sessions/complete")]:
        assert served[route][2] == "durable", route
    text = API_MD.read_text(encoding="utf-8")
    for method, path in served:
        assert f"`{method} {path}`" in text


_KIND_ROW = re.compile(r"^\| `([a-z]+(?:\.[a-z]+)+)` \| (\w+) \| ")


def _approval_kinds() -> dict[str, str]:
    text = API_MD.read_text(encoding="utf-8")
    section = text.split("### Approval kinds", 1)[1].split("\n### ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        match = _KIND_ROW.match(line)
        if match:
            assert match.group(1) not in rows, f"listed twice: {match.group(1)}"
            rows[match.group(1)] = match.group(2)
    return rows


def test_every_approval_kind_is_documented_with_its_level() -> None:
    registered = {
        daemon_module.PLUGIN_INSTALL: required_level(Action.install_plugin),
        daemon_module.AUDIT_REANCHOR: daemon_module.REANCHOR_LEVEL,
        daemon_module.CREDENTIAL_ADD: required_level(Action.add_credential),
        daemon_module.CREDENTIAL_REMOVE: required_level(Action.remove_credential),
    }
    # The daemon registers exactly these: a new kind is added here and to the table.
    source = (ROOT / "pacd" / "daemon.py").read_text(encoding="utf-8")
    assert source.count("approvals.register(") == len(registered)
    assert _approval_kinds() == {kind: level.value for kind, level in registered.items()}
