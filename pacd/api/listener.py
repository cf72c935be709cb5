"""The owner socket on disk: a private directory, a 0600 socket, one daemon per socket.

Order matters for safety: the directory is created 0700 (or checked to be ours
and private) *before* bind, so there is no moment when another user could
reach the socket. A lock file next to the socket makes "one daemon per socket"
race-free; a socket file left behind by a dead daemon is probed and replaced.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

from pacd.errors import ConfigError
from pacd.home_lock import AlreadyRunning, FlockBackend, PidLock
from pacd.private_file import refuse_unless_ours

__all__ = ["AlreadyRunning", "SocketLock", "bind_owner_socket", "check_activated_socket",
           "ensure_private_dir"]


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
    """An exclusive ``flock`` held for the daemon's lifetime (the socket exists only
    on POSIX systems; Windows serves the owner pipe instead)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._lock = PidLock(path, FlockBackend(), nofollow=False, record_pid=False)
        except PidLock.Held:
            raise AlreadyRunning(
                f"another pacd daemon is already running on {path.with_suffix('')}; "
                "stop it first (`systemctl --user stop pacd`) or set PACD_SOCKET"
            ) from None

    def release(self) -> None:
        self._lock.release()


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
