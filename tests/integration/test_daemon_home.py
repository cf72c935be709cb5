"""The daemon's home: refused unless private, and what it creates there is private."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from pacd.api.listener import AlreadyRunning
from pacd.errors import ConfigError
from tests.integration.harness import DaemonProcess


def test_a_home_others_can_enter_is_refused_with_the_fix(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon(start=False)
    d.home.mkdir()
    os.chmod(d.home, 0o755)
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) == ConfigError.exit_code, d.log()
    assert f"chmod 700 {d.home}" in d.log()
    assert not (d.home / "state.sqlite3").exists()
    # Made private, the same home is accepted.
    os.chmod(d.home, 0o700)
    d.start()
    assert d.client().status()["version"]


def test_state_database_files_are_private_whatever_the_callers_umask(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    old = os.umask(0o022)  # inherited by the daemon process
    try:
        d = make_daemon()
    finally:
        os.umask(old)
    d.client().status()
    assert stat.S_IMODE(d.home.stat().st_mode) == 0o700
    # The state database and its WAL files, the audit log's: every file the daemon made.
    made = sorted(p for p in d.home.iterdir() if p.is_file())
    assert {"state.sqlite3", "state.sqlite3-wal", "audit.sqlite3"} <= {p.name for p in made}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in made} == {
        p.name: 0o600 for p in made}


def test_a_second_daemon_on_the_same_home_exits_5_naming_the_holder(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    first = make_daemon("first")
    assert first.proc is not None
    # Another socket, the same home: only the home lock can turn it away.
    second = make_daemon("second", env={"PACD_HOME": str(first.home)}, start=False)
    assert second.socket != first.socket
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(30) == AlreadyRunning.exit_code == 5, second.log()
    assert f"pid {first.proc.pid}" in second.log()
    assert (first.home / "daemon.lock").read_text().strip() == str(first.proc.pid)
    # The first daemon was never disturbed: it serves and its audit chain verifies.
    first.client().status()
    assert first.client().request("POST", "/v1/audit/verify")["ok"] is True
    # Once the first stops, the home is free for the second.
    assert first.stop() == 0
    second.start()
    assert second.proc is not None
    assert (first.home / "daemon.lock").read_text().strip() == str(second.proc.pid)
    assert second.client().request("POST", "/v1/audit/verify")["ok"] is True
