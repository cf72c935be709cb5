"""Start-up: the daemon's own, then an agent's.

Daemon: ``python -m pacd daemon`` from exec to the first answer to ``GET
/v1/status`` on its socket (polled every millisecond with the benchmark's
lean client), ``DAEMON_RUNS`` starts on one home (a first start makes the
keys, the databases and the byte code of every module, as installing the
package does: it is run once before, untimed), median; and the
daemon's resident set (``VmRSS``) once it has answered and sat idle for a
second. Targets: median <= 0.4 s, RSS <= 50 MB.

Agent: ``PodmanRuntime.run_agent`` (+ state check) against ``podman run -d``.

Both start the same hardened container (same image, same options: read-only
root, uid 1000, cap-drop ALL, no-new-privileges, pids/memory limits, noexec
tmpfs /tmp, network none, init, the agent socket bind mount, labels, env) in
the same run, alternating, N times each; the medians and their ratio are
printed (target: ratio ≤ 1.2). The adapter goes through a private
``podman system service``; the CLI baseline runs Podman directly with the
same containers.conf. Container removal is not timed.

Set ``PACD_PODMAN_URL`` to measure against an already running service instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.api_bench import LeanConnection
from bench.loadavg import reports_load
from pacd.core.models import AgentDomain, PersonalAIContainer, SecurityPolicy
from pacd.runtime.hardening import AgentRunSpec, agent_run_spec
from pacd.runtime.podman import PodmanRuntime
from pacd.runtime.service import (
    service_env,
    start_podman_service,
    stop_podman_service,
    write_containers_conf,
)
from tests.podman_env import TEST_LABEL, ensure_busybox_image, tag_for_run

N = 10
DAEMON_RUNS = 5
START_TARGET_S = 0.4
RSS_TARGET_MB = 50.0
#: ``--smoke``: the smallest configuration
SMOKE = {"N": 1, "DAEMON_RUNS": 1}
COMMAND = ("/bin/busybox", "sleep", "3600")


def cli_run_args(spec: AgentRunSpec) -> list[str]:
    """``podman run -d`` with the options ``create_body`` sends for ``spec``."""
    args = ["podman", "run", "-d", "--name", spec.name, "--user", spec.user,
            "--cap-drop", ",".join(spec.cap_drop), "--pids-limit", str(spec.pids_limit),
            "--memory", str(spec.memory_limit_bytes),
            "--memory-swap", str(spec.memory_limit_bytes), "--stop-timeout", str(spec.stop_timeout)]
    if spec.read_only_root:
        args += ["--read-only", "--read-only-tmpfs=false"]
    if spec.no_new_privileges:
        args += ["--security-opt", "no-new-privileges"]
    if spec.init:
        args.append("--init")
    if spec.hostname:
        args += ["--hostname", spec.hostname]
    args += ["--network", "bridge" if spec.network else "none"]
    for tmpfs in spec.tmpfs:
        args += ["--tmpfs", f"{tmpfs.target}:{','.join(tmpfs.mount_options())}"]
    for mount in spec.mounts:
        args += ["-v", f"{mount.source}:{mount.target}:{','.join(mount.mount_options())}"]
    for port in spec.published_ports:
        args += ["-p", f"{port.host_ip}:{port.host_port or ''}:{port.container_port}"
                       f"/{port.protocol}"]
    for key, value in spec.labels.items():
        args += ["--label", f"{key}={value}"]
    for key, value in spec.env.items():
        args += ["--env", f"{key}={value}"]
    args.append(spec.image)
    args += list(spec.command or ())
    return args


def _spec(image: str, sock: Path, run_id: str, i: int, kind: str) -> AgentRunSpec:
    agent = AgentDomain(id=f"{kind}{i}", name=f"{kind}{i}", image=image)
    container = PersonalAIContainer(id=str(uuid.uuid4()), name="bench", owner_id="bench-owner",
                                    agents=(agent,), concerns=(),
                                    policy=SecurityPolicy.strict())
    return tag_for_run(agent_run_spec(container, agent, "bench-owner", sock, command=COMMAND),
                       run_id)


def measure(runtime: PodmanRuntime, env: dict[str, str], image: str, sock: Path,
            run_id: str) -> tuple[list[float], list[float]]:
    ours: list[float] = []
    cli: list[float] = []
    for i in range(N):
        for kind in (("pacd", "cli") if i % 2 == 0 else ("cli", "pacd")):
            spec = _spec(image, sock, run_id, i, kind)
            started = time.perf_counter()
            if kind == "pacd":
                cid = runtime.run_agent(spec)
                if runtime.state(cid) != "running":
                    raise RuntimeError(f"{spec.name} is not running")
                ours.append(time.perf_counter() - started)
            else:
                subprocess.run(cli_run_args(spec), env=env, check=True,
                               stdout=subprocess.DEVNULL)
                cli.append(time.perf_counter() - started)
            runtime.remove(spec.name, force=True)
    return ours, cli


def _daemon_start(env: dict[str, str], log: Path) -> tuple[float, float]:
    """Start the daemon once: (seconds to its first status answer, idle RSS in MB)."""
    sock = env["PACD_SOCKET"]
    with open(log, "ab") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "pacd", "daemon"], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        while True:
            try:
                LeanConnection(sock, "/v1/status", {}).get()
                break
            except (OSError, RuntimeError):
                if proc.poll() is not None:
                    raise RuntimeError(log.read_text()) from None
                if time.perf_counter() - started > 60:
                    raise RuntimeError("the daemon did not answer within 60 s") from None
                time.sleep(0.001)
        took = time.perf_counter() - started
        time.sleep(1.0)  # idle: what it holds when nobody asks anything
        return took, _rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def daemon_start() -> None:
    """Print the daemon's start-up time and idle RSS against their targets."""
    with tempfile.TemporaryDirectory(prefix="pacd-bench-") as tmp:
        base = Path(tmp)
        env = {**os.environ, "PACD_HOME": str(base / "home"),
               "PACD_SOCKET": str(base / "run" / "pacd.sock"),
               "PACD_CONFIG": str(base / "config.toml"),
               # Byte code as an installed pacd has it (the package compiles its
               # modules when installed): written by the first start into this
               # directory, so the source tree is left as it was.
               "PYTHONPYCACHEPREFIX": str(base / "pycache")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        (base / "config.toml").write_text("")
        _daemon_start(env, base / "daemon.log")  # first start: keys, databases, byte code
        runs = [_daemon_start(env, base / "daemon.log") for _ in range(DAEMON_RUNS)]
    took = statistics.median(t for t, _ in runs)
    rss = statistics.median(r for _, r in runs)
    print(f"daemon start to first GET /v1/status answer, {DAEMON_RUNS} runs: median "
          f"{took:.3f} s (min {min(t for t, _ in runs):.3f}, max {max(t for t, _ in runs):.3f})"
          f" (target <= {START_TARGET_S:g} s: {'met' if took <= START_TARGET_S else 'NOT met'})")
    print(f"daemon idle RSS after start: median {rss:.1f} MB (target <= {RSS_TARGET_MB:g} MB: "
          f"{'met' if rss <= RSS_TARGET_MB else 'NOT met'})")


@reports_load
def main(smoke: bool = False) -> None:
    """The benchmark; ``smoke``: its smallest configuration, once (seconds), to show it
    still runs and prints its ratios — the numbers mean nothing then."""
    if smoke:
        globals().update(SMOKE)
    daemon_start()
    if shutil.which("podman") is None:
        raise SystemExit("start_bench: podman is not installed")
    base = Path(tempfile.mkdtemp(prefix="pacd-bench-"))
    proc = None
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conf = write_containers_conf(base / "containers.conf")
        url = os.environ.get("PACD_PODMAN_URL")
        if not url:
            proc = start_podman_service(base / "podman.sock", conf)
            url = f"unix://{base / 'podman.sock'}"
        env = service_env(conf)
        sock = base / "agent.sock"
        listener.bind(str(sock))
        listener.listen()
        run_id = uuid.uuid4().hex
        with PodmanRuntime.connect(url) as runtime:
            image = ensure_busybox_image(runtime)
            # Warm-up (image layers, runc, conmon in the page cache) for both paths.
            measure_once = _spec(image, sock, run_id, 99, "warm")
            runtime.run_agent(measure_once)
            runtime.remove(measure_once.name, force=True)
            try:
                ours, cli = measure(runtime, env, image, sock, run_id)
            finally:
                for leftover in runtime.list_labelled({TEST_LABEL: run_id}):
                    runtime.remove(leftover.id, force=True, missing_ok=True)
        ours_med, cli_med = statistics.median(ours), statistics.median(cli)
        print(f"agent start, N={N} each, alternating (hardened, network none, same image)")
        print(f"  pacd PodmanRuntime.run_agent + state: median {ours_med * 1000:7.1f} ms "
              f"(min {min(ours) * 1000:.1f}, max {max(ours) * 1000:.1f})")
        print(f"  podman run -d (CLI, baseline):        median {cli_med * 1000:7.1f} ms "
              f"(min {min(cli) * 1000:.1f}, max {max(cli) * 1000:.1f})")
        print(f"  ratio pacd/podman: {ours_med / cli_med:.2f} (target <= 1.2)")
    finally:
        listener.close()
        if proc is not None:
            stop_podman_service(proc)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main(smoke="--smoke" in sys.argv[1:])
