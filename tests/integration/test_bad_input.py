"""Bad input never reaches a 500: hostile bytes and text over the real socket get 4xx.

Each test sends what an attacker (or a broken client) would — a lone
surrogate escape, a bidi override in a name, undecodable bytes in the
Authorization header — as raw bytes over the daemon's Unix socket, and
checks the wire answer, its error code, and that the refusal is in the audit
log (a refusal whose text cannot be audited would be a 503 instead).
"""

from __future__ import annotations

import json
import re
from typing import Any

from tests.integration.harness import ROOT, DaemonProcess, Owner, plugin, spec_with_plugins
from tests.integration.test_socket import _raw


def _post(daemon: DaemonProcess, path: str, body: bytes,
          headers: bytes = b"") -> tuple[int, dict[str, Any]]:
    answer = _raw(daemon.socket, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                  + headers + b"Content-Type: application/json\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    head, _, raw = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(raw)


def _denied(daemon: DaemonProcess, action: str) -> dict[str, Any]:
    entries = [e for e in daemon.audit() if e["action"] == action and e["decision"] == "deny"]
    assert entries, [(e["action"], e["decision"]) for e in daemon.audit()]
    return entries[-1]


def test_non_utf8_authorization_header_is_401(daemon: DaemonProcess) -> None:
    Owner(daemon).init("Alice")
    for token in (b"\xff\xfe\xfd", b"abc\xc3(", b"\xed\xa0\x80"):  # invalid UTF-8, a surrogate
        status, body = _post(daemon, "/v1/containers", b"{}",
                             b"Authorization: Bearer " + token + b"\r\n")
        assert (status, body["error"]["code"]) == (401, "unauthorized"), body
        assert body["error"]["required_level"] == "biometric"
    entry = _denied(daemon, "container.create")
    assert entry["details"]["code"] == "unauthorized"
    assert daemon.alive()


def test_lone_surrogate_in_plugin_name_is_a_422_not_a_500(daemon: DaemonProcess) -> None:
    owner = Owner(daemon)
    owner.init("Alice")
    owner.enroll()
    owner.session("biometric")
    container = owner.authed().request("POST", "/v1/containers", spec_with_plugins())
    schema = plugin("text-formatter")
    schema["name"] = "Format\ud800ter"
    # json.dumps writes the lone surrogate as the \ud800 escape, as an attacker would
    body = json.dumps({"agent": "writer", "schema": schema}).encode()
    assert b"\\ud800" in body
    status, answer = _post(daemon, f"/v1/containers/{container['id']}/plugins", body,
                           b"Authorization: Bearer %s\r\n" % str(owner.token).encode())
    assert (status, answer["error"]["code"]) == (422, "invalid_request"), answer
    assert answer["error"]["errors"] == [
        "body.schema.name: contains a lone surrogate, which is not Unicode text"]
    entry = _denied(daemon, "plugin.submit")
    assert entry["details"]["code"] == "invalid_request"
    # Also where the decoder, not a spec parser, reads it: a member name of a plain body.
    status, answer = _post(daemon, "/v1/owner", b'{"name\\ud800": "x"}')
    assert (status, answer["error"]["code"]) == (422, "invalid_request"), answer
    assert answer["error"]["errors"] == [
        'body["name\\ud800"]: contains a lone surrogate, which is not Unicode text']
    assert _denied(daemon, "owner.create")["details"]["code"] == "invalid_request"


def test_bidi_override_in_container_name_is_refused(daemon: DaemonProcess) -> None:
    owner = Owner(daemon)
    owner.init("Alice")
    owner.enroll()
    token = owner.session("biometric")
    spec = spec_with_plugins()
    spec["name"] = "studio\u202etxt.exe"
    spec["agents"][0]["name"] = "wri\u200bter"
    body = json.dumps(spec, ensure_ascii=False).encode()
    status, answer = _post(daemon, "/v1/containers", body,
                           f"Authorization: Bearer {token}\r\n".encode())
    assert (status, answer["error"]["code"]) == (422, "invalid_request"), answer
    errors = answer["error"]["errors"]
    assert ("name: contains the format (invisible or bidi) character U+202E "
            "(RIGHT-TO-LEFT OVERRIDE)") in errors
    assert ("agents[0].name: contains the format (invisible or bidi) character U+200B "
            "(ZERO WIDTH SPACE)") in errors
    assert _denied(daemon, "container.create")["details"]["code"] == "invalid_request"


def test_invalid_request_lists_its_errors_inside_error_as_the_contract_says(
        daemon: DaemonProcess) -> None:
    owner = Owner(daemon)
    owner.init("Alice")
    owner.enroll()
    token = owner.session("biometric")
    status, answer = _post(daemon, "/v1/containers", b'{"name": "Bad Name", "agents": []}',
                           f"Authorization: Bearer {token}\r\n".encode())
    assert (status, answer["error"]["code"]) == (422, "invalid_request")
    assert set(answer) == {"error"}  # nothing beside "error": the list is inside it
    errors = answer["error"]["errors"]
    assert isinstance(errors, list) and len(errors) >= 2
    assert all(isinstance(e, str) for e in errors)
    # The public contract states that very location.
    api = (ROOT / "docs" / "API.md").read_text()
    assert re.search(r"`invalid_request` \(400/422,\s+`error` also has `\"errors\": \[..\]`",
                     api), "docs/API.md must say the errors list is inside `error`"
