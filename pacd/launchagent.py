"""The per-user LaunchAgents pacd uses on macOS, and loading them with launchctl.

``org.pacd.daemon``: launchd holds the owner socket (``Sockets`` →
``Listeners``: ``SockPathName`` the configured socket, ``SockPathMode`` 384,
i.e. 0600) and starts ``pacd daemon`` on the first connection, which collects
the socket with ``launch_activate_socket`` (:func:`pacd.api.activation.launchd_socket`).
``org.pacd.tray``: starts the tray at login (``RunAtLoad``); written and
removed by the tray's "Start at login" through :mod:`pacd.autostart.macos`.

The plist contents are pure functions (tested on any machine with plistlib).
Writing them into ``~/Library/LaunchAgents`` and ``launchctl bootstrap
gui/<uid>`` happen only on macOS and are refused elsewhere: that part has run
on no machine of this project yet (see README, "what has been run where").
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


#: runs one launchctl command: argv -> (exit status, stderr)
Launchctl = Callable[[Sequence[str]], tuple[int, str]]


def _launchctl(argv: Sequence[str]) -> tuple[int, str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return result.returncode, result.stderr


def _domain() -> str:
    return f"gui/{os.getuid()}"


def install(agent: dict[str, Any], home: Path, launchctl: Launchctl | None = None) -> Path:
    """Write ``agent`` (0600, ours) and load it into this user's GUI domain, replacing
    a loaded one of the same label. ``launchctl`` stands in for the system's (tests on
    other systems); without it this runs on macOS only."""
    if launchctl is None:
        require_macos()
    run = launchctl or _launchctl
    path = plist_path(home, str(agent["Label"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, plist_bytes(agent))
    _bootout(str(agent["Label"]), run)
    status, stderr = run([LAUNCHCTL, "bootstrap", _domain(), str(path)])
    if status != 0:
        raise ConfigError(f"launchctl bootstrap {path} failed: {stderr.strip()}")
    return path


def uninstall(label: str, home: Path, launchctl: Launchctl | None = None) -> None:
    """Unload the agent ``label`` and remove its plist (absent is fine)."""
    if launchctl is None:
        require_macos()
    _bootout(label, launchctl or _launchctl)
    with contextlib.suppress(FileNotFoundError):
        plist_path(home, label).unlink()


def _bootout(label: str, run: Launchctl) -> None:
    # not loaded is the usual case and no error
    run([LAUNCHCTL, "bootout", f"{_domain()}/{label}"])
