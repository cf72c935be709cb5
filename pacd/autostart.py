"""Start the tray at login, per platform: the tray's "Start at login" toggle.

``enabled()``, ``enable()`` and ``disable()`` act on the current user only and
never need administrator rights:

- Linux (XDG autostart): ``$XDG_CONFIG_HOME/autostart/pacd-tray.desktop``. The
  .deb installs a system-wide entry in ``/etc/xdg/autostart``; a user turns it
  off with a user entry of the same name saying ``Hidden=true`` (the XDG
  autostart spec), and on with one that does not.
- macOS: the ``org.pacd.tray`` LaunchAgent (:mod:`pacd.launchagent`).
- Windows: the value ``pacd`` under ``HKCU\\...\\CurrentVersion\\Run``, the
  one packaging/windows/pacd.nsi writes at install and removes at uninstall.

The Linux backend runs here; of the others only the pure parts (plist
contents, the Run value's command line) are tested on this machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pacd import launchagent
from pacd.private_file import write_private

ENTRY_NAME = "pacd-tray.desktop"
RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
RUN_VALUE = "pacd"
TRAY = "pacd-tray"


def tray_command() -> list[str]:
    """How to start the installed tray: the frozen bundle's, the one on PATH, or this
    interpreter's module."""
    if getattr(sys, "frozen", False):
        name = TRAY + (".exe" if sys.platform == "win32" else "")
        here = Path(sys.executable).resolve().parent
        # beside us (the tray's own bundle, the macOS app) or the tray bundle beside ours
        for candidate in (here / name, here.parent / TRAY / name):
            if candidate.is_file():
                return [str(candidate)]
    found = shutil.which(TRAY)
    return [found] if found else [sys.executable, "-m", "gui.launch"]


# --- Linux: XDG autostart ------------------------------------------------------------

_DESKTOP_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


def desktop_exec(argv: Sequence[str]) -> str:
    """``argv`` as a desktop entry's ``Exec`` value (Desktop Entry spec, "The Exec key")."""
    parts = []
    for arg in argv:
        if arg and not _DESKTOP_RESERVED & set(arg) and "%" not in arg:
            parts.append(arg)
            continue
        quoted = "".join("\\" + c if c in '"`$\\' else c for c in arg).replace("%", "%%")
        parts.append(f'"{quoted}"')
    # the desktop file format escapes backslashes once more in string values
    return " ".join(parts).replace("\\", "\\\\")


def desktop_entry(argv: Sequence[str], *, hidden: bool) -> str:
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=pacd tray\n"
        "Comment=Approve your AI agents' sensitive steps\n"
        f"Exec={desktop_exec(argv)}\n"
        "Icon=pacd\n"
        "Terminal=false\n"
        "NoDisplay=true\n"
        f"Hidden={'true' if hidden else 'false'}\n"
        f"X-GNOME-Autostart-enabled={'false' if hidden else 'true'}\n"
    )


def _xdg_config_home() -> Path:
    value = os.environ.get("XDG_CONFIG_HOME", "")
    return Path(value) if os.path.isabs(value) else Path.home() / ".config"


def _xdg_config_dirs() -> list[Path]:
    value = os.environ.get("XDG_CONFIG_DIRS", "") or "/etc/xdg"
    return [Path(d) for d in value.split(":") if os.path.isabs(d)]


def _user_entry() -> Path:
    return _xdg_config_home() / "autostart" / ENTRY_NAME


def _system_entry() -> Path | None:
    return next((d / "autostart" / ENTRY_NAME for d in _xdg_config_dirs()
                 if (d / "autostart" / ENTRY_NAME).is_file()), None)


def _entry_starts(path: Path) -> bool:
    """False when the entry is switched off (Hidden=true or GNOME's enabled=false)."""
    lines = {line.strip().replace(" ", "") for line in path.read_text().splitlines()}
    return not ({"Hidden=true", "X-GNOME-Autostart-enabled=false"} & lines)


def _linux_enabled() -> bool:
    user = _user_entry()
    if user.is_file():
        return _entry_starts(user)
    system = _system_entry()
    return system is not None and _entry_starts(system)


def _linux_set(on: bool) -> None:
    user = _user_entry()
    if not on and _system_entry() is None:
        with contextlib.suppress(FileNotFoundError):
            user.unlink()
        return
    user.parent.mkdir(parents=True, exist_ok=True)
    write_private(user, desktop_entry(tray_command(), hidden=not on).encode())


# --- Windows: HKCU Run -----------------------------------------------------------------

def run_value(argv: Sequence[str]) -> str:
    """The Run value: a Windows command line (each argument quoted as needed)."""
    return subprocess.list2cmdline(list(argv))


# winreg exists only on Windows (and mypy checks its use against win32 only)
if sys.platform == "win32":
    import winreg

    def _windows_enabled() -> bool:
        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as key:
                winreg.QueryValueEx(key, RUN_VALUE)
        except FileNotFoundError:
            return False
        return True

    def _windows_set(on: bool) -> None:
        with winreg.CreateKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as key:
            if on:
                winreg.SetValueEx(key, RUN_VALUE, 0, winreg.REG_SZ, run_value(tray_command()))
            else:
                with contextlib.suppress(FileNotFoundError):
                    winreg.DeleteValue(key, RUN_VALUE)


# --- the toggle ------------------------------------------------------------------------

def enabled() -> bool:
    """Does the tray start at this user's next login?"""
    if sys.platform == "win32":
        return _windows_enabled()
    if sys.platform == "darwin":
        return launchagent.plist_path(Path.home(), launchagent.TRAY_LABEL).is_file()
    return _linux_enabled()


def enable() -> None:
    if sys.platform == "win32":
        _windows_set(True)
    elif sys.platform == "darwin":
        launchagent.install(launchagent.tray_agent(tray_command()), Path.home())
    else:
        _linux_set(True)


def disable() -> None:
    if sys.platform == "win32":
        _windows_set(False)
    elif sys.platform == "darwin":
        launchagent.uninstall(launchagent.TRAY_LABEL, Path.home())
    else:
        _linux_set(False)
