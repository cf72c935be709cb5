"""``scripts/dev-session`` leaves no temporary HOME and no keychain process
behind and passes on the command's exit status (``make test`` and CI run the
suite through it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require_system
from tests.host_guard import processes_with_env

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
DEV_SESSION = REPO / "scripts" / "dev-session"

# Run inside a session: the keyring processes on its bus, found the way the test
# below looks for leftovers.
LIST_KEYRINGS = ("import os; from tests.host_guard import processes_with_env; "
                 "print(sorted(processes_with_env("
                 "'DBUS_SESSION_BUS_ADDRESS=' + os.environ['DBUS_SESSION_BUS_ADDRESS']).values()))")


def _session_env(**extra: str) -> dict[str, str]:
    # A session of its own, not a second keyring on this run's bus.
    return {**{k: v for k, v in os.environ.items()
               if k not in ("PACD_IN_DEV_SESSION", "PACD_DEV_HOME")}, **extra}


def test_dev_session_removes_the_home_it_made(tmp_path: Path) -> None:
    if shutil.which("dbus-run-session") is None or shutil.which("gnome-keyring-daemon") is None:
        require_system("dbus-run-session and gnome-keyring-daemon")
    env = _session_env()
    seen = tmp_path / "home"
    out = subprocess.run([str(DEV_SESSION), "sh", "-c",
                          f'echo "$HOME" > {seen}; mkdir "$HOME/made"; exit 7'],
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 7, out.stderr
    home = Path(seen.read_text().strip())
    assert home.is_absolute() and home != Path(os.environ["HOME"])
    assert not home.exists()


def test_the_keyring_runs_on_the_sessions_bus(tmp_path: Path) -> None:
    # The positive control for the test below: inside a session, the search by
    # bus address does find the session's gnome-keyring-daemon.
    if shutil.which("dbus-run-session") is None or shutil.which("gnome-keyring-daemon") is None:
        require_system("dbus-run-session and gnome-keyring-daemon")
    out = subprocess.run([str(DEV_SESSION), sys.executable, "-c", LIST_KEYRINGS],
                         env=_session_env(PACD_DEV_HOME=str(tmp_path / "home")), cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "gnome-keyring-daemon --unlock --components=secrets" in out.stdout


def test_dev_session_keeps_a_given_home_and_stops_its_keyring(tmp_path: Path) -> None:
    # gnome-keyring-daemon forks away and outlived 2 of 6 short sessions before
    # the session stopped it; four sessions make a lucky pass unlikely (< 2 %).
    if shutil.which("dbus-run-session") is None or shutil.which("gnome-keyring-daemon") is None:
        require_system("dbus-run-session and gnome-keyring-daemon")
    kept = tmp_path / "dev-home"
    for run in range(4):
        seen = tmp_path / f"bus-{run}"
        out = subprocess.run([str(DEV_SESSION), "sh", "-c",
                              f'touch "$HOME/kept"; echo "$DBUS_SESSION_BUS_ADDRESS" > {seen}'],
                             env=_session_env(PACD_DEV_HOME=str(kept)),
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        assert (kept / "kept").exists()
        bus = f"DBUS_SESSION_BUS_ADDRESS={seen.read_text().strip()}"
        deadline = time.monotonic() + 5
        while (left := processes_with_env(bus)) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the process table for an exit
        assert left == {}, f"session {run} left {left}"
