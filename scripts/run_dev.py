"""Start pacd for a person trying it out: Podman service, daemon, tray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pacd.runtime.podman import PodmanRuntime
from pacd.runtime.service import start_podman_service, stop_podman_service

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / ".dev"


def podman_answers(url: str) -> bool:
    runtime = PodmanRuntime(url, timeout=3.0)
    try:
        runtime.ping()
        return True
    except Exception:
        return False
    finally:
        runtime.close()


def main() -> int:
    env = dict(os.environ)
    env.setdefault("PACD_HOME", str(DEV / "state"))
    env.setdefault("PACD_SOCKET", str(DEV / "run" / "pacd.sock"))
    env.setdefault("PACD_CONFIG", str(DEV / "config.toml"))
    podman = None
    if not env.get("PACD_PODMAN_URL"):
        runtime_dir = env.get("XDG_RUNTIME_DIR", "")
        user_socket = f"unix://{runtime_dir}/podman/podman.sock"
        if runtime_dir and podman_answers(user_socket):
            env["PACD_PODMAN_URL"] = user_socket
        else:
            sock = DEV / "podman" / "podman.sock"
            print(f"starting a private Podman service on {sock}", flush=True)
            podman = start_podman_service(sock)
            env["PACD_PODMAN_URL"] = f"unix://{sock}"
    pacd = str(ROOT / ".venv" / "bin" / "pacd")
    daemon = subprocess.Popen([pacd, "daemon"], env=env)
    tray = None
    try:
        deadline = time.monotonic() + 30
        while not Path(env["PACD_SOCKET"]).exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                print("the daemon did not start; see the messages above", file=sys.stderr)
                return 1
            time.sleep(0.1)
        print(f"pacd daemon is running on {env['PACD_SOCKET']}")
        print(f"try: PACD_SOCKET={env['PACD_SOCKET']} {pacd} status")
        if env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"):
            tray = subprocess.Popen([str(ROOT / ".venv" / "bin" / "pacd-tray")], env=env)
        else:
            print("no display: the tray is not started (the CLI works). Ctrl-C stops pacd.")
        return daemon.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in (tray, daemon):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)
        if podman is not None:
            stop_podman_service(podman)


if __name__ == "__main__":
    raise SystemExit(main())
