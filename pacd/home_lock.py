"""One daemon per PACD_HOME (and per owner socket): an exclusive lock on a file, held for life.

The lock itself decides; the file also holds the holder's pid so that a second
daemon can name it. Which kernel lock holds it depends on the platform:

- POSIX: ``flock`` on the whole file (:class:`FlockBackend`); released by the
  kernel when the holder exits, however it exits.
- Windows: ``msvcrt.locking`` on one byte far past the pid (:class:`MsvcrtBackend`).
  Windows byte-range locks are mandatory — a second process cannot even read a
  locked range — so the locked byte must not be the pid's, or the second
  daemon could not name the first. Windows also releases it when the holder exits.

The backend is chosen by :func:`backend_for` from a ``sys.platform`` value passed
in, so both choices are tested on any machine. The msvcrt call sequence (seek,
non-blocking lock of one byte, refusal as "held") is tested here with a
stand-in for ``msvcrt.locking`` built on POSIX byte-range locks; that Windows
really refuses the second locker, and keeps the pid readable, only a Windows
machine shows (README, "what has been run where").
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pacd.errors import PacdError


class AlreadyRunning(PacdError):
    code = "already_running"
    status = 409
    exit_code = 5


class LockBackend(Protocol):
    def try_lock(self, fd: int) -> bool:
        """Take the exclusive lock without waiting; False when another process holds it."""
        ...

    def unlock(self, fd: int) -> None:
        ...


class FlockBackend:
    """``flock(LOCK_EX | LOCK_NB)`` on the whole file (Linux, macOS)."""

    def try_lock(self, fd: int) -> bool:
        import fcntl  # POSIX only: imported where it is used, never on Windows

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock(self, fd: int) -> None:
        del fd  # closing the descriptor releases the flock


#: ``msvcrt.locking(fd, mode, nbytes)``: locks ``nbytes`` from the current position
Locking = Callable[[int, int, int], None]


class MsvcrtBackend:
    """``msvcrt.locking(LK_NBLCK)`` on the byte at :data:`OFFSET` (Windows).

    ``locking``, ``nblck`` and ``unlck`` are ``msvcrt``'s; tests pass stand-ins.
    """

    #: far past any pid: locking beyond the end of a file is allowed, and keeps the
    #: pid's bytes readable to the second daemon despite mandatory locking
    OFFSET = 1 << 20
    #: what a refused LK_NBLCK raises (EACCES from LockFile; the CRT may say EDEADLOCK)
    HELD = frozenset({errno.EACCES, errno.EDEADLOCK})

    def __init__(self, locking: Locking | None = None, nblck: int | None = None,
                 unlck: int | None = None) -> None:
        if locking is None or nblck is None or unlck is None:
            if sys.platform != "win32":
                raise ImportError(f"msvcrt exists only on Windows (this is {sys.platform})")
            import msvcrt

            locking, nblck, unlck = msvcrt.locking, msvcrt.LK_NBLCK, msvcrt.LK_UNLCK
        self._locking, self._nblck, self._unlck = locking, nblck, unlck

    def try_lock(self, fd: int) -> bool:
        os.lseek(fd, self.OFFSET, os.SEEK_SET)
        try:
            self._locking(fd, self._nblck, 1)
        except OSError as exc:
            if exc.errno in self.HELD:
                return False
            raise
        return True

    def unlock(self, fd: int) -> None:
        os.lseek(fd, self.OFFSET, os.SEEK_SET)
        self._locking(fd, self._unlck, 1)


def backend_for(platform: str = sys.platform) -> LockBackend:
    """The lock of ``platform`` (a ``sys.platform`` value)."""
    return MsvcrtBackend() if platform == "win32" else FlockBackend()


def _flags(*names: str) -> int:
    """The ``os.O_*`` flags of this platform among ``names`` (Windows lacks
    O_NOFOLLOW and O_CLOEXEC — its descriptors are not inherited anyway — and
    POSIX lacks O_BINARY)."""
    flags = 0
    for name in names:
        flags |= getattr(os, name, 0)
    return flags


class PidLock:
    """An exclusive lock on ``path``, held until :meth:`release`; the file holds our pid.

    Raises :class:`Held` (with the pid the file names, or "unknown") when another
    process holds it. ``nofollow`` refuses a symlink planted at ``path``.
    """

    class Held(Exception):
        def __init__(self, holder: str) -> None:
            super().__init__(holder)
            self.holder = holder

    def __init__(self, path: Path, backend: LockBackend, *, nofollow: bool = True,
                 record_pid: bool = True) -> None:
        self.path = path
        self._backend = backend
        self._record_pid = record_pid
        names = ("O_CLOEXEC", "O_BINARY", "O_NOINHERIT") + (("O_NOFOLLOW",) if nofollow else ())
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _flags(*names), 0o600)
        try:
            if not backend.try_lock(fd):
                os.lseek(fd, 0, os.SEEK_SET)
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
                raise PidLock.Held(holder)
            if record_pid:
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            if self._record_pid:
                # Emptied before unlocking: a pid left behind would name a dead process.
                os.ftruncate(self._fd, 0)
            self._backend.unlock(self._fd)
            os.close(self._fd)
            self._fd = -1


class HomeLock:
    """The lock on ``daemon.lock`` in PACD_HOME, held for the daemon's life.

    The socket lock only keeps two daemons off one socket; two daemons with
    different sockets on one home would interleave writes to one audit chain
    and one state database.
    """

    def __init__(self, home: Path, platform: str = sys.platform,
                 backend: LockBackend | None = None) -> None:
        self.path = home / "daemon.lock"
        try:
            self._lock = PidLock(self.path, backend or backend_for(platform))
        except PidLock.Held as held:
            raise AlreadyRunning(
                f"another pacd daemon (pid {held.holder}) is already using PACD_HOME {home}; "
                "stop it first or set another PACD_HOME"
            ) from None

    def release(self) -> None:
        self._lock.release()
