"""The published OpenAPI document is exactly what the daemon serves.

"Served" is measured on the live socket, from outside: a (method, path) is
served when the daemon answers it with anything but "no such route" (404) or
"method not allowed" (405). The document is the one the daemon itself serves.
"""

from __future__ import annotations

import json
import re
import socket

import pytest
from openapi_spec_validator import validate

from tests.integration.harness import DaemonProcess

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _probe(daemon: DaemonProcess, method: str, path: str) -> tuple[int, str]:
    """The status and error code of one tokenless request; reads no further than the
    answer's head and body (a stream is cut off after its head)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(daemon.socket))
        body = b"{}" if method in {"POST", "PUT", "PATCH"} else b""
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(65536)
            assert chunk, (method, path, answer)
            answer += chunk
        head, _, rest = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        if b"application/json" not in head.lower():
            return status, ""  # a stream (the event stream): served, whatever it says
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(rest) < length:
            chunk = s.recv(65536)
            assert chunk, (method, path)
            rest += chunk
    error = json.loads(rest).get("error", {}) if status >= 400 else {}
    code = str(error.get("code", ""))
    if code == "not_found" and "no such route" not in str(error.get("message")):
        code = "not_found (a resource)"
    return status, code


def _served(daemon: DaemonProcess, method: str, path: str) -> bool:
    status, code = _probe(daemon, method, path)
    if (status, code) == (404, "not_found") or (status, code) == (405, "method_not_allowed"):
        return False
    assert status not in {404, 405} or code == "not_found (a resource)", (method, path, code)
    return True


def test_document_is_valid_and_names_the_routes_that_must_exist(daemon: DaemonProcess) -> None:
    doc = daemon.client().request("GET", "/v1/openapi.json")
    validate(doc)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert {("GET", "/v1/events"), ("POST", "/v1/approvals/{id}/approve"),
            ("GET", "/v1/status"), ("DELETE", "/v1/containers/{id}")} <= documented
    assert len(documented) >= 25


def test_served_routes_equal_documented_routes(daemon: DaemonProcess) -> None:
    doc = daemon.client().request("GET", "/v1/openapi.json")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    templates = {p: re.compile("^" + re.sub(r"{[^}]+}", "[^/]+", p) + "$") for p in doc["paths"]}
    # Every documented path, every prefix of one, and one step beyond each are probed
    # with every method: a route served there but left out of the document shows up.
    candidates = set()
    for path in doc["paths"]:
        concrete = re.sub(r"{[^}]+}", "nonexistent", path)
        parts = concrete.split("/")
        candidates |= {"/".join(parts[:i]) or "/" for i in range(1, len(parts) + 1)}
        candidates.add(concrete + "/extra")
    candidates |= {"/", "/v1", "/v2/status", "/v1/debug", "/v1/admin", "/v1/config",
                   "/v1/tokens"}
    served = set()
    for concrete in sorted(candidates):
        for method in METHODS:
            if _served(daemon, method, concrete):
                # Named by the documented path it matches, or by itself if none does.
                matches = [p for p, rx in templates.items()
                           if rx.match(concrete) and (method, p) in documented]
                served |= {(method, p) for p in matches} or {(method, concrete)}
    assert sorted(served - documented) == [], "served but not in the OpenAPI document"
    assert sorted(documented - served) == [], "in the OpenAPI document but not served"


@pytest.mark.parametrize("route", ["/v1/status", "/v1/openapi.json"])
def test_basic_routes_need_no_token(daemon: DaemonProcess, route: str) -> None:
    assert daemon.client().request("GET", route)
