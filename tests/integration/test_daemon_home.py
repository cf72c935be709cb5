"""The daemon's home: refused unless private, and what it creates there is private."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

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
