"""macOS parts checked on any machine: the app's Info.plist, the LaunchAgents pacd
writes (plistlib round-trip and their keys), the refusal to touch launchd off
macOS, and the ``LOCAL_PEERCRED`` answer parsed from packed ``struct xucred`` bytes.

What only a Mac shows (launchctl bootstrap, launchd handing over the socket,
codesign/notarization in packaging/macos/build-app) is not run here.
"""

from __future__ import annotations

import plistlib
import struct
import sys
from pathlib import Path

import pytest

from pacd import __version__, launchagent
from pacd.api.activation import launchd_socket
from pacd.api.peercred import XUCRED_VERSION, PeerCred, parse_xucred
from pacd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
INFO_PLIST = ROOT / "packaging" / "macos" / "Info.plist"


def test_the_app_is_a_menu_bar_agent_without_a_dock_icon() -> None:
    raw = INFO_PLIST.read_bytes()
    info = plistlib.loads(raw)
    assert plistlib.loads(plistlib.dumps(info)) == info
    assert info["LSUIElement"] is True
    assert info["CFBundleExecutable"] == "pacd-tray"
    assert info["CFBundleIdentifier"] == "org.pacd.Pacd"
    assert info["CFBundlePackageType"] == "APPL"
    assert info["CFBundleShortVersionString"] == __version__ == info["CFBundleVersion"]


def test_the_daemon_agent_has_launchd_hold_a_0600_socket_at_the_configured_path(
        tmp_path: Path) -> None:
    sock = tmp_path / "run" / "pacd.sock"
    agent = launchagent.daemon_agent(["/Applications/pacd.app/Contents/MacOS/pacd/pacd"],
                                     sock, tmp_path / "logs")
    loaded = plistlib.loads(launchagent.plist_bytes(agent))
    assert loaded == agent
    assert loaded["Label"] == launchagent.DAEMON_LABEL
    assert loaded["ProgramArguments"] == ["/Applications/pacd.app/Contents/MacOS/pacd/pacd",
                                          "daemon"]
    listener = loaded["Sockets"][launchagent.LAUNCHD_SOCKET_NAME]
    assert listener["SockPathName"] == str(sock)
    assert listener["SockPathMode"] == 384  # 0600, as launchd wants it: decimal
    assert listener["SockFamily"] == "Unix" and listener["SockType"] == "stream"
    assert loaded["EnvironmentVariables"]["PACD_SOCKET"] == str(sock)
    # it starts on demand, not at load
    assert "RunAtLoad" not in loaded and "KeepAlive" not in loaded


def test_the_daemon_agent_refuses_a_relative_socket_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="absolute"):
        launchagent.daemon_agent(["pacd"], Path("run/pacd.sock"), tmp_path)


def test_the_tray_agent_starts_the_tray_at_login_in_the_gui_session() -> None:
    agent = launchagent.tray_agent(["/Applications/pacd.app/Contents/MacOS/pacd-tray"])
    loaded = plistlib.loads(launchagent.plist_bytes(agent))
    assert loaded == agent
    assert loaded["Label"] == launchagent.TRAY_LABEL
    assert loaded["RunAtLoad"] is True
    assert loaded["LimitLoadToSessionType"] == "Aqua"


@pytest.mark.skipif(sys.platform == "darwin", reason="the refusal off macOS")
def test_loading_a_launch_agent_off_macos_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    agent = launchagent.tray_agent(["pacd-tray"])
    with pytest.raises(ConfigError, match="only on macOS"):
        launchagent.install(agent, tmp_path)
    with pytest.raises(ConfigError, match="only on macOS"):
        launchagent.uninstall(launchagent.TRAY_LABEL, tmp_path)
    assert list(tmp_path.iterdir()) == []
    # and the daemon does not ask launchd for a socket: it binds its own
    assert launchd_socket() is None


def _xucred(version: int, uid: int, groups: list[int]) -> bytes:
    padded = [*groups, *[0] * (16 - len(groups))]
    return struct.pack("=IIh16I", version, uid, len(groups), *padded)


def test_a_version_0_xucred_gives_the_peer_uid() -> None:
    assert XUCRED_VERSION == 0
    assert parse_xucred(_xucred(0, 501, [20, 12])) == PeerCred(uid=501, pid=None, gid=None)


def test_an_xucred_of_another_version_is_refused_even_with_our_uid_in_place() -> None:
    assert parse_xucred(_xucred(1, 501, [20])) is None


def test_a_short_xucred_is_refused() -> None:
    whole = _xucred(0, 501, [20])
    assert parse_xucred(whole[:9]) is None
    assert parse_xucred(b"") is None


def test_an_xucred_claiming_more_groups_than_it_can_hold_is_refused() -> None:
    raw = bytearray(_xucred(0, 501, []))
    struct.pack_into("=h", raw, 8, 17)
    assert parse_xucred(bytes(raw)) is None
    struct.pack_into("=h", raw, 8, -1)
    assert parse_xucred(bytes(raw)) is None
