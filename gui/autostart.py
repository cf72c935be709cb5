"""Start at login, on Linux: the XDG autostart entry (autostart/pacd-tray.desktop).

(The macOS LaunchAgent and the Windows ``HKCU\\...\\Run`` value belong next to
this one; only the XDG backend exists so far.)
"""

from __future__ import annotations

import os
from pathlib import Path

ENTRY = """[Desktop Entry]
Type=Application
Name=pacd tray
Comment=Approve pacd requests with your security key
Exec=pacd-tray
Icon=pacd
X-GNOME-Autostart-enabled=true
"""


def entry_path(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", str(Path.home()))) / ".config")
    return Path(base) / "autostart" / "pacd-tray.desktop"


def enabled(env: dict[str, str] | None = None) -> bool:
    return entry_path(env).is_file()


def set_enabled(on: bool, env: dict[str, str] | None = None) -> None:
    path = entry_path(env)
    if on:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(ENTRY, encoding="utf-8")
    else:
        path.unlink(missing_ok=True)
