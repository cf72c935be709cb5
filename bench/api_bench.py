"""Owner-socket round trips: pacd's daemon next to Podman's own API, same run, same client.

Measures latency (p50/p99) and throughput of ``GET /v1/status`` (no token) and
``GET /v1/sessions/current`` (bearer token checked against the state database)
with 1 and 16 concurrent keep-alive clients, and Podman's ``GET /_ping`` over
its Unix socket (a private ``podman system service``) with the very same
client code. Target: pacd's status p50 ≤ Podman's ping p50.

The token comes from a real presence ceremony against the daemon, signed by
the software authenticator from the test suite (this machine has no key).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pacd.client import Client, UnixHTTPConnection
from pacd.config import load_config

REQUESTS_PER_CLIENT = int(os.environ.get("PACD_BENCH_REQUESTS", "4000"))
ROUNDS = 8
#: ``--smoke``: the smallest configuration
SMOKE = {"REQUESTS_PER_CLIENT": 50, "ROUNDS": 1}


def _worker(sock: str, path: str, headers: dict[str, str], count: int,
            out: list[float], barrier: threading.Barrier) -> None:
    conn = UnixHTTPConnection(sock, timeout=30)
    for _ in range(20):  # connect and warm this connection
        conn.request("GET", path, headers=headers)
        conn.getresponse().read()
    barrier.wait()
    local = []
    for _ in range(count):
        t0 = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        local.append(time.perf_counter() - t0)
        if resp.status != 200:
            raise RuntimeError(f"{path} answered {resp.status}")
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
        try:
            token = _token(env)
            pacd_sock = env["PACD_SOCKET"]
            podman_sock = str(base / "podman" / "podman.sock")
            auth = {"Authorization": f"Bearer {token}"}
            targets = {
                "podman GET /_ping (baseline)": (podman_sock, "/_ping", {}),
                "pacd GET /v1/status": (pacd_sock, "/v1/status", {}),
                "pacd GET /v1/sessions/current": (pacd_sock, "/v1/sessions/current", auth),
            }
            for clients in (1, 16):
                results = compare(targets, clients)
                for name, r in results.items():
                    print(_row(name, clients, r))
                base_p50 = results["podman GET /_ping (baseline)"]["p50_ms"]
                for name in list(targets)[1:]:
                    print(f"  ratio {name} p50 / podman ping p50, c={clients}: "
                          f"{results[name]['p50_ms'] / base_p50:.2f}")
            print("target: pacd GET /v1/status p50 <= podman GET /_ping p50 (ratio <= 1.00)")
        finally:
            daemon.terminate()
            daemon.wait(30)
            stop_podman_service(podman)


if __name__ == "__main__":
    main(smoke="--smoke" in sys.argv[1:])
