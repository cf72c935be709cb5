"""Start at login on Windows: the value ``pacd`` under ``HKCU\\...\\CurrentVersion\\Run``.

The same value packaging/windows/pacd.nsi writes at install and removes at
uninstall. The registry is reached through :class:`RunKey`, so the backend's
logic runs anywhere with a stand-in; :class:`WinregRunKey` is the real one.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Sequence
from typing import Protocol

from pacd.autostart.command import tray_command

RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
RUN_VALUE = "pacd"


def run_value(argv: Sequence[str]) -> str:
    """The Run value: a Windows command line (each argument quoted as needed)."""
    return subprocess.list2cmdline(list(argv))


class RunKey(Protocol):
    """String values of ``HKCU\\<RUN_KEY>``."""

    def get(self, name: str) -> str | None: ...
    def set(self, name: str, value: str) -> None: ...
    def delete(self, name: str) -> None: ...


class RunKeyAutostart:
    def __init__(self, key: RunKey | None = None) -> None:
        self.key = key if key is not None else WinregRunKey()

    def enabled(self) -> bool:
        return self.key.get(RUN_VALUE) is not None

    def enable(self) -> None:
        self.key.set(RUN_VALUE, run_value(tray_command()))

    def disable(self) -> None:
        self.key.delete(RUN_VALUE)


class WinregRunKey:
    """The current user's Run key through winreg (Windows only)."""

    def get(self, name: str) -> str | None:
        if sys.platform != "win32":
            raise OSError("the registry exists only on Windows")
        import winreg

        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as key:
                value, _kind = winreg.QueryValueEx(key, name)
        except FileNotFoundError:
            return None
        return str(value)

    def set(self, name: str, value: str) -> None:
        if sys.platform != "win32":
            raise OSError("the registry exists only on Windows")
        import winreg

        with winreg.CreateKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as key:
            winreg.SetValueEx(key, name, 0, winreg.REG_SZ, value)

    def delete(self, name: str) -> None:
        if sys.platform != "win32":
            raise OSError("the registry exists only on Windows")
        import winreg

        with winreg.CreateKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as key, \
                contextlib.suppress(FileNotFoundError):
            winreg.DeleteValue(key, name)
