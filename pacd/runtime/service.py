"""A private Podman API service (``podman system service``) on a socket of our choosing.

Used by ``make run``, the system tests and the benchmarks, so that they talk to
a real Podman without touching the owner's own ``podman.socket``. The
containers.conf it gets selects runc and cgroupfs and file-based events, which
work in VMs and containers where crun or the systemd cgroup manager do not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from pacd.errors import RuntimeUnavailable

DEFAULT_CONTAINERS_CONF = """\
# Written by pacd for its private Podman service.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def write_containers_conf(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEFAULT_CONTAINERS_CONF, encoding="utf-8")
    return path


def podman_binary() -> str | None:
    return shutil.which("podman")


def service_env(conf_path: Path) -> dict[str, str]:
    """The environment for Podman processes that must share the service's settings
    (the CLI used beside the service must use the same runtime and event log)."""
    return {**os.environ, "CONTAINERS_CONF": str(conf_path)}


def start_podman_service(
    socket_path: Path,
    conf_path: Path | None = None,
    *,
    log_path: Path | None = None,
    timeout: float = 20.0,
) -> subprocess.Popen[bytes]:
    """Start ``podman system service --time 0 unix://socket_path`` and wait until it
    answers. ``conf_path`` defaults to a containers.conf written next to the socket.
    Stop it with ``stop_podman_service``."""
    podman = podman_binary()
    if podman is None:
        raise RuntimeUnavailable("podman is not installed (Debian/Ubuntu: apt install podman)")
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if conf_path is None:
        conf_path = write_containers_conf(socket_path.parent / "containers.conf")
    if socket_path.exists():
        socket_path.unlink()
    log_path = log_path or socket_path.parent / "podman-service.log"
    log = log_path.open("ab")
    try:
        proc = subprocess.Popen(
            [podman, "system", "service", "--time", "0", f"unix://{socket_path}"],
            env=service_env(conf_path), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            # Own process group: a Ctrl-C meant for the caller must not kill Podman
            # mid-operation; the caller stops it explicitly.
            start_new_session=True,
        )
    finally:
        log.close()
    try:
        _wait_until_answering(proc, socket_path, log_path, timeout)
    except BaseException:
        stop_podman_service(proc)
        raise
    return proc


def _wait_until_answering(proc: subprocess.Popen[bytes], socket_path: Path, log_path: Path,
                          timeout: float) -> None:
    from pacd.runtime.podman import PodmanRuntime

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeUnavailable(
                f"podman system service exited with {proc.returncode} "
                f"(log: {log_path})")
        if socket_path.exists():
            runtime = PodmanRuntime(f"unix://{socket_path}", timeout=5.0)
            try:
                runtime.ping()
                return
            except RuntimeUnavailable as exc:
                last = exc
            finally:
                runtime.close()
        time.sleep(0.05)
    raise RuntimeUnavailable(f"podman system service did not answer within {timeout} s: {last}")


def stop_podman_service(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop the service (containers it started keep running under conmon)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
