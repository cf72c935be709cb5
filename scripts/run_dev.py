"""``make run``: start pacd for a person trying it out, and stop it in order.

What it starts, each in a process group of its own: a private D-Bus session
bus with an unlocked gnome-keyring (the OS keychain pacd keeps its keys in; its
keyring file stays in the dev HOME across runs), a private Podman service
(unless one is configured or the user's answers), the daemon, and the tray
when there is a display (or ``QT_QPA_PLATFORM=offscreen``).

Why its own process groups: Ctrl-C sends SIGINT to the terminal's whole
foreground process group. If the keychain got it too, it would die before the
daemon, and the daemon's last act — writing the audit checkpoint into the
keychain — would fail. So only this launcher gets the Ctrl-C, and it stops
the others in order: tray, daemon (which writes its checkpoint), Podman, the
keyring, the bus; then it makes sure none of their process groups has a
process left.

State lives in ``.dev/`` of the checkout (``PACD_DEV_DIR`` to put it elsewhere);
``.dev/config.toml`` is the development config, which alone allows the demo
authenticator (``allow_software_authenticator = true``). ``.dev/env`` holds the
variables another shell needs to use this daemon's CLI (``. .dev/env``), and
``.dev/run/launcher.json`` the pid and process group of everything started.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from pacd.runtime.podman import PodmanRuntime
from pacd.runtime.service import start_podman_service, stop_podman_service

ROOT = Path(__file__).resolve().parents[1]
DEV_CONFIG = (
    "# The development daemon of `make run` (scripts/run_dev.py); not for real use.\n"
    "# The demo authenticator (pacd enroll --demo) is a software key: NOT secure.\n"
    "allow_software_authenticator = true\n"
)
#: how long each part may take to stop after SIGTERM before it is killed
STOP_TIMEOUT_S = 30.0


class Interrupted(Exception):
    """SIGINT or SIGTERM reached the launcher."""


def _interrupted(signum: int, frame: FrameType | None) -> None:
    # Once: the shutdown that follows must not be cut short by a second Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signal.Signals(signum).name)


def podman_answers(url: str) -> bool:
    runtime = PodmanRuntime(url, timeout=3.0)
    try:
        runtime.ping()
        return True
    except Exception:
        return False
    finally:
        runtime.close()


def ensure_dev_config(path: Path) -> None:
    """Write the development config once; an existing one is the owner's to edit."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(DEV_CONFIG)


class Launcher:
    def __init__(self, dev: Path) -> None:
        self.dev = dev
        self.run_dir = dev / "run"
        self.record = self.run_dir / "launcher.json"
        #: name -> process, in start order (stopped in reverse, the tray first)
        self.started: dict[str, subprocess.Popen[bytes]] = {}
        self.podman: subprocess.Popen[bytes] | None = None

    # --- bookkeeping ------------------------------------------------------------

    def _note(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        self.started[name] = proc
        self._write_record()

    def _write_record(self) -> None:
        procs = dict(self.started)
        if self.podman is not None:
            procs["podman"] = self.podman
        doc = {"launcher": os.getpid(),
               "processes": {n: {"pid": p.pid, "pgid": p.pid} for n, p in procs.items()}}
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, self.record)

    # --- starting -----------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], env: dict[str, str],
              **popen: Any) -> subprocess.Popen[bytes]:
        # process_group=0: a group of its own, out of reach of the terminal's Ctrl-C.
        proc = subprocess.Popen(argv, env=env, process_group=0, **popen)
        self._note(name, proc)
        return proc

    def start_keychain(self, env: dict[str, str]) -> None:
        """A private session bus and an unlocked gnome-keyring on it (as
        scripts/dev-session makes for the tests), in ``env``."""
        if shutil.which("dbus-daemon") is None or shutil.which("gnome-keyring-daemon") is None:
            print("run-dev: dbus-daemon or gnome-keyring-daemon missing; running without a "
                  "keychain", file=sys.stderr)
            return
        bus = self.spawn("dbus", ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
                         env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        if not address:
            raise RuntimeError("the session bus did not start")
        env["DBUS_SESSION_BUS_ADDRESS"] = address
        keyring = self.spawn("keyring", ["gnome-keyring-daemon", "--foreground", "--unlock",
                                         "--components=secrets"], env,
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert keyring.stdin is not None
        keyring.stdin.write(env.get("PACD_DEV_KEYRING_PASSWORD", "pacd-dev").encode())
        keyring.stdin.close()
        self._wait_for_secret_service(env, keyring)

    @staticmethod
    def _wait_for_secret_service(env: dict[str, str], keyring: subprocess.Popen[bytes]) -> None:
        from jeepney import DBusAddress, new_method_call
        from jeepney.io.blocking import open_dbus_connection

        bus = DBusAddress("/org/freedesktop/DBus", bus_name="org.freedesktop.DBus",
                          interface="org.freedesktop.DBus")
        ask = new_method_call(bus, "NameHasOwner", "s", ("org.freedesktop.secrets",))
        deadline = time.monotonic() + 20
        with open_dbus_connection(bus=env["DBUS_SESSION_BUS_ADDRESS"]) as conn:
            while time.monotonic() < deadline:
                if keyring.poll() is not None:
                    raise RuntimeError(f"gnome-keyring-daemon exited with {keyring.returncode}")
                if conn.send_and_get_reply(ask, timeout=5).body[0]:
                    return
                time.sleep(0.05)
        raise RuntimeError("gnome-keyring did not take org.freedesktop.secrets within 20 s")

    def start_podman(self, env: dict[str, str]) -> None:
        if env.get("PACD_PODMAN_URL"):
            return
        runtime_dir = env.get("XDG_RUNTIME_DIR", "")
        user_socket = f"unix://{runtime_dir}/podman/podman.sock"
        if runtime_dir and podman_answers(user_socket):
            env["PACD_PODMAN_URL"] = user_socket
            return
        sock = self.dev / "podman" / "podman.sock"
        print(f"starting a private Podman service on {sock}", flush=True)
        try:
            self.podman = start_podman_service(sock)
        except Exception as exc:  # pacd runs without Podman; containers answer 503
            print(f"run-dev: no Podman service ({exc}); containers will not start",
                  file=sys.stderr)
            return
        self._write_record()
        env["PACD_PODMAN_URL"] = f"unix://{sock}"

    def wait_for_socket(self, daemon: subprocess.Popen[bytes], sock: Path) -> bool:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def write_env_file(self, env: dict[str, str]) -> Path:
        names = ("PACD_SOCKET", "PACD_HOME", "PACD_CONFIG", "DBUS_SESSION_BUS_ADDRESS")
        lines = [f"export {n}={shlex.quote(env[n])}" for n in names if env.get(n)]
        lines.append(f"export PATH={shlex.quote(str(ROOT / '.venv' / 'bin'))}:\"$PATH\"")
        path = self.dev / "env"
        path.write_text("# . .dev/env — the CLI of the daemon `make run` started\n"
                        + "\n".join(lines) + "\n")
        return path

    # --- stopping -------------------------------------------------------------------

    def stop_all(self) -> list[str]:
        """Tray, daemon, Podman, keyring, bus — each waited for; then any process
        still in one of their groups is killed. Returns what had to be killed."""
        killed: list[str] = []
        for name in ("tray", "daemon"):
            if name in self.started and not _stop(self.started[name]):
                killed.append(name)
        if self.podman is not None:
            stop_podman_service(self.podman)
        for name in ("keyring", "dbus"):
            if name in self.started and not _stop(self.started[name]):
                killed.append(name)
        for name, proc in [*self.started.items(),
                           *([("podman", self.podman)] if self.podman else [])]:
            if _group_alive(proc.pid):
                # Something the part started (a bus-activated service, say).
                os.killpg(proc.pid, signal.SIGKILL)
                killed.append(f"{name} group")
        return killed


def _stop(proc: subprocess.Popen[bytes]) -> bool:
    """SIGTERM and wait; SIGKILL if it does not stop in time. True: it stopped itself."""
    if proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main() -> int:
    dev = Path(os.environ.get("PACD_DEV_DIR") or ROOT / ".dev").resolve()
    home = Path(os.environ.get("PACD_DEV_HOME") or dev / "home")
    env = dict(os.environ)
    env["HOME"] = str(home)
    env.setdefault("PACD_HOME", str(dev / "state"))
    env.setdefault("PACD_SOCKET", str(dev / "run" / "pacd.sock"))
    env.setdefault("PACD_CONFIG", str(dev / "config.toml"))
    for directory in (home, dev / "run"):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ensure_dev_config(Path(env["PACD_CONFIG"]))
    launcher = Launcher(dev)
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    status = 0
    try:
        launcher.start_keychain(env)
        launcher.start_podman(env)
        pacd = str(ROOT / ".venv" / "bin" / "pacd")
        daemon = launcher.spawn("daemon", [pacd, "daemon"], env)
        if not launcher.wait_for_socket(daemon, Path(env["PACD_SOCKET"])):
            print("the daemon did not start; see the messages above", file=sys.stderr)
            return 1
        env_file = launcher.write_env_file(env)
        print(f"pacd daemon is running on {env['PACD_SOCKET']}")
        print(f"in another shell: . {env_file}   then: pacd status")
        if (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")
                or env.get("QT_QPA_PLATFORM") == "offscreen"):
            launcher.spawn("tray", [str(ROOT / ".venv" / "bin" / "pacd-tray")], env)
        else:
            print("no display: the tray is not started (the CLI works). Ctrl-C stops pacd.")
        print("Ctrl-C stops pacd.", flush=True)
        status = daemon.wait()
    except Interrupted as why:
        print(f"\n{why}: stopping the tray, the daemon, Podman, then the keychain…",
              flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        killed = launcher.stop_all()
        if killed:
            print(f"run-dev: had to kill: {', '.join(killed)}", file=sys.stderr)
            status = status or 1
        launcher.record.unlink(missing_ok=True)
        print("stopped.", flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
