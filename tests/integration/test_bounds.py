"""Bounded: no single request makes the answer, the audit log or the work grow with it."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from pacd.core.canonical import canonical_json
from pacd.errors import InvalidRequest, PayloadTooLarge, PresenceFailed, TooMany, Unauthorized
from pacd.presence.client import authenticate
from tests.integration.harness import (
    DaemonProcess,
    Owner,
    Silent,
    plugin,
    spec_with_plugins,
)
from tests.integration.test_socket import _error, _raw
from tests.softauthn import SoftAuthenticator

#: the audit caps (pacd.audit): details bytes and reason characters
DETAILS_CAP = 4096
REASON_CAP = 1024


def _ready(daemon: DaemonProcess) -> tuple[Owner, dict[str, Any]]:
    owner = Owner(daemon)
    owner.init()
    owner.enroll()
    owner.session("biometric")
    container = owner.authed().request("POST", "/v1/containers", spec_with_plugins())
    return owner, container


def _entry_size(entry: dict[str, Any]) -> int:
    return len(canonical_json({k: entry[k] for k in (
        "actor", "action", "target", "decision", "reason", "details")}))


def test_a_huge_invalid_plugin_is_answered_fast_with_capped_reasons_and_a_capped_audit_entry(
        daemon: DaemonProcess) -> None:
    owner, container = _ready(daemon)
    path = f"/v1/containers/{container['id']}/plugins"
    schema = plugin("text-formatter") | {"required_capabilities": ["x"] * 300000}
    body = {"agent": "writer", "schema": schema}
    assert len(json.dumps(body)) > 1_400_000  # the 1.5 MB submission
    start = time.monotonic()
    with pytest.raises(InvalidRequest) as rejected:
        owner.authed().request("POST", path, body)
    elapsed = time.monotonic() - start
    print(f"1.5 MB invalid plugin submission answered in {elapsed * 1000:.0f} ms")
    assert elapsed < 1.0
    errors = rejected.value.errors
    assert errors[0] == "schema.required_capabilities: has 300000 items, at most 9"
    assert len(errors) <= 51
    assert len(rejected.value.message) < 4096

    # A document with thousands of distinct mistakes: the first 50 and a count.
    many = plugin("text-formatter") | {f"extra{i}": i for i in range(3000)}
    with pytest.raises(InvalidRequest) as flood:
        owner.authed().request("POST", path, {"agent": "writer", "schema": many})
    assert len(flood.value.errors) == 51
    assert flood.value.errors[-1] == "and 2950 more"
    assert all(e.startswith("schema.extra") for e in flood.value.errors[:50])

    entries = [e for e in daemon.audit() if e["action"] == "plugin.submit"]
    assert [e["decision"] for e in entries] == ["deny", "deny"]
    huge, flooded = entries
    assert huge["details"]["errors"] == errors
    # The flood's details exceed the cap: cut to a summary naming the full text's digest.
    assert flooded["details"]["truncated"] is True
    full = canonical_json({"agent": "writer", "errors": flood.value.errors})
    assert flooded["details"]["sha256"] == hashlib.sha256(full).hexdigest()
    assert flooded["details"]["bytes"] == len(full)
    for entry in entries:
        assert len(canonical_json(entry["details"])) <= DETAILS_CAP
        assert len(entry["reason"]) <= REASON_CAP
        assert _entry_size(entry) <= DETAILS_CAP + REASON_CAP + 512
    assert owner.authed().request("POST", "/v1/audit/verify")["ok"] is True


def test_routes_without_a_token_read_at_most_64_kib(daemon: DaemonProcess) -> None:
    owner, container = _ready(daemon)
    padding = "p" * (70 * 1024)
    # A route anyone of the owner's uid reaches without a token: the small cap.
    with pytest.raises(PayloadTooLarge) as refused:
        daemon.client().request("POST", "/v1/sessions/begin",
                                {"level": "enhanced", "pad": padding})
    assert refused.value.extra["max_body_bytes"] == 64 * 1024
    # A plugin submission needs a session at all: refused before its body is read.
    with pytest.raises(Unauthorized):
        daemon.client().request("POST", f"/v1/containers/{container['id']}/plugins",
                                {"agent": "writer", "schema": plugin("text-formatter"),
                                 "pad": padding})
    # With a session the same size is read (and judged on its content).
    with pytest.raises(InvalidRequest) as judged:
        owner.authed().request("POST", f"/v1/containers/{container['id']}/plugins",
                               {"agent": "writer", "schema": plugin("text-formatter"),
                                "pad": padding})
    assert judged.value.code == "invalid_request"
    denied = [(e["action"], e["details"].get("code")) for e in daemon.audit()
              if e["decision"] == "deny"]
    assert ("session.begin", "payload_too_large") in denied
    assert ("plugin.submit", "unauthorized") in denied


def test_containers_agents_and_pending_approvals_are_capped_and_every_item_is_reachable(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    daemon = make_daemon(settings={"max_containers": 2, "max_agents_per_container": 2,
                                   "max_pending_approvals_per_kind": 7})
    owner, container = _ready(daemon)
    authed = owner.authed()
    crowded = spec_with_plugins() | {"name": "crowded"}
    crowded["agents"] = [*crowded["agents"], crowded["agents"][0] | {"name": "third"}]
    with pytest.raises(TooMany) as agents:
        authed.request("POST", "/v1/containers", crowded)
    assert agents.value.extra["limit"] == "max_agents_per_container"
    authed.request("POST", "/v1/containers", spec_with_plugins() | {"name": "second"})
    with pytest.raises(TooMany) as containers:
        authed.request("POST", "/v1/containers", spec_with_plugins() | {"name": "third"})
    assert containers.value.status == 429
    assert containers.value.extra["limit"] == "max_containers"
    assert len(daemon.client().request("GET", "/v1/containers")["containers"]) == 2

    path = f"/v1/containers/{container['id']}/plugins"
    queued = [authed.request("POST", path, {"agent": "writer", "schema": plugin(
        "text-formatter") | {"version": f"1.0.{i}"}})["approval_id"] for i in range(7)]
    with pytest.raises(TooMany) as approvals:
        authed.request("POST", path, {"agent": "writer", "schema": plugin("text-formatter")})
    assert approvals.value.extra["limit"] == "max_pending_approvals_per_kind"
    assert daemon.client().status()["pending_approvals"] == 7
    refused = [(e["action"], e["details"]["code"], e["details"]["limit"])
               for e in daemon.audit() if e["details"].get("code") == "too_many"]
    assert refused == [("container.create", "too_many", "max_agents_per_container"),
                       ("container.create", "too_many", "max_containers"),
                       ("plugin.submit", "too_many", "max_pending_approvals_per_kind")]

    # Pages of 3, newest first, reach every approval exactly once.
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        page = daemon.client().request("GET", f"/v1/approvals?limit=3&cursor={cursor}")
        seen += [a["id"] for a in page["approvals"]]
        pages += 1
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert pages == 3
    assert seen == list(reversed(queued))
    # The audit log pages the same way; after/limit keep working alongside.
    everything = daemon.audit()
    walked: list[int] = []
    cursor = ""
    while True:
        page = daemon.client().request("GET", f"/v1/audit?limit=4&cursor={cursor}")
        walked += [e["seq"] for e in page["entries"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert walked[: len(everything)] == [e["seq"] for e in everything]
    assert daemon.client().request("GET", "/v1/audit?after=2&limit=2")["entries"][0]["seq"] == 3


def test_pending_approvals_are_capped_in_total_across_kinds(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    daemon = make_daemon(settings={"max_pending_approvals": 2,
                                   "max_pending_approvals_per_kind": 7})
    owner, container = _ready(daemon)
    authed = owner.authed()
    path = f"/v1/containers/{container['id']}/plugins"
    ask = {"agent": "writer", "schema": plugin("text-formatter")}
    first = authed.request("POST", path, ask)["approval_id"]
    # A second kind fills the total: each kind alone is far below its own limit.
    owner.enroll("second key", SoftAuthenticator())
    with pytest.raises(TooMany) as refused:
        authed.request("POST", path, ask)
    assert refused.value.status == 429
    assert refused.value.extra["limit"] == "max_pending_approvals"
    assert daemon.client().status()["pending_approvals"] == 2
    denied = [(e["action"], e["details"]["limit"]) for e in daemon.audit()
              if e["details"].get("code") == "too_many"]
    assert denied == [("plugin.submit", "max_pending_approvals")]
    # Only pending ones count: once one is answered there is room again.
    daemon.client().request("POST", f"/v1/approvals/{first}/deny", {})
    authed.request("POST", path, ask)


def test_a_route_with_a_small_body_reads_no_more_than_its_own_cap(
        daemon: DaemonProcess) -> None:
    owner, container = _ready(daemon)
    # An image build names a base image: a few hundred bytes at most, though the
    # daemon's cap for token routes is megabytes.
    with pytest.raises(PayloadTooLarge) as refused:
        owner.authed().request("POST", f"/v1/containers/{container['id']}/image",
                               {"base_image": "busybox", "pad": "p" * 8192})
    assert refused.value.extra["max_body_bytes"] == 4096
    denied = [(e["action"], e["details"]["code"]) for e in daemon.audit()
              if e["decision"] == "deny"]
    assert denied == [("image.build", "payload_too_large")]


def test_an_unknown_expectation_is_a_json_417_with_an_audit_entry(daemon: DaemonProcess) -> None:
    body = b'{"name": "Alice"}'
    answer = _raw(daemon.socket, b"POST /v1/owner HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                  + body)
    status, error = _error(answer)
    assert (status, error["code"]) == (417, "expectation_failed")
    assert "200-ok" in str(error["message"])
    assert daemon.client().status()["owner"] is None  # nothing was done
    refused = [e for e in daemon.audit() if e["action"] == "request.expectation_failed"]
    assert [(e["decision"], e["target"], e["details"]["expect"]) for e in refused] == [
        ("deny", "/v1/owner", "200-ok")]
    # 100-continue still works as HTTP/1.1 says.
    answer = _raw(daemon.socket, b"POST /v1/owner HTTP/1.1\r\nHost: x\r\n"
                  b"Expect: 100-continue\r\nConnection: close\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                  + body)
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 ")


def test_a_container_cannot_be_named_like_a_container_id(daemon: DaemonProcess) -> None:
    owner, container = _ready(daemon)
    assert re.fullmatch(r"[0-9a-f]{32}", container["id"])
    for name in (container["id"], "0" * 32):
        with pytest.raises(InvalidRequest) as refused:
            owner.authed().request("POST", "/v1/containers",
                                   spec_with_plugins() | {"name": name})
        assert "looks like a container id" in refused.value.message
    # Lookups take the id first: the container is found by its id and by its name.
    assert daemon.client().request("GET", f"/v1/containers/{container['id']}")["name"] == \
        "studio"
    assert daemon.client().request("GET", "/v1/containers/studio")["id"] == container["id"]
    denied = [e for e in daemon.audit()
              if e["action"] == "container.create" and e["decision"] == "deny"]
    assert len(denied) == 2
    assert all("looks like a container id" in e["reason"] for e in denied)


def _closed_by_peer(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False  # still open, nothing to read
    except ConnectionResetError:
        return True


_FLOOD = """
import sys
from pacd.client import Client
from pacd.config import load_config
client = Client(load_config(), use_token_cache=False)
for _ in range(int(sys.argv[1])):
    client.request("POST", "/v1/sessions/begin", {"level": "enhanced"})
"""


_FLOOD_SHOWN = """
import json, sys
from pacd.client import Client
from pacd.config import load_config
client = Client(load_config(), use_token_cache=False)
begun = [client.request("POST", "/v1/sessions/begin", {"level": "enhanced"})
         for _ in range(int(sys.argv[1]))]
print(json.dumps([begun[0], begun[-1]]))
"""


def test_a_flood_of_unfinished_begins_drops_the_flooders_own_not_the_owners_ceremony(
        daemon: DaemonProcess) -> None:
    owner = Owner(daemon)
    owner.init()
    owner.enroll()
    client = daemon.client()
    # The owner's client begins a ceremony (the key is waiting for a touch)...
    mine = client.request("POST", "/v1/sessions/begin", {"level": "enhanced"})
    # ...while another process of the owner's uid begins 200 and finishes none.
    flood = subprocess.run([sys.executable, "-c", _FLOOD_SHOWN, "200"], env=daemon.env,
                           capture_output=True, text=True, timeout=120, check=False)
    assert flood.returncode == 0, flood.stderr
    oldest, newest = json.loads(flood.stdout)

    def complete(begun: dict[str, Any]) -> dict[str, Any]:
        credential = authenticate(begun["publicKey"], begun["origin"], Silent(),
                                  device=owner.device)
        done: dict[str, Any] = client.request("POST", "/v1/sessions/complete", {
            "session_id": begun["session_id"], "credential": credential})
        return done

    # The flooder's oldest went to make room for its newer ones; the owner's stayed.
    with pytest.raises(PresenceFailed) as dropped:
        complete(oldest)
    assert "begin again" in dropped.value.message
    assert complete(mine)["level"] == "enhanced"
    assert complete(newest)["level"] == "enhanced"


def test_the_owner_gets_a_session_past_200_unfinished_begins_and_100_idle_connections(
        daemon: DaemonProcess) -> None:
    owner = Owner(daemon)
    owner.init()
    owner.enroll()
    # Another process of the owner's uid begins 200 ceremonies and finishes none.
    flood = subprocess.run([sys.executable, "-c", _FLOOD, "200"], env=daemon.env,
                           capture_output=True, text=True, timeout=120, check=False)
    assert flood.returncode == 0, flood.stderr
    idle: list[socket.socket] = []
    try:
        for _ in range(100):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(daemon.socket))
            idle.append(s)
        token = owner.session("enhanced")
        assert daemon.client(token).request("GET", "/v1/sessions/current")["level"] == \
            "enhanced"
        # The room was made by closing idle connections, oldest first.
        closed = sum(_closed_by_peer(s) for s in idle)
        assert closed >= 90  # beyond the hard cap, then evicted to make room
    finally:
        for s in idle:
            s.close()
    notes = [e for e in daemon.audit() if e["action"] == "connection.evicted"]
    assert notes and notes[0]["decision"] == "deny"
