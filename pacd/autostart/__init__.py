"""Start the tray at login, per platform: the tray's "Start at login" toggle.

One backend per OS, each acting on the current user only and never needing
administrator rights:

- Linux and other XDG desktops: the autostart entry (:mod:`pacd.autostart.xdg`);
- macOS: the ``org.pacd.tray`` LaunchAgent (:mod:`pacd.autostart.macos`);
- Windows: the ``HKCU\\...\\Run`` value (:mod:`pacd.autostart.windows`).

The tray imports this package (it touches no daemon state, so the import
contract that keeps the tray to the client and message types allows it); the
CLI could too. The XDG backend runs on this machine; the macOS and Windows ones
are tested with a stand-in launchctl and registry at the OS boundary.
"""

from __future__ import annotations

import sys
from typing import Protocol

from pacd.autostart.command import TRAY, tray_command
from pacd.autostart.windows import RUN_KEY, RUN_VALUE, run_value
from pacd.autostart.xdg import ENTRY_NAME, desktop_entry, desktop_exec

__all__ = ["ENTRY_NAME", "RUN_KEY", "RUN_VALUE", "TRAY", "Backend", "backend",
           "desktop_entry", "desktop_exec", "disable", "enable", "enabled", "run_value",
           "set_enabled", "tray_command"]


class Backend(Protocol):
    def enabled(self) -> bool: ...
    def enable(self) -> None: ...
    def disable(self) -> None: ...


def backend(platform: str = sys.platform) -> Backend:
    """This platform's start-at-login backend."""
    if platform == "win32":
        from pacd.autostart.windows import RunKeyAutostart

        return RunKeyAutostart()
    if platform == "darwin":
        from pacd.autostart.macos import LaunchAgentAutostart

        return LaunchAgentAutostart()
    from pacd.autostart.xdg import XdgAutostart

    return XdgAutostart()


def enabled() -> bool:
    """Does the tray start at this user's next login?"""
    return backend().enabled()


def enable() -> None:
    backend().enable()


def disable() -> None:
    backend().disable()


def set_enabled(on: bool) -> None:
    """The toggle's slot."""
    if on:
        enable()
    else:
        disable()
