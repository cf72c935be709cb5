"""A bounded soak: mixed owner and agent load, then the servers' RSS and open fds again.

For ``SECONDS`` (default 60, ``PACD_SOAK_SECONDS``), at most ``MAX_REQUESTS``
requests per client, on Unix sockets only:

- owner side, the real daemon (subprocess, its own PACD_HOME): status polls,
  token-checked reads (``GET /v1/sessions/current``, ``/v1/containers``,
  ``/v1/approvals``, an audit page), unfinished ``POST /v1/sessions/begin``
  (each a challenge the daemon must bound) and connections opened and left
  idle (which it must close to make room);
- agent side, pacd's real agent sockets (the agent benchmark's server
  process: vault, sealed data store, audit log): writes and audited reads.

Before and after, the resident set size and the open file descriptors of
both server processes are printed: a bounded daemon ends the soak about where
it began, not grown with the requests it served.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.agent_bench import CONCERN, VALUE, _fill, _serve
from bench.api_bench import _start_daemon, _token
from bench.loadavg import reports_load
from pacd.client import Client
from pacd.config import load_config
from pacd.transport import UnixHTTPConnection
from tests.pidns_connector import NamespaceConnector, stand_in_container

SECONDS = float(os.environ.get("PACD_SOAK_SECONDS", "60"))
MAX_REQUESTS = 200_000  # per client: the soak is bounded in count as well as in time
OWNER_CLIENTS = 4
AGENT_CLIENTS = 4
#: more than the daemon's connection limit here (64): idle ones must be closed for room
IDLE_CONNECTIONS = 80
#: ``--smoke``: the smallest configuration (seconds), to show the soak still runs
SMOKE = {"SECONDS": 2.0}


def _usage(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open file descriptors) of ``pid``, from /proc."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def _owner(sock: str, token: str, deadline: float, n: int, counts: list[int]) -> None:
    paths = ["/v1/status", "/v1/sessions/current", "/v1/containers", "/v1/approvals?limit=50",
             "/v1/audit?limit=20"]
    auth = {"Authorization": f"Bearer {token}"}
    done = 0
    while time.monotonic() < deadline and done < MAX_REQUESTS:
        # A connection per request, as pacd's own client (CLI, tray) does.
        conn = UnixHTTPConnection(sock, timeout=30)
        if done % 50 == n:  # now and then: a ceremony begun and never finished
            conn.request("POST", "/v1/sessions/begin", body=b'{"level": "enhanced"}',
                         headers={"Content-Type": "application/json"})
        else:
            conn.request("GET", paths[done % len(paths)], headers=auth)
        resp = conn.getresponse()
        resp.read()
        conn.close()
        if resp.status != 200:
            raise RuntimeError(f"owner request answered {resp.status}")
        done += 1
    counts.append(done)


def _idler(sock: str, deadline: float, counts: list[int]) -> None:
    """Connections opened and left silent, IDLE_CONNECTIONS at a time."""
    opened = 0
    held: list[socket.socket] = []
    try:
        while time.monotonic() < deadline and opened < MAX_REQUESTS:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock)
            held.append(s)
            opened += 1
            if len(held) >= IDLE_CONNECTIONS:
                held.pop(0).close()
            time.sleep(0.05)  # pacing, not synchronisation: a steady trickle
    finally:
        for s in held:
            s.close()
    counts.append(opened)


async def _agent(sock: socket.socket, n: int, deadline: float) -> int:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    done = 0
    try:
        while time.monotonic() < deadline and done < MAX_REQUESTS:
            key = f"k{(n + done) % 64}"
            if done % 4 == 0:
                head = (f"PUT /v1/data/{CONCERN}/{key} HTTP/1.1\r\nHost: agent\r\n"
                        f"Content-Length: {len(VALUE)}\r\n\r\n").encode()
                writer.write(head + VALUE)
            else:
                writer.write(f"GET /v1/data/{CONCERN}/{key} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if head[9:12] not in (b"200", b"204"):
                raise RuntimeError(f"agent request answered {head[:12]!r}")
            done += 1
    finally:
        writer.close()
    return done


async def _agents(socks: list[socket.socket], deadline: float) -> int:
    counts = await asyncio.gather(*(_agent(sock, n % AGENT_CLIENTS, deadline)
                                    for n, sock in enumerate(socks)))
    return sum(counts)


@reports_load
def main(smoke: bool = False) -> None:
    """The soak; ``smoke``: a few seconds of it, to show it still runs and prints."""
    if smoke:
        globals().update(SMOKE)
    ctx = multiprocessing.get_context("spawn")
    # Agent sockets serve only their container's PID namespace: a stand-in
    # process in a fresh one plays the container, as in the agent benchmark.
    with (tempfile.TemporaryDirectory(prefix="pacd-soak-") as tmp,
          stand_in_container() as container_pid,
          NamespaceConnector(container_pid) as inside):
        base = Path(tmp)
        (base / "agents").mkdir()
        daemon, env = _start_daemon(base)
        parent, child = ctx.Pipe()
        server = ctx.Process(target=_serve, args=(str(base / "agents"), child, container_pid),
                             daemon=True)
        server.start()
        try:
            token = _token(env)
            if not parent.poll(60):
                raise RuntimeError("the agent-socket server did not start")
            agent_socks, _bare, _audit = parent.recv()
            for path in agent_socks:
                asyncio.run(_fill(inside.connect(path)))
            # Connected before the clock starts, from inside the stand-in container.
            agent_conns = [inside.connect(path) for path in agent_socks
                           for _ in range(AGENT_CLIENTS)]
            Client(load_config(env), use_token_cache=False).status()
            pids = {"daemon (owner socket)": daemon.pid, "agent sockets": server.pid}
            assert server.pid is not None
            before = {name: _usage(pid) for name, pid in pids.items()}
            deadline = time.monotonic() + SECONDS
            owner_counts: list[int] = []
            idle_counts: list[int] = []
            threads = [threading.Thread(target=_owner,
                                        args=(env["PACD_SOCKET"], token, deadline, n,
                                              owner_counts))
                       for n in range(OWNER_CLIENTS)]
            threads.append(threading.Thread(target=_idler,
                                            args=(env["PACD_SOCKET"], deadline, idle_counts)))
            for t in threads:
                t.start()
            agent_requests = asyncio.run(_agents(agent_conns, deadline))
            for t in threads:
                t.join()
            after = {name: _usage(pid) for name, pid in pids.items()}
            # The clients' last closes may still be on their way in: one round trip
            # and a second later, what the daemon still holds.
            Client(load_config(env), use_token_cache=False).status()
            time.sleep(1.0)
            settled = {name: _usage(pid) for name, pid in pids.items()}
        finally:
            parent.send("stop")
            server.join(30)
            if server.is_alive():
                server.kill()
            daemon.terminate()
            daemon.wait(30)
    print(f"soak: {SECONDS:g} s; owner requests {sum(owner_counts)} "
          f"({OWNER_CLIENTS} clients, 1 in 50 an unfinished session begin), "
          f"idle connections opened {sum(idle_counts)}, agent requests {agent_requests} "
          f"({AGENT_CLIENTS} clients x {len(agent_socks)} sockets, 1 in 4 a write)")
    print("  process                RSS before -> at end -> 1 s later   open fds before -> "
          "at end -> 1 s later")
    for name in pids:
        (rss0, fds0), (rss1, fds1), (rss2, fds2) = before[name], after[name], settled[name]
        print(f"  {name:<22} {rss0 / 1024:6.1f} -> {rss1 / 1024:6.1f} -> {rss2 / 1024:6.1f} MiB"
              f"    {fds0:4d} -> {fds1:4d} -> {fds2:4d}")


if __name__ == "__main__":
    main(smoke="--smoke" in sys.argv[1:])
