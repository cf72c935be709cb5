"""docs/API.md cannot drift from what the daemon serves."""

from __future__ import annotations

import re

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
