"""The daemon's Windows start-path seams for real: only a Windows machine runs these
(the Windows job of .github/workflows/package.yml does); elsewhere they are skipped,
and tests/unit/test_windows_start_seams.py and test_windows_acl.py cover what runs
anywhere with stand-ins and byte vectors.

They show what no stand-in can: ``msvcrt.locking`` refusing a second daemon on one
PACD_HOME while the holder's pid stays readable, ``GetNamedSecurityInfoW`` naming
this user as the owner of what pacd creates, a grant to Everyone refused, and
Ctrl+C (SIGINT) reaching the proactor loop.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pacd.api.listener import ensure_private_dir
from pacd.errors import ConfigError
from pacd.home_lock import AlreadyRunning, HomeLock
from pacd.named_pipe import current_user_sid
from pacd.private_file import check_private_config
from pacd.stop_signals import on_stop_signals
from pacd.windows_acl import file_security

pytestmark = pytest.mark.skipif(sys.platform != "win32",
                                reason="msvcrt, DACLs and the proactor exist only on Windows")

ROOT = Path(__file__).resolve().parents[2]
_HOLDER = """
import sys
from pathlib import Path
from pacd.home_lock import HomeLock
lock = HomeLock(Path(sys.argv[1]))
print("held", flush=True)
sys.stdin.read()
lock.release()
"""


def test_a_second_daemon_on_one_home_is_refused_naming_the_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(AlreadyRunning) as refused:
            HomeLock(tmp_path)
        assert f"pid {holder.pid}" in refused.value.message
        assert (tmp_path / "daemon.lock").read_text().strip() == str(holder.pid)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(30) == 0
    HomeLock(tmp_path).release()  # the holder's exit let it go


def test_what_pacd_creates_is_owned_by_this_user_and_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ensure_private_dir(home, "PACD_HOME", "choose another PACD_HOME")
    assert file_security(home).owner == current_user_sid()
    config = home / "config.toml"
    config.write_text("")
    check_private_config(config)


def test_a_config_file_everyone_may_write_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    subprocess.run(["icacls", str(config), "/grant", "*S-1-1-0:(W)"], check=True,
                   capture_output=True)
    with pytest.raises(ConfigError) as refused:
        check_private_config(config)
    assert "S-1-1-0" in refused.value.message


def test_ctrl_c_reaches_the_proactor_loop() -> None:
    async def main() -> bool:
        stop = asyncio.Event()
        undo = on_stop_signals(asyncio.get_running_loop(), stop.set)
        try:
            signal.raise_signal(signal.SIGINT)
            await asyncio.wait_for(stop.wait(), 10)
            return stop.is_set()
        finally:
            undo()

    assert asyncio.run(main()) is True
