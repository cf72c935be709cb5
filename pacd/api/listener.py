"""The owner socket on disk: a private directory, a 0600 socket, one daemon per socket.

Order matters for safety: the directory is created 0700 (or checked to be ours
and private) *before* bind, so there is no moment when another user could
reach the socket. A lock file next to the socket makes "one daemon per socket"
race-free; a socket file left behind by a dead daemon is probed and replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
from pathlib import Path

from pacd.errors import ConfigError, PacdError
from pacd.private_file import refuse_unless_ours


class AlreadyRunning(PacdError):
    code = "already_running"
    status = 409
    exit_code = 5


def ensure_private_dir(path: Path, what: str = "socket directory",
                       instead: str = "choose another PACD_SOCKET", *,
                       mode: int = 0o700) -> None:
    """Create ``path`` with ``mode``, or refuse it if it exists and is not ours or
    is open beyond ``mode`` — refused, never quietly chmodded: a directory
    someone else opened up may already have been used.

    ``what`` names the directory in messages, ``instead`` says what else to do.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=mode)
            os.chmod(path, mode)  # mkdir's mode is filtered by the umask
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what} {path} is not a directory (or is a symlink)")
    refuse_unless_ours(path, st, what, instead, open_bits=0o777 & ~mode, mode=mode)


def _probe(path: Path) -> bool:
    """True when something is accepting connections on ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # e.g. a full backlog: someone is there
    finally:
        probe.close()
    return True


class SocketLock:
    """An exclusive ``flock`` held for the daemon's lifetime."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(
                f"another pacd daemon is already running on {path.with_suffix('')}; "
                "stop it first (`systemctl --user stop pacd`) or set PACD_SOCKET"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class HomeLock:
    """An exclusive ``flock`` on ``daemon.lock`` in PACD_HOME, held for the daemon's life.

    The socket lock only keeps two daemons off one socket; two daemons with
    different sockets on one home would interleave writes to one audit chain
    and one state database. The file holds the holder's pid so the second
    daemon can name it; the lock itself (not the pid) is what decides.
    """

    def __init__(self, home: Path) -> None:
        self.path = home / "daemon.lock"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"another pacd daemon (pid {holder}) is already using PACD_HOME {home}; "
                "stop it first or set another PACD_HOME"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            # Emptied before unlocking: a pid left behind would name a dead process.
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = -1


def bind_owner_socket(path: Path, backlog: int = 128) -> tuple[socket.socket, SocketLock]:
    """Bind the owner socket at ``path``, returning it and the lock that guards it."""
    ensure_private_dir(path.parent)
    lock = SocketLock(path.with_name(path.name + ".lock"))
    try:
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise ConfigError(
                    f"{path} exists and is not a socket; remove it or set PACD_SOCKET"
                )
            if _probe(path):
                raise AlreadyRunning(
                    f"another process is already listening on {path}; stop it or set PACD_SOCKET"
                )
            os.unlink(path)  # stale: its daemon died without cleaning up
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        lock.release()
        raise
    return sock, lock


def check_activated_socket(sock: socket.socket) -> None:
    """An inherited socket must be a Unix stream socket that only we can reach."""
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise ConfigError("activated socket is not a Unix stream socket")
    name = sock.getsockname()
    if isinstance(name, str) and name and not name.startswith("\0"):
        st = os.stat(name)
        if st.st_mode & 0o077:
            raise ConfigError(
                f"activated socket {name} has mode {stat.S_IMODE(st.st_mode):04o}; "
                "set SocketMode=0600 in the socket unit"
            )
    sock.setblocking(False)
