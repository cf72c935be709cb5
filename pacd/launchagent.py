"""The per-user LaunchAgents pacd uses on macOS, and loading them with launchctl.

``org.pacd.daemon``: launchd holds the owner socket (``Sockets`` →
``Listeners``: ``SockPathName`` the configured socket, ``SockPathMode`` 384,
i.e. 0600) and starts ``pacd daemon`` on the first connection, which collects
the socket with ``launch_activate_socket`` (:func:`pacd.api.activation.launchd_socket`).
``org.pacd.tray``: starts the tray at login (``RunAtLoad``); written and
removed by the tray's "Start at login" through :mod:`pacd.autostart.macos`.

The plist contents are pure functions (tested on any machine with plistlib).
Writing them into ``~/Library/LaunchAgents`` and loading them
(:func:`ensure_agent`: ``launchctl print``, then ``bootout``/``bootstrap
gui/<uid>`` only when needed) go through a runner passed in, so the files
written and the commands run are tested on any machine with a recording
runner. The app calls :func:`first_start` when it starts on macOS
(packaging/macos/app_main.py). launchctl itself has run on no machine of this
project yet (see README, "what has been run where").
"""

from __future__ import annotations

import contextlib
import os
import plistlib
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pacd.errors import ConfigError
from pacd.private_file import write_private

DAEMON_LABEL = "org.pacd.daemon"
TRAY_LABEL = "org.pacd.tray"
#: the ``Sockets`` key the daemon asks launchd for
LAUNCHD_SOCKET_NAME = "Listeners"
#: 0600 as launchd wants it: a plist integer, decimal
SOCKET_MODE = 0o600
#: a fixed path, not a PATH lookup: what bootstraps our agents is the system's launchctl
LAUNCHCTL = "/bin/launchctl"


def agents_dir(home: Path) -> Path:
    return home / "Library" / "LaunchAgents"


def plist_path(home: Path, label: str) -> Path:
    return agents_dir(home) / f"{label}.plist"


def daemon_agent(program: Sequence[str], socket_path: Path, log_dir: Path) -> dict[str, Any]:
    """The socket-activated daemon: ``program`` is the ``pacd`` command (argv prefix)."""
    if not socket_path.is_absolute():
        raise ConfigError(f"the LaunchAgent's socket path must be absolute: {socket_path}")
    return {
        "Label": DAEMON_LABEL,
        "ProgramArguments": [*program, "daemon"],
        "Sockets": {
            LAUNCHD_SOCKET_NAME: {
                "SockPathName": str(socket_path),
                "SockPathMode": SOCKET_MODE,
                "SockType": "stream",
                "SockFamily": "Unix",
            },
        },
        # the CLI and tray find the same socket through the configuration
        "EnvironmentVariables": {"PACD_SOCKET": str(socket_path)},
        "ProcessType": "Background",
        "StandardErrorPath": str(log_dir / "daemon.log"),
    }


def tray_agent(program: Sequence[str]) -> dict[str, Any]:
    """The tray at login: ``program`` is the ``pacd-tray`` command (argv)."""
    return {
        "Label": TRAY_LABEL,
        "ProgramArguments": list(program),
        "RunAtLoad": True,
        "ProcessType": "Interactive",
        "LimitLoadToSessionType": "Aqua",
    }


def plist_bytes(agent: dict[str, Any]) -> bytes:
    return plistlib.dumps(agent, fmt=plistlib.FMT_XML, sort_keys=True)


def require_macos() -> None:
    if sys.platform != "darwin":
        raise ConfigError(f"LaunchAgents exist only on macOS (this is {sys.platform})")


Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run_launchctl(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """The boundary to launchd: runs ``argv`` (always :data:`LAUNCHCTL` ...)."""
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def domain(uid: int) -> str:
    return f"gui/{uid}"


def ensure_agent(agent: dict[str, Any], home: Path, uid: int,
                 runner: Runner = run_launchctl) -> bool:
    """Have ``agent`` written (0600, ours) and loaded in ``gui/<uid>``; True if this
    call (re)loaded it.

    Idempotent: when the plist on disk is byte for byte this agent and launchd
    has it loaded (``launchctl print`` succeeds), nothing is written or run
    again. A changed plist (e.g. the app moved, another socket path) is
    rewritten and, if loaded, booted out before the new one is bootstrapped.
    """
    label = str(agent["Label"])
    path = plist_path(home, label)
    wanted = plist_bytes(agent)
    try:
        current: bytes | None = path.read_bytes()
    except FileNotFoundError:
        current = None
    service = f"{domain(uid)}/{label}"
    loaded = runner([LAUNCHCTL, "print", service]).returncode == 0
    if current == wanted and loaded:
        return False
    if current != wanted:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, wanted)
    if loaded:
        runner([LAUNCHCTL, "bootout", service])
    result = runner([LAUNCHCTL, "bootstrap", domain(uid), str(path)])
    if result.returncode != 0:
        raise ConfigError(f"launchctl bootstrap {path} failed: {result.stderr.strip()}")
    return True


def install(agent: dict[str, Any], home: Path, runner: Runner | None = None) -> Path:
    """Write ``agent`` and load it into this user's GUI domain. ``runner`` stands in
    for launchctl (tests on other systems); without it this runs on macOS only."""
    if runner is None:
        require_macos()
    ensure_agent(agent, home, os.getuid(), runner or run_launchctl)
    return plist_path(home, str(agent["Label"]))


def uninstall(label: str, home: Path, uid: int | None = None,
              runner: Runner | None = None) -> None:
    """Unload the agent ``label`` and remove its plist (absent is fine); ``runner`` as
    for :func:`install`."""
    if runner is None:
        require_macos()
        runner = run_launchctl
    # not loaded is the usual case and no error
    runner([LAUNCHCTL, "bootout", f"{domain(os.getuid() if uid is None else uid)}/{label}"])
    with contextlib.suppress(FileNotFoundError):
        plist_path(home, label).unlink()


def daemon_command(executable: str | None = None, frozen: bool | None = None) -> list[str]:
    """The ``pacd`` command the daemon agent runs: in the app, the daemon bundle beside
    the tray's executable (``Contents/MacOS/pacd/pacd``); else this interpreter's module."""
    executable = executable or sys.executable
    if getattr(sys, "frozen", False) if frozen is None else frozen:
        return [str(Path(executable).resolve().parent / "pacd" / "pacd")]
    return [executable, "-m", "pacd"]


def first_start(home: Path, socket_path: Path, uid: int, program: Sequence[str],
                runner: Runner = run_launchctl) -> bool:
    """What the app does each time it starts on macOS: have the socket-activated daemon
    agent written and loaded (a no-op once it is). True if it was (re)loaded."""
    agent = daemon_agent(program, socket_path, home / "Library" / "Logs" / "pacd")
    return ensure_agent(agent, home, uid, runner)
