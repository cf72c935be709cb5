"""How the tray's "Start daemon" action starts the daemon on this platform."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

UNIT_DIRS = (Path.home() / ".config/systemd/user", Path("/usr/lib/systemd/user"),
             Path("/etc/systemd/user"))
LAUNCHD_LABEL = "org.pacd.daemon"


def start_command(platform: str = sys.platform) -> list[str]:
    """The service manager's start command where pacd is installed as a service, else
    the bundled ``pacd daemon`` (detached)."""
    if platform.startswith("linux") and any((d / "pacd.service").exists() for d in UNIT_DIRS):
        return ["systemctl", "--user", "start", "pacd.service"]
    if platform == "darwin" and (Path.home() / f"Library/LaunchAgents/{LAUNCHD_LABEL}.plist"
                                 ).exists():
        return ["launchctl", "kickstart", f"gui/{os.getuid()}/{LAUNCHD_LABEL}"]
    return [sys.executable, "-m", "pacd", "daemon"]


def start_daemon(platform: str = sys.platform) -> subprocess.Popen[bytes]:
    """Start it without waiting; the event follower notices when it answers."""
    return subprocess.Popen(start_command(platform), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
