"""The daemon's handle on a running plugin's directory, ``/run/pacd-plugin`` in its container.

That directory is a small tmpfs inside the plugin's container
(:func:`pacd.runtime.hardening.plugin_dir_mount`), not a host directory, so
the daemon reaches it through the container's root, ``/proc/<init pid>/root``.
It is opened once, when the plugin is started or found running, as an
``O_PATH`` descriptor, and everything after goes through that descriptor:

* it stays the directory of *that* container (a pid the kernel hands out again
  later cannot redirect it), and holds the tmpfs until it is closed;
* each component is opened with ``O_NOFOLLOW``: an absolute symbolic link met
  under ``/proc/<pid>/root`` resolves against the *daemon's* root, so an image
  whose ``/run`` were one could point the daemon at its own files;
* ``plugin.sock`` is opened with ``O_NOFOLLOW`` and must be a socket; the
  daemon connects through ``/proc/self/fd/<n>`` of that inode, never by a
  path the plugin could turn into a symbolic link to another socket (the
  owner's, say).

Methods are thread-safe: the lifecycle attaches and closes directories from
worker threads while calls on the event loop connect through them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from pacd.errors import PluginUnavailable, RuntimeFailed
from pacd.runtime.hardening import PLUGIN_SOCKET_DIR_IN_CONTAINER

PLUGIN_SOCKET_NAME = "plugin.sock"

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PluginDirectory:
    """One open plugin directory; closed when the plugin stops or is removed."""

    def __init__(self, fd: int, pid: int | None = None) -> None:
        self._fd = fd
        #: the container init it was opened through (None: a host directory)
        self.pid = pid
        self._lock = threading.Lock()

    @classmethod
    def of_process(cls, pid: int) -> PluginDirectory:
        """The plugin directory in the container whose init is ``pid``: it must be a
        mount of its own there (the tmpfs Podman mounted), reached without following
        a symbolic link. ``RuntimeFailed`` otherwise."""
        try:
            fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise RuntimeFailed(f"cannot reach the root of process {pid}: "
                                f"{exc.strerror or exc}") from None
        try:
            for part in PurePosixPath(PLUGIN_SOCKET_DIR_IN_CONTAINER).parts[1:]:
                parent_dev = os.fstat(fd).st_dev
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise RuntimeFailed(
                        f"{PLUGIN_SOCKET_DIR_IN_CONTAINER} of process {pid}: {part!r} is not "
                        f"a directory ({exc.strerror or exc}; symbolic links are not "
                        "followed)") from None
                os.close(fd)
                fd = child
            if os.fstat(fd).st_dev == parent_dev:
                raise RuntimeFailed(f"{PLUGIN_SOCKET_DIR_IN_CONTAINER} of process {pid} is "
                                    "not the plugin's own mount")
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, pid)

    @classmethod
    def at(cls, path: Path) -> PluginDirectory:
        """A directory on this host (for tests and tools): same handling, no mount check."""
        return cls(os.open(path, _DIR_FLAGS))

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    @contextlib.contextmanager
    def socket_path(self, name: str = PLUGIN_SOCKET_NAME) -> Iterator[str]:
        """A path that names the socket ``name`` in the directory while the block runs
        (``/proc/self/fd/<n>`` of the socket's own inode). ``PluginUnavailable`` if
        the directory is closed or ``name`` is not a socket (a symbolic link is not
        followed: it is no socket)."""
        with self._lock:
            if self._fd < 0:
                raise PluginUnavailable("the plugin is not running")
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._fd)
            except OSError as exc:
                raise PluginUnavailable(f"no {name} ({exc.strerror or exc})") from None
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise PluginUnavailable(f"{name} is not a socket")
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)

    def has_socket(self, name: str = PLUGIN_SOCKET_NAME) -> bool:
        try:
            with self.socket_path(name):
                return True
        except PluginUnavailable:
            return False

    def bind(self, name: str) -> socket.socket:
        """A listening socket ``name`` in the directory, mode 0666 (the plugin is another
        uid), replacing whatever the plugin may have put at that name."""
        with self._lock:
            if self._fd < 0:
                raise RuntimeFailed("the plugin's directory is closed")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=self._fd)
            path = f"/proc/self/fd/{self._fd}/{name}"
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(path)
                # The socket just made is the daemon's and, in a sticky directory,
                # cannot be swapped by the plugin: chmod reaches that socket.
                os.chmod(path, 0o666)  # noqa: S103 - only the plugin's container sees it
                sock.listen(64)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=self._fd)
                raise
            return sock

    def unlink(self, name: str) -> None:
        """Remove ``name`` from the directory, if it is still open."""
        with self._lock:
            if self._fd < 0:
                return
            try:
                os.unlink(name, dir_fd=self._fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.EACCES, errno.EPERM):
                    raise

    def usage(self) -> tuple[int, int]:
        """(bytes used, bytes in all) of the file system under the directory."""
        with self._lock:
            if self._fd < 0:
                raise RuntimeFailed("the plugin's directory is closed")
            st = os.statvfs(f"/proc/self/fd/{self._fd}")
        return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize


class PluginDirectories:
    """The open directory of every running plugin, by (container id, plugin id, agent)."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str, str], PluginDirectory] = {}
        self._lock = threading.Lock()

    def attach(self, key: tuple[str, str, str], directory: PluginDirectory) -> None:
        """Keep ``directory`` for the plugin ``key``, closing the one it replaces."""
        with self._lock:
            old = self._open.get(key)
            self._open[key] = directory
        if old is not None and old is not directory:
            old.close()

    def get(self, key: tuple[str, str, str]) -> PluginDirectory | None:
        with self._lock:
            return self._open.get(key)

    def close(self, key: tuple[str, str, str]) -> None:
        with self._lock:
            directory = self._open.pop(key, None)
        if directory is not None:
            directory.close()

    def close_all(self) -> None:
        for key in list(self._open):
            self.close(key)
