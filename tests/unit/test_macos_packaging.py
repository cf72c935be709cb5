"""macOS parts checked on any machine: the app's Info.plist, the LaunchAgents pacd
writes (plistlib round-trip and their keys), the refusal to touch launchd off
macOS, and the ``LOCAL_PEERCRED`` answer parsed from packed ``struct xucred`` bytes.

What only a Mac shows (launchctl bootstrap, launchd handing over the socket,
codesign/notarization in packaging/macos/build-app) is not run here.
"""

from __future__ import annotations

import plistlib
import stat
import struct
import subprocess
import sys
from collections.abc import Sequence
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


# --- the app's first start: the daemon agent written and loaded, once ---------------


class FakeLaunchd:
    """Stands in for launchctl at the runner boundary: records each command and keeps
    which labels are loaded; ``bootstrap`` reads the plist as launchd would."""

    def __init__(self, loaded: set[str] | None = None, fail_bootstrap: str = "") -> None:
        self.loaded = set(loaded or ())
        self.commands: list[list[str]] = []
        self.fail_bootstrap = fail_bootstrap

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.commands.append(argv)
        assert argv[0] == "/bin/launchctl"
        verb = argv[1]
        rc, err = 0, ""
        if verb == "print":
            rc = 0 if argv[2].rsplit("/", 1)[1] in self.loaded else 113
        elif verb == "bootout":
            label = argv[2].rsplit("/", 1)[1]
            rc = 0 if label in self.loaded else 3
            self.loaded.discard(label)
        elif verb == "bootstrap":
            if self.fail_bootstrap:
                rc, err = 5, self.fail_bootstrap
            else:
                agent = plistlib.loads(Path(argv[3]).read_bytes())
                self.loaded.add(agent["Label"])
        else:
            raise AssertionError(f"unexpected launchctl {argv}")
        return subprocess.CompletedProcess(argv, rc, "", err)


APP_PACD = "/Applications/pacd.app/Contents/MacOS/pacd/pacd"


def test_the_first_start_writes_the_daemon_agent_0600_and_bootstraps_it_in_the_gui_domain(
        tmp_path: Path) -> None:
    launchd = FakeLaunchd()
    sock = tmp_path / "run" / "pacd.sock"
    assert launchagent.first_start(tmp_path, sock, 501, [APP_PACD], launchd) is True
    path = tmp_path / "Library" / "LaunchAgents" / "org.pacd.daemon.plist"
    assert launchd.commands == [
        ["/bin/launchctl", "print", "gui/501/org.pacd.daemon"],
        ["/bin/launchctl", "bootstrap", "gui/501", str(path)],
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    written = plistlib.loads(path.read_bytes())
    assert plistlib.loads(plistlib.dumps(written)) == written
    assert written == launchagent.daemon_agent([APP_PACD], sock,
                                               tmp_path / "Library" / "Logs" / "pacd")
    assert written["ProgramArguments"] == [APP_PACD, "daemon"]
    assert written["Sockets"]["Listeners"]["SockPathMode"] == 384
    assert launchd.loaded == {"org.pacd.daemon"}


def test_a_later_start_with_the_agent_loaded_writes_and_runs_nothing_more(
        tmp_path: Path) -> None:
    launchd = FakeLaunchd()
    sock = tmp_path / "run" / "pacd.sock"
    launchagent.first_start(tmp_path, sock, 501, [APP_PACD], launchd)
    path = launchagent.plist_path(tmp_path, launchagent.DAEMON_LABEL)
    before = path.stat()
    launchd.commands.clear()
    assert launchagent.first_start(tmp_path, sock, 501, [APP_PACD], launchd) is False
    assert launchd.commands == [["/bin/launchctl", "print", "gui/501/org.pacd.daemon"]]
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_moved_app_rewrites_the_agent_and_reloads_it(tmp_path: Path) -> None:
    launchd = FakeLaunchd()
    sock = tmp_path / "run" / "pacd.sock"
    launchagent.first_start(tmp_path, sock, 501, [APP_PACD], launchd)
    launchd.commands.clear()
    moved = "/Users/alice/Applications/pacd.app/Contents/MacOS/pacd/pacd"
    assert launchagent.first_start(tmp_path, sock, 501, [moved], launchd) is True
    path = launchagent.plist_path(tmp_path, launchagent.DAEMON_LABEL)
    assert launchd.commands == [
        ["/bin/launchctl", "print", "gui/501/org.pacd.daemon"],
        ["/bin/launchctl", "bootout", "gui/501/org.pacd.daemon"],
        ["/bin/launchctl", "bootstrap", "gui/501", str(path)],
    ]
    assert plistlib.loads(path.read_bytes())["ProgramArguments"] == [moved, "daemon"]


def test_an_agent_written_but_not_loaded_is_bootstrapped_without_rewriting(
        tmp_path: Path) -> None:
    launchd = FakeLaunchd()
    sock = tmp_path / "run" / "pacd.sock"
    launchagent.first_start(tmp_path, sock, 501, [APP_PACD], launchd)
    path = launchagent.plist_path(tmp_path, launchagent.DAEMON_LABEL)
    inode = path.stat().st_ino
    launchd.loaded.clear()  # e.g. booted out by hand
    launchd.commands.clear()
    assert launchagent.first_start(tmp_path, sock, 501, [APP_PACD], launchd) is True
    assert [c[1] for c in launchd.commands] == ["print", "bootstrap"]
    assert path.stat().st_ino == inode


def test_a_failed_bootstrap_is_an_error_naming_launchds_reason(tmp_path: Path) -> None:
    launchd = FakeLaunchd(fail_bootstrap="Bootstrap failed: 5: Input/output error")
    with pytest.raises(ConfigError, match="Input/output error"):
        launchagent.first_start(tmp_path, tmp_path / "s.sock", 501, [APP_PACD], launchd)
    assert launchd.loaded == set()


def test_the_app_runs_the_daemon_bundle_beside_its_own_executable() -> None:
    exe = "/Applications/pacd.app/Contents/MacOS/pacd-tray"
    assert launchagent.daemon_command(exe, frozen=True) == [APP_PACD]
    assert launchagent.daemon_command("/usr/bin/python3", frozen=False) == [
        "/usr/bin/python3", "-m", "pacd"]


def test_the_app_bundle_starts_through_the_launch_agent_entry_on_macos() -> None:
    spec = (ROOT / "packaging" / "freeze" / "pacd-tray.spec").read_text()
    assert '"packaging" / "macos" / "app_main.py" if sys.platform == "darwin"' in spec
    entry = (ROOT / "packaging" / "macos" / "app_main.py").read_text()
    assert "launchagent.first_start(" in entry and "from gui.launch import main" in entry
