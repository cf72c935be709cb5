"""Agent sockets and their container's PID namespace, without Podman.

pacd's real agent sockets (``AgentSockets`` over the real store, vault and
audit log) on an event loop of their own, a process alone in a fresh PID
namespace standing in for the agent's container, and connections made inside
it (``tests.pidns_connector``). The system tests show the same rule with real
containers; these pin down the edges of when the namespace is known.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pacd.agents.inbox import Doorbell, Inbox
from pacd.agents.server import AgentContext, AgentIdentity, AgentSockets, socket_path
from pacd.api.peercred import pid_namespace
from pacd.audit import AuditEntry, AuditLog
from pacd.core.models import (
    AgentDomain,
    ConcernCategory,
    ConcernDomain,
    DataAccessLevel,
    PersonalAIContainer,
    SecurityPolicy,
)
from pacd.store import Store
from pacd.vault import PassphraseSecretStore, SealedData, Vault
from tests.pidns_connector import NamespaceConnector, stand_in_container

T = TypeVar("T")
CID = "c" * 32
AGENT = "writer"
ANSWER_WAIT_S = 0.5


@dataclass
class Served:
    loop: asyncio.AbstractEventLoop
    sockets: AgentSockets
    audit: AuditLog
    path: Path

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def refusals(self) -> list[AuditEntry]:
        return [e for e in self.audit.entries(limit=1000) if e.action == "agent.peer_refused"]


@pytest.fixture
def served(short_tmp: Path) -> Iterator[Served]:
    tmp_path = short_tmp
    secrets = PassphraseSecretStore(tmp_path / "keys", b"test passphrase")
    store = Store(tmp_path / "state.sqlite3")
    vault = Vault(store, secrets)
    vault.initialize()
    audit = AuditLog.open(tmp_path / "audit.sqlite3", vault.derive_subkey("audit"), secrets)
    container = PersonalAIContainer(
        id=CID, name="home", owner_id="o" * 32,
        agents=(AgentDomain(id=AGENT, name=AGENT, image="unused",
                            data_access=DataAccessLevel.readWrite),),
        concerns=(ConcernDomain(id="p", name="personal", category=ConcernCategory.personal,
                                connected_agents=(AGENT,)),),
        policy=SecurityPolicy.default())
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    sockets = AgentSockets(AgentContext(SealedData(store, vault), audit, Inbox(store, vault),
                                        Doorbell()))
    path = socket_path(tmp_path / "agents", CID, AGENT)
    served = Served(loop, sockets, audit, path)
    served.run(sockets.open(AgentIdentity(CID, "home", "o" * 32, AGENT), container, path))
    try:
        yield served
    finally:
        served.run(sockets.close_all())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        audit.close()
        store.close()


def _whoami(sock: socket.socket) -> None:
    sock.sendall(b"GET /v1/whoami HTTP/1.1\r\nHost: agent\r\n\r\n")


def _status(sock: socket.socket) -> int:
    sock.settimeout(30)
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {head!r}"
        head += chunk
    return int(head[9:12])


def test_an_agents_first_request_waits_for_its_containers_namespace(served: Served) -> None:
    # The socket opens before its container starts: a request arriving before the
    # container's namespace is recorded is held, not refused and not served.
    with stand_in_container() as pid, NamespaceConnector(pid) as inside:
        sock = inside.connect(served.path)
        with sock:
            _whoami(sock)
            ready, _, _ = select.select([sock], [], [], ANSWER_WAIT_S)
            assert ready == [], "answered before the container's namespace was known"
            assert served.run(served.sockets.serve_namespace(CID, AGENT, pid_namespace(pid)))
            assert _status(sock) == 200
    assert served.refusals() == []


def test_an_agent_whose_namespace_is_unknown_serves_no_one(served: Served) -> None:
    # What the lifecycle records when Podman gives no pid or /proc cannot be read.
    assert served.run(served.sockets.serve_namespace(CID, AGENT, None))
    with stand_in_container() as pid, NamespaceConnector(pid) as inside:
        sock = inside.connect(served.path)
        with sock:
            _whoami(sock)
            assert _status(sock) == 403
    entries = served.refusals()
    assert [(e.target, e.decision, e.details["peer_pid"] is not None) for e in entries] == [
        (f"agent:{CID}/{AGENT}", "deny", True)]


def test_the_container_is_the_one_recorded_last(served: Served) -> None:
    # A container started again is a new namespace: the old one is no longer served.
    with stand_in_container() as old, stand_in_container() as new, \
            NamespaceConnector(old) as in_old, NamespaceConnector(new) as in_new:
        assert served.run(served.sockets.serve_namespace(CID, AGENT, pid_namespace(old)))
        assert served.run(served.sockets.serve_namespace(CID, AGENT, pid_namespace(new)))
        with in_new.connect(served.path) as sock:
            _whoami(sock)
            assert _status(sock) == 200
        with in_old.connect(served.path) as sock:
            _whoami(sock)
            assert _status(sock) == 403
