"""Agent-socket data reads/s for 1 KiB values, every read audited, vs a bare aiohttp server.

The server side runs in its own process, like the daemon: pacd's real agent
socket (``AgentSockets`` with the real vault, sealed data store and audit log,
on SQLite files in a temporary directory) next to a baseline, a bare aiohttp
application on another Unix socket that answers every GET with 1 KiB from
memory. The same client (``CLIENTS`` keep-alive HTTP/1.1 connections on a
Unix socket, one request in flight on each) hammers each for ``SECONDS``.

An agent socket serves only processes in its container's PID namespace, so
the benchmark gives its agents one: a process in a fresh PID namespace
(``unshare --pid``) stands in for the container, the server records that
namespace for every agent socket as the daemon does for a started container,
and the client's connections are made inside it (``tests.pidns_connector``)
before each round's clock starts, then driven from here. The baseline's
connections are made the same way, so both sides pay the same.

The audit count before and after (read from the audit database) proves every
read was logged. Keys come from the passphrase keystore so the benchmark runs
without a desktop keychain; the read path never touches the key store (data
keys are cached after the first use), so this does not change the numbers.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import sqlite3
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

from aiohttp import web

from bench.loadavg import reports_load
from tests.pidns_connector import NamespaceConnector, stand_in_container

CLIENTS = 8  # per agent: below the default policy's maxConcurrentConnections (10)
AGENTS = ("bench", "bench2", "bench3", "bench4")
SECONDS = 3.0
ROUNDS = 3
KEYS = 64
VALUE = bytes(range(256)) * 4  # 1 KiB
CONTAINER_ID = "b" * 32
CONCERN = "personal"
#: ``--smoke``: the smallest configuration (read by the parent process only)
SMOKE = {"SECONDS": 0.3, "ROUNDS": 1, "KEYS": 4}


def _serve(base: str, conn: Connection, container_pid: int) -> None:
    """The server process: pacd's agent socket and the bare baseline, until told to stop."""
    from pacd.agents.inbox import Doorbell, Inbox
    from pacd.agents.server import AgentContext, AgentIdentity, AgentSockets, socket_path
    from pacd.api.peercred import pid_namespace
    from pacd.audit import AuditLog
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

    root = Path(base)

    async def run() -> None:
        secrets = PassphraseSecretStore(root / "keys", b"bench passphrase")
        store = Store(root / "state.sqlite3")
        vault = Vault(store, secrets)
        vault.initialize()
        audit = AuditLog.open(root / "audit.sqlite3", vault.derive_subkey("audit"), secrets)
        container = PersonalAIContainer(
            id=CONTAINER_ID, name="bench", owner_id="o" * 32,
            agents=tuple(AgentDomain(id=name, name=name, image="unused",
                                     data_access=DataAccessLevel.readWrite)
                         for name in AGENTS),
            concerns=(ConcernDomain(id="c", name=CONCERN, category=ConcernCategory.personal,
                                    connected_agents=AGENTS),),
            policy=SecurityPolicy.default())
        sockets = AgentSockets(AgentContext(SealedData(store, vault), audit, Inbox(store, vault),
                                            Doorbell()))
        agent_socks = [socket_path(root / "agents", CONTAINER_ID, name) for name in AGENTS]
        for name, path in zip(AGENTS, agent_socks, strict=True):
            await sockets.open(AgentIdentity(CONTAINER_ID, "bench", "o" * 32, name),
                               container, path)
            # What the daemon's lifecycle does once the agent's container runs.
            await sockets.serve_namespace(CONTAINER_ID, name, pid_namespace(container_pid))

        async def bare(request: web.Request) -> web.Response:
            return web.Response(body=VALUE, content_type="application/octet-stream")

        app = web.Application()
        app.router.add_get("/v1/data/{concern}/{key}", bare)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        bare_sock = root / "bare.sock"
        await web.UnixSite(runner, str(bare_sock)).start()
        conn.send(([str(p) for p in agent_socks], str(bare_sock), str(root / "audit.sqlite3")))
        await asyncio.to_thread(conn.recv)  # until the parent says stop
        await sockets.close_all()
        await runner.cleanup()
        await asyncio.to_thread(audit.close)
        store.close()

    asyncio.run(run())


async def _reader(sock: socket.socket, n: int, deadline: float) -> int:
    """One keep-alive connection reading values until ``deadline``; how many it read.

    A minimal HTTP/1.1 client on a raw asyncio stream: a full client library
    costs more CPU per request than the server does, and on a small machine
    would measure itself.
    """
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    done = 0
    i = n
    try:
        while time.perf_counter() < deadline:
            writer.write(f"GET /v1/data/{CONCERN}/k{i % KEYS} HTTP/1.1\r\n"
                         "Host: agent\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12]
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            if status != b"200" or len(body) != len(VALUE):
                raise RuntimeError(f"read failed: {head[:12]!r} {body[:200]!r}")
            done += 1
            i += CLIENTS
    finally:
        writer.close()
    return done


async def _load(inside: NamespaceConnector, paths: list[str], seconds: float
                ) -> tuple[int, float]:
    """``CLIENTS`` concurrent keep-alive readers per socket for ``seconds``:
    (reads, elapsed seconds). Connected before the clock starts."""
    socks = [(inside.connect(path), n) for path in paths for n in range(CLIENTS)]
    started = time.perf_counter()
    counts = await asyncio.gather(*(_reader(sock, n, started + seconds) for sock, n in socks))
    return sum(counts), time.perf_counter() - started


def _measure(inside: NamespaceConnector, paths: list[str], audit_db: str | None
             ) -> tuple[float, int]:
    """Best of ``ROUNDS``: (reads/s, audit entries minus reads over all rounds)."""
    best = 0.0
    unlogged = 0
    for _ in range(ROUNDS):
        before = _audited_reads(audit_db) if audit_db else 0
        reads, elapsed = asyncio.run(_load(inside, paths, SECONDS))
        if audit_db:
            unlogged += reads - (_audited_reads(audit_db) - before)
        best = max(best, reads / elapsed)
    return best, unlogged


async def _fill(sock: socket.socket) -> None:
    """Write the ``KEYS`` values on one keep-alive connection."""
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        for i in range(KEYS):
            writer.write(f"PUT /v1/data/{CONCERN}/k{i} HTTP/1.1\r\nHost: agent\r\n"
                         f"Content-Length: {len(VALUE)}\r\n\r\n".encode() + VALUE)
            head = await reader.readuntil(b"\r\n\r\n")
            if head[9:12] != b"204":
                raise RuntimeError(f"write failed: {head!r} {await reader.read(500)!r}")
    finally:
        writer.close()


def _audited_reads(audit_db: str) -> int:
    with sqlite3.connect(f"file:{audit_db}?mode=ro", uri=True) as db:
        row = db.execute("SELECT COUNT(*) FROM audit_log WHERE action = 'agent.data.read'"
                         " AND decision = 'allow'").fetchone()
    return int(row[0])


@reports_load
def main(smoke: bool = False) -> None:
    """The benchmark; ``smoke``: its smallest configuration, once (seconds), to show it
    still runs and prints its ratios — the numbers mean nothing then."""
    if smoke:
        globals().update(SMOKE)
    ctx = multiprocessing.get_context("spawn")
    with (tempfile.TemporaryDirectory(prefix="pacd-agb-") as base,
          stand_in_container() as container_pid,
          NamespaceConnector(container_pid) as inside):
        parent, child = ctx.Pipe()
        server = ctx.Process(target=_serve, args=(base, child, container_pid), daemon=True)
        server.start()
        try:
            if not parent.poll(60):
                raise RuntimeError("the benchmark server did not start")
            agent_socks, bare_sock, audit_db = parent.recv()
            for path in agent_socks:
                asyncio.run(_fill(inside.connect(path)))
            asyncio.run(_load(inside, agent_socks, 1.0))  # warm up: caches, connections
            bare, _ = _measure(inside, [bare_sock], None)
            one, unlogged_one = _measure(inside, agent_socks[:1], audit_db)
            many, unlogged_many = _measure(inside, agent_socks, audit_db)
            bare_many, _ = _measure(inside, [bare_sock] * len(agent_socks), None)
        finally:
            parent.send("stop")
            server.join(30)
            if server.is_alive():
                server.kill()
    print(f"1 KiB reads on a Unix socket, best of {ROUNDS} x {SECONDS:g} s; "
          f"{CLIENTS} keep-alive clients per socket")
    print(f"  baseline, bare aiohttp GET ({CLIENTS} clients):            {bare:>8,.0f} reads/s")
    print(f"  one agent socket, every read audited ({CLIENTS} clients):  {one:>8,.0f} reads/s"
          f"   ratio {one / bare:.2f}")
    print(f"  baseline, bare aiohttp GET ({CLIENTS * len(agent_socks)} clients):"
          f"           {bare_many:>8,.0f} reads/s")
    print(f"  {len(agent_socks)} agent sockets, every read audited "
          f"({CLIENTS * len(agent_socks)} clients): {many:>8,.0f} reads/s"
          f"   ratio {many / bare_many:.2f}")
    print(f"  reads without an audit entry: {unlogged_one + unlogged_many} "
          "(audit count delta == reads in every round)")
    if unlogged_one or unlogged_many:
        raise RuntimeError("some reads were not audited")


if __name__ == "__main__":
    main(smoke="--smoke" in sys.argv[1:])
