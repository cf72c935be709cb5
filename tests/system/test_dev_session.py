"""``scripts/dev-session`` leaves no temporary HOME behind and passes on the
command's exit status (``make test`` and CI run the suite through it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_system

pytestmark = pytest.mark.system

DEV_SESSION = Path(__file__).resolve().parents[2] / "scripts" / "dev-session"


def test_dev_session_removes_the_home_it_made(tmp_path: Path) -> None:
    if shutil.which("dbus-run-session") is None or shutil.which("gnome-keyring-daemon") is None:
        require_system("dbus-run-session and gnome-keyring-daemon")
    # A session of its own, not a second keyring on this run's bus.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PACD_IN_DEV_SESSION", "PACD_DEV_HOME")}
    seen = tmp_path / "home"
    out = subprocess.run([str(DEV_SESSION), "sh", "-c",
                          f'echo "$HOME" > {seen}; mkdir "$HOME/made"; exit 7'],
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 7, out.stderr
    home = Path(seen.read_text().strip())
    assert home.is_absolute() and home != Path(os.environ["HOME"])
    assert not home.exists()


def test_dev_session_keeps_a_given_home(tmp_path: Path) -> None:
    if shutil.which("dbus-run-session") is None or shutil.which("gnome-keyring-daemon") is None:
        require_system("dbus-run-session and gnome-keyring-daemon")
    kept = tmp_path / "dev-home"
    env = {**{k: v for k, v in os.environ.items() if k != "PACD_IN_DEV_SESSION"},
           "PACD_DEV_HOME": str(kept)}
    out = subprocess.run([str(DEV_SESSION), "sh", "-c", 'touch "$HOME/kept"'], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert (kept / "kept").exists()
