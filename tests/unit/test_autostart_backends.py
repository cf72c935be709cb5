"""Start at login on macOS and Windows, at the OS boundary: a stand-in launchctl and a
stand-in HKCU Run key; everything above them (plist, paths, command line) is the real code.
The Linux backend runs for real in tests/unit/test_autostart.py."""

from __future__ import annotations

import os
import plistlib
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from pacd import autostart, launchagent
from pacd.autostart.macos import LaunchAgentAutostart
from pacd.autostart.windows import RUN_VALUE, RunKeyAutostart, run_value
from pacd.autostart.xdg import XdgAutostart
from pacd.errors import ConfigError


class Launchctl:
    """Records what would be run; ``bootstrap`` answers ``status``; nothing is loaded."""

    def __init__(self, status: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.status = status

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        if argv[1] == "bootstrap":
            err = "Bootstrap failed: 5: Input/output error" if self.status else ""
            return subprocess.CompletedProcess(list(argv), self.status, "", err)
        # print/bootout of an agent not loaded
        return subprocess.CompletedProcess(list(argv), 113, "", "Could not find service")


def test_macos_start_at_login_writes_loads_and_removes_the_tray_launch_agent(
        tmp_path: Path) -> None:
    launchctl = Launchctl()
    login = LaunchAgentAutostart(tmp_path, launchctl)
    plist = tmp_path / "Library" / "LaunchAgents" / "org.pacd.tray.plist"
    assert not login.enabled()
    login.enable()
    assert login.enabled()
    agent = plistlib.loads(plist.read_bytes())
    assert agent["Label"] == launchagent.TRAY_LABEL and agent["RunAtLoad"] is True
    assert agent["ProgramArguments"] == autostart.tray_command()
    assert plist.stat().st_mode & 0o077 == 0
    domain = f"gui/{os.getuid()}"
    assert launchctl.calls == [
        ["/bin/launchctl", "print", f"{domain}/org.pacd.tray"],
        ["/bin/launchctl", "bootstrap", domain, str(plist)]]
    login.disable()
    assert not login.enabled() and not plist.exists()
    assert launchctl.calls[-1] == ["/bin/launchctl", "bootout", f"{domain}/org.pacd.tray"]


def test_macos_a_failed_bootstrap_is_an_error_not_a_silent_toggle(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"bootstrap .* failed: Bootstrap failed"):
        LaunchAgentAutostart(tmp_path, Launchctl(status=5)).enable()


def test_macos_without_a_stand_in_launchctl_runs_on_macos_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only on macOS"):
        LaunchAgentAutostart(tmp_path).enable()
    assert not (tmp_path / "Library").exists()


class RunKey:
    def __init__(self) -> None:
        self.values: dict[str, str] = {"OneDrive": r'"C:\OneDrive.exe" /background'}

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def set(self, name: str, value: str) -> None:
        self.values[name] = value

    def delete(self, name: str) -> None:
        self.values.pop(name, None)


def test_windows_start_at_login_sets_and_removes_only_our_run_value() -> None:
    key = RunKey()
    login = RunKeyAutostart(key)
    assert not login.enabled()
    login.enable()
    assert login.enabled()
    assert key.values[RUN_VALUE] == run_value(autostart.tray_command())
    login.disable()
    login.disable()  # already gone is fine
    assert not login.enabled()
    assert key.values == {"OneDrive": r'"C:\OneDrive.exe" /background'}


def test_each_platform_gets_its_own_backend() -> None:
    assert isinstance(autostart.backend("win32"), RunKeyAutostart)
    assert isinstance(autostart.backend("darwin"), LaunchAgentAutostart)
    assert isinstance(autostart.backend("linux"), XdgAutostart)
    assert isinstance(autostart.backend("freebsd14"), XdgAutostart)
