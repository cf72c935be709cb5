"""Start at login on macOS: the ``org.pacd.tray`` LaunchAgent (:mod:`pacd.launchagent`)."""

from __future__ import annotations

from pathlib import Path

from pacd import launchagent
from pacd.autostart.command import tray_command


class LaunchAgentAutostart:
    """``~/Library/LaunchAgents/org.pacd.tray.plist``, loaded with launchctl.

    ``launchctl`` (argv -> completed process) stands in for the system's where there is
    none (tests); left out, the real one runs, on macOS only.
    """

    def __init__(self, home: Path | None = None,
                 launchctl: launchagent.Runner | None = None) -> None:
        self.home = home or Path.home()
        self.launchctl = launchctl

    def enabled(self) -> bool:
        return launchagent.plist_path(self.home, launchagent.TRAY_LABEL).is_file()

    def enable(self) -> None:
        launchagent.install(launchagent.tray_agent(tray_command()), self.home, self.launchctl)

    def disable(self) -> None:
        launchagent.uninstall(launchagent.TRAY_LABEL, self.home, runner=self.launchctl)
