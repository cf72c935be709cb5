"""How to start the installed tray: the command every start-at-login backend registers."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

TRAY = "pacd-tray"


def tray_command() -> list[str]:
    """The frozen bundle's tray, the one on PATH, or this interpreter's module."""
    if getattr(sys, "frozen", False):
        name = TRAY + (".exe" if sys.platform == "win32" else "")
        here = Path(sys.executable).resolve().parent
        # beside us (the tray's own bundle, the macOS app) or the tray bundle beside ours
        for candidate in (here / name, here.parent / TRAY / name):
            if candidate.is_file():
                return [str(candidate)]
    found = shutil.which(TRAY)
    return [found] if found else [sys.executable, "-m", "gui.launch"]
