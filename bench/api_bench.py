"""Owner-socket round trips: pacd's daemon next to Podman's own API, same run, same client.

Measures latency (p50/p99) and throughput of ``GET /v1/status`` (no token) and
``GET /v1/sessions/current`` (bearer token checked against the state database)
with 1 and 16 concurrent keep-alive clients, next to two baselines measured
in the same run with the very same lean client (a raw keep-alive socket per
client thread, one request in flight on each):

- Podman's ``GET /_ping`` over its Unix socket (a private ``podman system
  service``): printed for context; how far apart the two are depends on the
  client as much as on either server.
- the **floor handler** (:mod:`bench.floor_server`): an aiohttp handler on the
  same kind of Unix socket, in its own process like the daemon, doing only
  what an authorised metadata read must — one token lookup in SQLite, one
  HMAC, one insert into a WAL-mode table without fsync.

Target: pacd's authorised ``GET /v1/sessions/current`` p50 <= 1.2 x the floor
handler's p50, with 1 and with 16 clients.

The token comes from a real presence ceremony against the daemon, signed by
the software authenticator from the test suite (this machine has no key).
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.loadavg import reports_load
from pacd.client import Client
from pacd.config import load_config

REQUESTS_PER_CLIENT = int(os.environ.get("PACD_BENCH_REQUESTS", "4000"))
ROUNDS = 8
#: ``--smoke``: the smallest configuration
SMOKE = {"REQUESTS_PER_CLIENT": 50, "ROUNDS": 1}


class LeanConnection:
    """A keep-alive HTTP/1.1 client on a raw Unix socket, one request in flight.

    The request bytes are built once; the answer is read by its Content-Length.
    A full client library costs more per request than a fast server does, and
    with 16 client threads on a small machine would measure itself.
    """

    def __init__(self, sock: str, path: str, headers: dict[str, str]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(sock)
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{lines}\r\n".encode()
        self.path = path
        self.buffer = b""

    def get(self) -> None:
        """One round trip; raises unless the answer is a 200."""
        self.sock.sendall(self.request)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._recv()
        head = self.buffer[:end]
        length = -1
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length < 0:
            raise RuntimeError(f"{self.path}: no Content-Length in {head[:300]!r}")
        while len(self.buffer) < end + 4 + length:
            self._recv()
        self.buffer = self.buffer[end + 4 + length:]
        if head[9:12] != b"200":
            raise RuntimeError(f"{self.path} answered {head[:40]!r}")

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError(f"{self.path}: the server closed the connection")
        self.buffer += data

    def close(self) -> None:
        self.sock.close()


def _worker(sock: str, path: str, headers: dict[str, str], count: int,
            out: list[float], barrier: threading.Barrier) -> None:
    conn = LeanConnection(sock, path, headers)
    for _ in range(20):  # warm this connection
        conn.get()
    barrier.wait()
    local = []
    for _ in range(count):
        t0 = time.perf_counter()
        conn.get()
        local.append(time.perf_counter() - t0)
    conn.close()
    out.extend(local)


def measure(sock: str, path: str, clients: int, headers: dict[str, str] | None = None,
            count: int | None = None) -> tuple[list[float], float]:
    """Latencies of ``count`` requests spread over ``clients`` connections, and the wall time."""
    latencies: list[float] = []
    barrier = threading.Barrier(clients + 1)
    per_client = max(50, (count or REQUESTS_PER_CLIENT) // clients)
    threads = [threading.Thread(target=_worker, args=(sock, path, headers or {}, per_client,
                                                      latencies, barrier))
               for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - started


def compare(targets: dict[str, tuple[str, str, dict[str, str]]], clients: int
            ) -> dict[str, dict[str, float]]:
    """Interleave the targets round by round so machine noise hits them alike.

    p50 is the median of the per-round medians; p99 is over all rounds pooled;
    throughput is total requests over total time.
    """
    rounds: dict[str, list[float]] = {name: [] for name in targets}
    pooled: dict[str, list[float]] = {name: [] for name in targets}
    elapsed: dict[str, float] = dict.fromkeys(targets, 0.0)
    for _ in range(ROUNDS):
        for name, (sock, path, headers) in targets.items():
            lat, took = measure(sock, path, clients, headers, REQUESTS_PER_CLIENT // ROUNDS)
            rounds[name].append(statistics.median(lat))
            pooled[name] += lat
            elapsed[name] += took
    out = {}
    for name in targets:
        lat = sorted(pooled[name])
        out[name] = {"p50_ms": statistics.median(rounds[name]) * 1000,
                     "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
                     "rps": len(lat) / elapsed[name]}
    return out


def _start_daemon(base: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    env = {**os.environ, "PACD_HOME": str(base / "home"),
           "PACD_SOCKET": str(base / "run" / "pacd.sock"),
           "PACD_CONFIG": str(base / "config.toml")}
    (base / "config.toml").write_text("max_connections = 64\n")
    with open(base / "daemon.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pacd", "daemon"], env=env,
                                stdout=subprocess.DEVNULL, stderr=log)
    client = Client(load_config(env), use_token_cache=False)
    for _ in range(600):
        try:
            client.status()
            return proc, env
        except Exception:
            if proc.poll() is not None:
                raise RuntimeError((base / "daemon.log").read_text()) from None
            time.sleep(0.05)
    raise RuntimeError("daemon did not start")


def _token(env: dict[str, str]) -> str:
    from fido2.client import UserInteraction

    from pacd.presence.client import authenticate, register
    from tests.softauthn import SoftAuthenticator

    class Quiet(UserInteraction):
        def request_uv(self, permissions: object, rd_id: object) -> bool:
            return True

    device = SoftAuthenticator()
    client = Client(load_config(env), use_token_cache=False)
    client.request("POST", "/v1/owner", {"name": "bench"})
    begin = client.request("POST", "/v1/owner/credentials/begin", {})
    client.request("POST", "/v1/owner/credentials/complete", {
        "credential": register(begin["publicKey"], begin["origin"], Quiet(), device=device),
        "registration_id": begin["registration_id"]})
    begin = client.request("POST", "/v1/sessions/begin", {"level": "enhanced"})
    credential = authenticate(begin["publicKey"], begin["origin"], Quiet(), device=device)
    token = client.request("POST", "/v1/sessions/complete",
                           {"session_id": begin["session_id"], "credential": credential})
    return str(token["token"])


def _row(name: str, clients: int, r: dict[str, float]) -> str:
    return (f"  {name:<34} c={clients:<3} p50 {r['p50_ms']:7.3f} ms  p99 {r['p99_ms']:7.3f} ms"
            f"  {r['rps']:8.0f} req/s")


def _start_floor(base: Path, token: str) -> subprocess.Popen[bytes]:
    """The floor handler (:mod:`bench.floor_server`) in its own process, serving."""
    sock = base / "floor.sock"
    proc = subprocess.Popen([sys.executable, "-m", "bench.floor_server", str(sock), str(base)],
                            stdin=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    assert proc.stdin is not None
    proc.stdin.write(token.encode() + b"\n")
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the floor handler exited with {proc.returncode}")
        try:
            LeanConnection(str(sock), "/v1/sessions/current",
                           {"Authorization": f"Bearer {token}"}).get()
            return proc
        except (OSError, RuntimeError):
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the floor handler did not start")


def _stop_floor(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()  # its cue to stop
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


PING = "podman GET /_ping (context)"
FLOOR = "floor handler (baseline)"
STATUS = "pacd GET /v1/status"
CURRENT = "pacd GET /v1/sessions/current"
TARGET = 1.2


@reports_load
def main(smoke: bool = False) -> None:
    """The benchmark; ``smoke``: its smallest configuration, once (seconds), to show it
    still runs and prints its ratios — the numbers mean nothing then."""
    if smoke:
        globals().update(SMOKE)
    from pacd.runtime.service import start_podman_service, stop_podman_service

    with tempfile.TemporaryDirectory(prefix="pacd-bench-") as tmp:
        base = Path(tmp)
        podman = start_podman_service(base / "podman" / "podman.sock")
        daemon, env = _start_daemon(base)
        floor = None
        try:
            token = _token(env)
            floor = _start_floor(base, token)
            pacd_sock = env["PACD_SOCKET"]
            podman_sock = str(base / "podman" / "podman.sock")
            auth = {"Authorization": f"Bearer {token}"}
            targets = {
                PING: (podman_sock, "/_ping", {}),
                FLOOR: (str(base / "floor.sock"), "/v1/sessions/current", auth),
                STATUS: (pacd_sock, "/v1/status", {}),
                CURRENT: (pacd_sock, "/v1/sessions/current", auth),
            }
            verdicts = []
            for clients in (1, 16):
                results = compare(targets, clients)
                for name, r in results.items():
                    print(_row(name, clients, r))
                ping, floor_p50 = results[PING]["p50_ms"], results[FLOOR]["p50_ms"]
                for name in (STATUS, CURRENT):
                    print(f"  ratio {name} p50 / podman ping p50, c={clients}: "
                          f"{results[name]['p50_ms'] / ping:.2f}")
                ratio = results[CURRENT]["p50_ms"] / floor_p50
                verdicts.append(ratio <= TARGET)
                print(f"  ratio {CURRENT} p50 / floor handler p50, c={clients}: {ratio:.2f}"
                      f" (target <= {TARGET:.2f}: {'met' if ratio <= TARGET else 'NOT met'})")
            print(f"target: authorised {CURRENT} p50 <= {TARGET:g} x the floor handler's p50,"
                  f" 1 and 16 clients: {'met' if all(verdicts) else 'NOT met'}")
        finally:
            if floor is not None:
                _stop_floor(floor)
            daemon.terminate()
            daemon.wait(30)
            stop_podman_service(podman)


if __name__ == "__main__":
    main(smoke="--smoke" in sys.argv[1:])
