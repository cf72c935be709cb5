"""``kill -9`` in the middle of a burst of writes loses nothing that was acknowledged."""

from __future__ import annotations

import threading
import time
from typing import Any

from pacd.errors import PacdError
from tests.integration.harness import DaemonProcess, Owner, plugin, spec_with_plugins


def test_kill_during_burst_keeps_acknowledged_writes(daemon: DaemonProcess) -> None:
    owner = Owner(daemon)
    owner.init()
    owner.enroll()
    owner.session("biometric")
    base = owner.authed().request("POST", "/v1/containers", spec_with_plugins())
    created: list[str] = []
    approved: list[str] = []
    submitted: list[str] = []
    stop = threading.Event()
    sign_lock = threading.Lock()

    def create_containers(worker: int) -> None:
        client = owner.authed()
        i = 0
        while not stop.is_set():
            spec = spec_with_plugins() | {"name": f"burst-{worker}-{i}"}
            try:
                created.append(client.request("POST", "/v1/containers", spec)["id"])
            except PacdError:
                return  # the daemon died mid-request: not acknowledged
            i += 1

    def submit_and_approve() -> None:
        client = owner.authed()
        version = 0
        while not stop.is_set():
            version += 1
            schema = plugin("text-formatter") | {"version": f"1.0.{version}"}
            try:
                approval = client.request("POST", f"/v1/containers/{base['id']}/plugins",
                                          {"agent": "writer", "schema": schema})["approval_id"]
                submitted.append(approval)
                with sign_lock:
                    credential = owner.sign_approval(approval)
                done = client.request("POST", f"/v1/approvals/{approval}/approve",
                                      {"credential": credential})
                assert done["state"] == "approved"
                approved.append(approval)
            except PacdError:
                return

    threads = [threading.Thread(target=create_containers, args=(w,)) for w in range(3)]
    threads.append(threading.Thread(target=submit_and_approve))
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while (len(created) < 30 or len(approved) < 5) and time.monotonic() < deadline:
        time.sleep(0.05)
    daemon.kill()
    stop.set()
    for t in threads:
        t.join(30)
    assert len(created) >= 30 and len(approved) >= 5, (len(created), len(approved))

    daemon.start()
    containers = {c["id"] for c in daemon.client().request("GET", "/v1/containers")["containers"]}
    missing = set(created) - containers
    assert not missing, f"{len(missing)} acknowledged containers lost"
    plugins = daemon.client().request("GET", f"/v1/containers/{base['id']}")["plugins"]
    recorded = {p["approval_id"] for p in plugins}
    assert set(approved) <= recorded
    states: dict[str, Any] = {
        a: daemon.client().request("GET", f"/v1/approvals/{a}")["state"] for a in submitted}
    assert all(states[a] == "approved" for a in approved)
    # Whatever was cut off mid-way is either fully done or not done at all.
    for a, state in states.items():
        assert (state == "approved") == (a in recorded), (a, state)

    result = daemon.cli("audit", "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audit log ok" in result.stdout
    actions = [e["action"] for e in daemon.audit()]
    assert actions.count("container.create") >= len(created) + 1
