"""Shared plumbing for the agent-socket and lifecycle system tests.

A real daemon (subprocess, own PACD_HOME/PACD_SOCKET) pointed at the real
Podman service of ``tests.podman_env``, an owner with the software
authenticator, and a client for agent sockets that talks as the agent would:
an agent socket serves only processes in its container's PID namespace, so
the test's connections are made in that namespace (``tests.pidns_connector``)
and then used from the test.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pacd.runtime.hardening import LABEL_OWNER_ID, container_name
from pacd.runtime.podman import PodmanRuntime
from pacd.transport import UnixHTTPConnection
from tests.integration.harness import DaemonProcess, Owner
from tests.pidns_connector import NamespaceConnector
from tests.podman_env import remove_labelled

PYTHON = "/usr/bin/python3"
AGENT = "/agent/agent.py"


@dataclass
class AgentReply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class AgentSocket:
    """An agent's socket and how to connect to it from inside the agent's container."""

    path: Path
    connect: Callable[[], socket.socket]


class _ConnectedHTTP(http.client.HTTPConnection):
    def __init__(self, make: Callable[[], socket.socket], timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._make = make

    def connect(self) -> None:
        self.sock = self._make()
        self.sock.settimeout(self.timeout)


def agent_request(target: Path | AgentSocket, method: str, url: str,
                  body: bytes | None = None, timeout: float = 30.0,
                  headers: dict[str, str] | None = None) -> AgentReply:
    """One HTTP request on an agent socket: as its agent (an :class:`AgentSocket`), or
    from this host process (a bare path; refused unless the test is the agent)."""
    conn: http.client.HTTPConnection
    if isinstance(target, AgentSocket):
        conn = _ConnectedHTTP(target.connect, timeout)
    else:
        conn = UnixHTTPConnection(str(target), timeout)
    try:
        conn.request(method, url, body=body, headers=headers or {})
        response = conn.getresponse()
        return AgentReply(response.status, response.read(), dict(response.getheaders()))
    finally:
        conn.close()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` until true; the seconds it took. Fails the test on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


class Deployment:
    """A daemon with an owner holding a biometric session, on the test Podman."""

    def __init__(self, daemon: DaemonProcess, runtime: PodmanRuntime) -> None:
        self.daemon = daemon
        self.runtime = runtime
        self.owner = Owner(daemon)
        self.owner_id = str(self.owner.init("Alice")["id"])
        self.owner.enroll()
        self.owner.session("biometric")
        #: per container init pid, a helper connecting from inside that container
        self._connectors: dict[int, NamespaceConnector] = {}

    def create(self, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.owner.authed().request("POST", "/v1/containers", spec)
        return result

    def start(self, cid: str) -> dict[str, Any]:
        result: dict[str, Any] = self.owner.authed().request(
            "POST", f"/v1/containers/{cid}/start")
        return result

    def stop(self, cid: str) -> dict[str, Any]:
        result: dict[str, Any] = self.owner.authed().request(
            "POST", f"/v1/containers/{cid}/stop")
        return result

    def show(self, cid: str) -> dict[str, Any]:
        result: dict[str, Any] = self.daemon.client().request("GET", f"/v1/containers/{cid}")
        return result

    def agent_states(self, cid: str) -> dict[str, str]:
        return {a["name"]: a["state"] for a in self.show(cid)["agents"]}

    def socket(self, cid: str, agent: str) -> Path:
        return self.daemon.socket.parent / "agents" / cid / agent / "agent.sock"

    def podman_name(self, cid: str, agent: str) -> str:
        return container_name(cid, agent)

    def agent(self, cid: str, agent: str) -> AgentSocket:
        """The agent's socket, connected to from inside the agent's running container."""
        path = self.socket(cid, agent)

        def connect() -> socket.socket:
            pid = self.runtime.init_pid(self.podman_name(cid, agent))
            assert pid is not None, f"agent {agent} of {cid} is not running"
            connector = self._connectors.get(pid)
            if connector is None:
                connector = self._connectors[pid] = NamespaceConnector(pid)
            return connector.connect(path)

        return AgentSocket(path, connect)

    def close_connectors(self) -> None:
        for connector in self._connectors.values():
            connector.close()
        self._connectors.clear()

    def exec_agent(self, cid: str, agent: str, *args: str) -> tuple[int, Any]:
        """Run the reference agent inside the agent's container: (exit code, its JSON)."""
        code, out = self.runtime.exec_run(self.podman_name(cid, agent), [PYTHON, AGENT, *args],
                                          timeout=60)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        return code, json.loads(lines[-1]) if lines else out

    def audit(self, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.daemon.audit()
                if all(e.get(k) == v for k, v in match.items())]


def make_spec(name: str, agents: list[dict[str, Any]],
              concerns: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "policy": "default", "agents": agents, "concerns": concerns}


def agent_spec(name: str, image: str, *, data_access: str = "readWrite",
               isolation: str = "managed", connections: tuple[str, ...] = (),
               capabilities: tuple[str, ...] = ("textGeneration",)) -> dict[str, Any]:
    return {"name": name, "image": image, "capabilities": list(capabilities),
            "data_access": data_access, "isolation": isolation,
            "connections": list(connections)}


@pytest.fixture
def short_base() -> Iterator[Path]:
    # Agent socket paths must fit in 107 bytes: keep the base short.
    with tempfile.TemporaryDirectory(prefix="pacd-ag-") as d:
        yield Path(d)


@pytest.fixture
def make_deployment(real_keychain: str, short_base: Path, podman_service: str,
                    podman_runtime: PodmanRuntime
                    ) -> Iterator[Callable[..., Deployment]]:
    made: list[Deployment] = []
    daemons: list[DaemonProcess] = []

    def make(name: str = "d", env: dict[str, str] | None = None,
             settings: dict[str, Any] | None = None) -> Deployment:
        base = short_base / name
        base.mkdir()
        daemon = DaemonProcess(base, settings,
                               env={"PACD_PODMAN_URL": podman_service, **(env or {})})
        daemons.append(daemon)
        daemon.start()
        deployment = Deployment(daemon, podman_runtime)
        made.append(deployment)
        return deployment

    yield make
    for daemon in daemons:
        # Shown by pytest only when the test failed.
        print(f"--- daemon log {daemon.log_path} ---\n{daemon.log()[-20000:]}")
        if daemon.alive():
            with contextlib.suppress(Exception):
                daemon.stop(timeout=30)
        if daemon.alive():
            daemon.kill()
    for deployment in made:
        deployment.close_connectors()
        remove_labelled(podman_runtime, {LABEL_OWNER_ID: deployment.owner_id})


def restart(daemon: DaemonProcess) -> None:
    assert daemon.stop(timeout=30) == 0, daemon.log()
    daemon.start()


