"""What kept the daemon off Windows outside its transport, each behind a seam chosen by
platform: the PACD_HOME lock (flock / msvcrt), the open-file limit (resource),
the stop signals (add_signal_handler / signal.signal), and no POSIX-only module
imported on the daemon's or the CLI's start path.

The Windows branches run here where Python lets them: the platform is passed in,
``msvcrt.locking`` is stood in for by POSIX byte-range locks held by a second
process, and signals are raised with ``signal.raise_signal``. What only Windows
shows — that msvcrt's mandatory lock refuses a second daemon and leaves the pid
readable, that Ctrl+C/Ctrl+Break reach the proactor loop — is listed in the
README's "what has been run where".
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pacd.api.peercred import VERIFIED_PEER, PeerCred, client_label
from pacd.home_lock import (
    AlreadyRunning,
    FlockBackend,
    HomeLock,
    MsvcrtBackend,
    backend_for,
)
from pacd.open_files import raise_open_file_limit
from pacd.stop_signals import on_stop_signals

ROOT = Path(__file__).resolve().parents[2]
POSIX_ONLY = ("fcntl", "resource", "pwd", "grp", "termios")

_BLOCKED_IMPORT = """
import importlib.abc, json, sys
BLOCKED = set(sys.argv[1].split(","))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED:
            raise ImportError(f"{name} does not exist on Windows")
        return None
assert not BLOCKED & set(sys.modules), sorted(BLOCKED & set(sys.modules))
sys.meta_path.insert(0, Blocker())
try:
    import fcntl  # the blocker must bite, or this test proves nothing
    bites = False
except ImportError:
    bites = True
import pacd.daemon, pacd.cli
from pacd.open_files import raise_open_file_limit
print(json.dumps({"bites": bites, "loaded": sorted(sys.modules),
                  "limit": raise_open_file_limit("win32")}))
"""


def test_daemon_and_cli_import_with_no_posix_only_module_on_their_start_path() -> None:
    out = subprocess.run([sys.executable, "-c", _BLOCKED_IMPORT, ",".join(POSIX_ONLY)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["bites"] is True
    assert {"pacd.daemon", "pacd.cli", "pacd.home_lock", "pacd.stop_signals"} <= set(
        result["loaded"])
    assert not set(POSIX_ONLY) & set(result["loaded"])
    assert result["limit"] is None


def test_each_platform_gets_its_own_lock() -> None:
    assert isinstance(backend_for("linux"), FlockBackend)
    assert isinstance(backend_for("darwin"), FlockBackend)
    with pytest.raises(ImportError):  # the real msvcrt: chosen, and absent here
        backend_for("win32")


# --- msvcrt.locking stood in for by POSIX byte-range locks (another process holds) --

LK_NBLCK, LK_UNLCK = 2, 0  # msvcrt's values
CALLS: list[tuple[int, int, int]] = []


def lockf_locking(fd: int, mode: int, nbytes: int) -> None:
    """``msvcrt.locking``'s contract: ``nbytes`` from the current position; a refused
    LK_NBLCK raises OSError(EACCES)."""
    position = os.lseek(fd, 0, os.SEEK_CUR)
    CALLS.append((mode, position, nbytes))
    if mode == LK_UNLCK:
        fcntl.lockf(fd, fcntl.LOCK_UN, nbytes, position, os.SEEK_SET)
        return
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, nbytes, position, os.SEEK_SET)
    except OSError as exc:
        raise OSError(errno.EACCES, "Permission denied") from exc


def msvcrt_standin() -> MsvcrtBackend:
    return MsvcrtBackend(lockf_locking, LK_NBLCK, LK_UNLCK)


_HOLDER = """
import sys
from pathlib import Path
from tests.unit.test_windows_start_seams import msvcrt_standin
from pacd.home_lock import HomeLock
lock = HomeLock(Path(sys.argv[1]), backend=msvcrt_standin())
print("held", flush=True)
sys.stdin.read()
lock.release()
"""


def test_a_second_daemon_on_a_windows_style_lock_exits_5_naming_the_holder(
        tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(AlreadyRunning) as refused:
            HomeLock(tmp_path, backend=msvcrt_standin())
        assert refused.value.exit_code == 5
        assert f"pid {holder.pid}" in refused.value.message
        # the lock is on one byte past the 32 the pid is read from: on Windows a
        # locked byte cannot be read by another process, so the pid must not be one
        mode, position, nbytes = CALLS[-1]
        assert (mode, nbytes) == (LK_NBLCK, 1) and position >= 32
        assert (tmp_path / "daemon.lock").read_text() == f"{holder.pid}\n"
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(30) == 0
    lock = HomeLock(tmp_path, backend=msvcrt_standin())  # released: ours now
    assert (tmp_path / "daemon.lock").read_text() == f"{os.getpid()}\n"
    lock.release()
    assert CALLS[-1] == (LK_UNLCK, MsvcrtBackend.OFFSET, 1)
    assert (tmp_path / "daemon.lock").read_text() == ""


def test_a_lock_failure_other_than_held_is_not_taken_for_a_running_daemon(
        tmp_path: Path) -> None:
    def broken(fd: int, mode: int, nbytes: int) -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError) as failed:
        HomeLock(tmp_path, backend=MsvcrtBackend(broken, LK_NBLCK, LK_UNLCK))
    assert failed.value.errno == errno.EBADF


# --- open-file limit -------------------------------------------------------------


def test_the_open_file_limit_is_lifted_on_posix_and_left_alone_on_windows() -> None:
    import resource

    assert raise_open_file_limit("win32") is None
    lifted = raise_open_file_limit("linux")
    assert lifted == resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- stop signals ----------------------------------------------------------------


@pytest.mark.parametrize("platform", ["linux", "win32"])
def test_sigint_asks_the_daemon_to_stop_on_each_platforms_loop(platform: str) -> None:
    before = signal.getsignal(signal.SIGINT)

    async def main() -> bool:
        stop = asyncio.Event()
        undo = on_stop_signals(asyncio.get_running_loop(), stop.set, platform)
        try:
            signal.raise_signal(signal.SIGINT)
            await asyncio.wait_for(stop.wait(), 10)
            return stop.is_set()
        finally:
            undo()

    assert asyncio.run(main()) is True
    assert signal.getsignal(signal.SIGINT) is before  # left as found


def test_the_windows_branch_only_schedules_stop_on_the_loop() -> None:
    """A Python signal handler may interrupt the loop mid-callback: stop must run as a
    callback of its own, not inside the handler."""
    ran_in_handler: list[bool] = []

    async def main() -> None:
        stop = asyncio.Event()
        in_handler = [True]

        def record() -> None:
            ran_in_handler.append(in_handler[0])
            stop.set()

        undo = on_stop_signals(asyncio.get_running_loop(), record, "win32")
        try:
            signal.raise_signal(signal.SIGINT)
            in_handler[0] = False  # the handler has returned by now
            await asyncio.wait_for(stop.wait(), 10)
        finally:
            undo()

    asyncio.run(main())
    assert ran_in_handler == [False]


# --- who began a session ceremony ----------------------------------------------------


class _PipeTransport:
    """What the owner pipe's transport answers: no socket, the peer the pipe verified."""

    def __init__(self, peer: PeerCred | None) -> None:
        self._extra: dict[str, object] = {VERIFIED_PEER: peer}

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._extra.get(name, default)


class _SocketTransport:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._sock if name == "socket" else default


def test_the_ceremonys_client_is_named_on_the_pipe_as_on_the_socket() -> None:
    assert client_label(_PipeTransport(PeerCred(uid=1001, pid=4242, gid=None))) == "pid:4242"
    assert client_label(_PipeTransport(None)) == ""
    assert client_label(None) == ""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        assert client_label(_SocketTransport(ours)) == f"pid:{os.getpid()}"
