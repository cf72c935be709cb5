"""The tray's "Start at login": the Linux (XDG autostart) backend on this machine, in a
private XDG_CONFIG_HOME and XDG_CONFIG_DIRS; the Windows Run value's command line as
a pure function (the registry itself only on Windows, see README)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from pacd import autostart

ROOT = Path(__file__).resolve().parents[2]
PACKAGED_ENTRY = ROOT / "packaging" / "linux" / "pacd-tray-autostart.desktop"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the XDG autostart backend")


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    home, dirs = tmp_path / "config", tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(dirs))
    return home / "autostart" / autostart.ENTRY_NAME, dirs / "autostart" / autostart.ENTRY_NAME


def _value(entry: Path, key: str) -> str:
    return next(line.split("=", 1)[1] for line in entry.read_text().splitlines()
                if line.startswith(key + "="))


def test_without_any_entry_the_tray_does_not_start_and_enabling_writes_a_user_entry(
        xdg: tuple[Path, Path]) -> None:
    user, _system = xdg
    assert autostart.enabled() is False
    autostart.enable()
    assert autostart.enabled() is True
    assert _value(user, "Hidden") == "false"
    assert shlex.split(_value(user, "Exec")) == autostart.tray_command()
    assert user.stat().st_mode & 0o077 == 0  # another user cannot change what starts
    autostart.disable()
    assert autostart.enabled() is False
    assert not user.exists()


def test_switching_off_the_packaged_system_entry_hides_it_for_this_user_only(
        xdg: tuple[Path, Path]) -> None:
    user, system = xdg
    system.parent.mkdir(parents=True)
    system.write_bytes(PACKAGED_ENTRY.read_bytes())
    assert autostart.enabled() is True  # what the .deb installs starts the tray
    autostart.disable()
    assert autostart.enabled() is False
    assert _value(user, "Hidden") == "true"
    assert system.read_bytes() == PACKAGED_ENTRY.read_bytes()
    autostart.enable()
    assert autostart.enabled() is True
    assert _value(user, "Hidden") == "false"


def test_a_user_entry_switched_off_the_gnome_way_counts_as_off(xdg: tuple[Path, Path]) -> None:
    user, _system = xdg
    user.parent.mkdir(parents=True)
    user.write_text("[Desktop Entry]\nType=Application\nExec=pacd-tray\n"
                    "X-GNOME-Autostart-enabled=false\n")
    assert autostart.enabled() is False


def test_a_tray_path_with_spaces_quotes_or_dollars_survives_the_exec_line() -> None:
    assert autostart.desktop_exec(["/usr/bin/pacd-tray"]) == "/usr/bin/pacd-tray"
    assert shlex.split(autostart.desktop_exec(["/opt/my apps/pacd-tray"])) == [
        "/opt/my apps/pacd-tray"]
    # the spec's quoting (backslash before " ` $ \\ inside quotes, %% for %), then the
    # desktop file's own string escaping doubles every backslash
    assert autostart.desktop_exec(['say "hi"', "$HOME", "100%"]) == (
        '"say \\\\"hi\\\\"" "\\\\$HOME" "100%%"')


def test_the_windows_run_value_quotes_a_path_with_spaces() -> None:
    exe = r"C:\Users\Ann Lee\AppData\Local\Programs\pacd\pacd-tray\pacd-tray.exe"
    assert autostart.run_value([exe]) == f'"{exe}"'
    assert autostart.run_value([r"C:\pacd\pacd-tray.exe"]) == r"C:\pacd\pacd-tray.exe"
    # the installer writes the value this module reads and removes
    nsi = (ROOT / "packaging" / "windows" / "pacd.nsi").read_text()
    assert f'!define RUN_KEY "{autostart.RUN_KEY}"' in nsi
    assert f'!define RUN_VALUE "{autostart.RUN_VALUE}"' in nsi
