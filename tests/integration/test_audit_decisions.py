"""Every decision is an audit entry: one per routed request, refusals coalesced, retention.

All through the real daemon's socket; the audit log is read back with
``GET /v1/audit`` like any client would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pacd.agents.inbox import Inbox
from pacd.config import load_config
from pacd.errors import Busy, PacdError
from pacd.retention import DAY_S
from pacd.store import Store
from pacd.vault import SealedData, Vault, open_secret_store
from tests.conftest import require_system
from tests.integration.harness import (
    DaemonProcess,
    EventCollector,
    Owner,
    held_connection,
    plugin,
    spec_with_plugins,
)

ME = f"owner:uid={os.getuid()}"


def _fails(fn: Callable[[], Any], code: str) -> PacdError:
    with pytest.raises(PacdError) as caught:
        fn()
    assert caught.value.code == code, caught.value.message
    return caught.value


def _raw_status(path: object, data: bytes) -> int:
    """Send one raw request on its own connection; the HTTP status answered (0: none)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return int(answer.split(b" ")[1]) if answer else 0


def _coalesced(daemon: DaemonProcess, action: str, expected: int,
               timeout: float = 10.0) -> list[dict[str, Any]]:
    """The entries of ``action`` once their counts add up to ``expected``."""
    deadline = time.monotonic() + timeout
    entries: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            entries = [e for e in daemon.audit() if e["action"] == action]
        except Busy:
            entries = []
        if sum(e["details"]["count"] for e in entries) >= expected:
            break
        time.sleep(0.2)
    return entries


def test_every_routed_request_is_exactly_one_entry(daemon: DaemonProcess) -> None:
    c = daemon.client()
    owner = Owner(daemon)
    expected: list[tuple[str, str]] = []

    c.status()
    c.request("GET", "/v1/openapi.json")  # both exempt: no entry
    owner.init()
    expected.append(("owner.create", "allow"))
    c.request("GET", "/v1/containers")
    expected.append(("container.list", "allow"))
    _fails(lambda: c.request("GET", "/v1/containers/nope"), "not_found")
    expected.append(("container.show", "deny"))
    _fails(lambda: c.request("POST", "/v1/containers", spec_with_plugins()), "unauthorized")
    expected.append(("container.create", "deny"))
    _fails(lambda: daemon.client("not-a-token").request("POST", "/v1/containers",
                                                         spec_with_plugins()), "unauthorized")
    expected.append(("container.create", "deny"))
    owner.enroll()
    expected += [("credential.begin", "allow"), ("credential.enroll", "allow")]
    # A second key needs a biometric session: refused, with the level that would do.
    _fails(lambda: c.request("POST", "/v1/owner/credentials/begin", {"label": "x"}),
           "unauthorized")
    expected.append(("credential.begin", "deny"))
    token = owner.session("enhanced")
    expected += [("session.begin", "allow"), ("session.create", "allow")]
    enhanced = daemon.client(token)
    enhanced.request("GET", "/v1/sessions/current")
    expected.append(("session.current", "allow"))
    _fails(lambda: enhanced.request("POST", "/v1/containers", spec_with_plugins()),
           "presence_required")
    expected.append(("container.create", "deny"))
    c.request("GET", "/v1/approvals")
    expected.append(("approval.list", "allow"))
    _fails(lambda: c.request("GET", "/v1/approvals/nope"), "not_found")
    expected.append(("approval.show", "deny"))
    _fails(lambda: c.request("POST", "/v1/approvals/nope/deny", {}), "not_found")
    expected.append(("approval.deny", "deny"))
    _fails(lambda: c.request("POST", "/v1/containers/nope/start", None), "unauthorized")
    expected.append(("container.start", "deny"))
    # State changes: the handler's own entry (in the change's transaction) is the one.
    owner.session("biometric")
    expected += [("session.begin", "allow"), ("session.create", "allow")]
    container = owner.authed().request("POST", "/v1/containers", spec_with_plugins())
    expected.append(("container.create", "allow"))
    queued = owner.authed().request("POST", f"/v1/containers/{container['id']}/plugins",
                                    {"agent": "writer", "schema": plugin("text-formatter")})
    expected.append(("approval.plugin.install.request", "info"))
    c.request("POST", f"/v1/approvals/{queued['approval_id']}/deny", {"reason": "no"})
    expected.append(("approval.plugin.install.deny", "deny"))
    c.request("POST", "/v1/audit/verify")
    expected.append(("audit.verify", "allow"))
    c.request("GET", "/v1/audit?after=0&limit=1")
    expected.append(("audit.read", "allow"))
    events = EventCollector(daemon.client())  # its entry is written before the stream opens
    expected.append(("events.subscribe", "allow"))

    entries = [e for e in daemon.audit() if e["actor"] == ME]
    assert [(e["action"], e["decision"]) for e in entries] == expected
    assert not [e for e in daemon.audit() if e["action"] in ("status", "openapi")]
    by_step = dict(enumerate(entries))
    # Refusals carry their reason and the error code; refused levels say which would do.
    assert by_step[3]["details"]["code"] == "unauthorized" and by_step[3]["reason"]
    assert by_step[3]["details"]["required_level"] == "biometric"
    assert by_step[7]["details"]["required_level"] == "biometric"
    level_refusal = by_step[11]
    assert level_refusal["details"]["code"] == "presence_required"
    assert level_refusal["details"]["required_level"] == "biometric"
    assert "biometric" in level_refusal["reason"]
    assert by_step[2]["target"] == "nope" and "nope" in by_step[2]["reason"]
    # An allowed call made with a token names the session it used.
    assert by_step[10]["details"]["level"] == "enhanced"
    assert daemon.client().request("POST", "/v1/audit/verify")["ok"] is True
    events.thread.join(0)


def test_busy_refusals_are_audited_coalesced(make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon(settings={"max_connections": 2})
    # two kept-alive connections, each answered once (so accepted), fill the limit
    held = [held_connection(d.socket) for _ in range(2)]
    refused = 40
    started = time.monotonic()
    statuses = [_raw_status(d.socket, b"GET /v1/containers HTTP/1.1\r\nHost: x\r\n\r\n")
                for _ in range(refused)]
    elapsed = time.monotonic() - started
    assert statuses == [503] * refused
    for s in held:
        s.close()
    busy = _coalesced(d, "connection.busy", refused)
    assert sum(e["details"]["count"] for e in busy) == refused
    # At most one entry per second (plus the first and the last partial window).
    assert 1 <= len(busy) <= elapsed + 2 and len(busy) < refused
    assert all(e["decision"] == "deny" and e["actor"] == ME for e in busy)
    assert busy[0]["details"]["max_connections"] == 2
    # None of the refused requests reached its route.
    assert not [e for e in d.audit() if e["action"] == "container.list"]


def test_malformed_and_unrouted_requests_are_audited_coalesced(daemon: DaemonProcess) -> None:
    garbage = 15
    for _ in range(garbage):
        assert _raw_status(daemon.socket, b"\x00\x01 not http\r\n\r\n") == 400
    for _ in range(10):
        assert _raw_status(daemon.socket, b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\n"
                                          b"Connection: close\r\n\r\n") == 404
    assert _raw_status(daemon.socket, b"PUT /v1/status HTTP/1.1\r\nHost: x\r\n"
                                      b"Content-Length: 0\r\nConnection: close\r\n\r\n") == 405
    malformed = _coalesced(daemon, "request.malformed", garbage)
    assert sum(e["details"]["count"] for e in malformed) == garbage
    assert len(malformed) < garbage and all(e["decision"] == "deny" for e in malformed)
    unrouted = _coalesced(daemon, "request.unrouted", 11)
    assert sum(e["details"]["count"] for e in unrouted) == 11
    assert len(unrouted) < 11
    assert daemon.client().request("POST", "/v1/audit/verify")["ok"] is True


def _short_and_long(daemon: DaemonProcess) -> tuple[str, str]:
    owner = Owner(daemon)
    owner.init()
    owner.enroll()
    owner.session("biometric")
    ids = []
    for name, days in (("short", 1), ("long", 30)):
        spec = spec_with_plugins()
        spec["name"] = name
        spec["policy"] = {"data_retention_days": days}
        ids.append(owner.authed().request("POST", "/v1/containers", spec)["id"])
    return ids[0], ids[1]


def test_retention_purges_at_start_and_on_its_timer(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon(env={"PACD_RETENTION_INTERVAL": "0.5"})
    short, long_ = _short_and_long(d)
    d.stop()
    # Written the way agents write (sealed by the vault), dated in the past.
    config = load_config(d.env)
    store = Store(config.state_db)
    vault = Vault(store, open_secret_store(config))
    vault.initialize()
    store.integrity = vault.row_sealer()  # the daemon's own row MACs
    data = SealedData(store, vault)
    inbox = Inbox(store, vault)
    now = time.time()
    data.put(short, "personal", "old", b"stale", now - 2 * DAY_S)
    data.put(short, "personal", "soon", b"ages", now - DAY_S + 12)  # old 12 s from now
    data.put(short, "personal", "fresh", b"new", now)
    data.put(long_, "personal", "old", b"kept", now - 2 * DAY_S)
    inbox.put(short, "writer", "analyst", {"n": 1}, now - 2 * DAY_S)
    inbox.put(short, "writer", "analyst", {"n": 2}, now)
    d.start()

    purges = _purges(d, 2)
    # At start-up: the stale value and the stale message, each container by its own days.
    assert purges[0]["target"] == short and purges[0]["details"]["count"] == 2
    assert purges[0]["details"]["values"] == 1 and purges[0]["details"]["messages"] == 1
    assert purges[0]["actor"] == "pacd" and purges[0]["decision"] == "allow"
    # Later, by the timer: the value that aged past the cutoff meanwhile.
    assert purges[1]["target"] == short and purges[1]["details"]["values"] == 1
    assert purges[1]["details"]["cutoff"] >= now - DAY_S + 12
    assert all(p["target"] != long_ for p in purges)
    assert data.keys(short, "personal") == ["fresh"]
    assert data.get(long_, "personal", "old") == b"kept"
    assert [m.body for m in inbox.peek(short, "writer")] == [{"n": 2}]
    store.close()
    assert d.client().request("POST", "/v1/audit/verify")["ok"] is True


def _purges(daemon: DaemonProcess, want: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [e for e in daemon.audit() if e["action"] == "retention.purge"]
        if len(found) >= want:
            break
        time.sleep(0.25)
    assert len(found) == want, found
    return found


@pytest.fixture
def small_disk(short_tmp: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs: a real file system that can be filled up."""
    mnt = short_tmp / "small"
    mnt.mkdir()
    if os.getuid() != 0:
        require_system("root, to mount a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs",
                           str(mnt)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        require_system(f"mount -t tmpfs ({done.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(directory: Path) -> list[Path]:
    files = [directory / "filler", directory / "filler-bytes"]
    for path, chunk in zip(files, (b"\0" * 65536, b"\0"), strict=True):
        with open(path, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(chunk)
            except OSError:
                pass  # full
    return files


def test_a_request_whose_entry_cannot_be_written_fails_closed(small_disk: Path) -> None:
    d = DaemonProcess(small_disk).start()
    try:
        c = d.client()
        c.request("POST", "/v1/owner", {"name": "Alice"})
        assert c.request("GET", "/v1/containers") == {"containers": []}
        fillers = _fill(small_disk)
        # A plain read is refused when its record cannot be kept...
        err = _fails(lambda: c.request("GET", "/v1/containers"), "audit_unavailable")
        assert "disk is full" in err.message
        # ...while the exempt liveness probe still answers.
        assert c.status()["owner"]["name"] == "Alice"
        for path in fillers:
            path.unlink()
        assert c.request("GET", "/v1/containers") == {"containers": []}
        actions = [e["action"] for e in d.audit()]
        assert actions.count("container.list") == 2  # the refused read left no entry
        assert c.request("POST", "/v1/audit/verify")["ok"] is True
    finally:
        if d.alive():
            d.stop()
