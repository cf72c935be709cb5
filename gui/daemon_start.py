"""How the tray's "Start daemon" action starts the daemon on this platform."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

LAUNCHD_LABEL = "org.pacd.daemon"
#: starts ``argv`` detached, without waiting (the OS boundary; tests pass their own)
Spawn = Callable[[Sequence[str]], object]


def unit_dirs(home: Path) -> tuple[Path, ...]:
    return (home / ".config/systemd/user", Path("/usr/lib/systemd/user"),
            Path("/etc/systemd/user"))


def start_command(platform: str = sys.platform, home: Path | None = None) -> list[str]:
    """The service manager's start command where pacd is installed as a service, else
    the bundled ``pacd daemon`` (detached)."""
    home = home or Path.home()
    if platform.startswith("linux") and any((d / "pacd.service").exists()
                                            for d in unit_dirs(home)):
        return ["systemctl", "--user", "start", "pacd.service"]
    if platform == "darwin" and (home / f"Library/LaunchAgents/{LAUNCHD_LABEL}.plist"
                                 ).exists():
        return ["launchctl", "kickstart", f"gui/{os.getuid()}/{LAUNCHD_LABEL}"]
    return [sys.executable, "-m", "pacd", "daemon"]


def spawn_detached(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def start_daemon(platform: str = sys.platform, spawn: Spawn | None = None) -> object:
    """Start it without waiting; the event follower notices when it answers."""
    return (spawn or spawn_detached)(start_command(platform))
