"""Start at login on Linux (and other XDG desktops): the XDG autostart entry.

``$XDG_CONFIG_HOME/autostart/pacd-tray.desktop``. The .deb installs a
system-wide entry in ``/etc/xdg/autostart``; a user turns it off with a user
entry of the same name saying ``Hidden=true`` (the XDG autostart spec), and on
with one that does not.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from pacd.autostart.command import tray_command
from pacd.private_file import write_private

ENTRY_NAME = "pacd-tray.desktop"




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


class XdgAutostart:
    def enabled(self) -> bool:
        return _linux_enabled()

    def enable(self) -> None:
        _linux_set(True)

    def disable(self) -> None:
        _linux_set(False)
