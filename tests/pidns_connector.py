"""Unix-socket connections made inside another process's PID namespace, used from here.

An agent socket serves only processes in its container's PID namespace (the
kernel's ``SO_PEERCRED`` pid, read when the daemon accepts). Tests and the
agent benchmark still drive agent sockets from their own process: a small
helper is started inside the namespace (``nsenter --target PID --pid``; it
keeps the host's filesystem, so the host's Python runs it and the socket's host
path is reachable), connects whenever asked and hands each connected socket
back over a socketpair (``SCM_RIGHTS``). To the daemon such a connection is
what an agent's would be: made by a process in the container's namespace.

The helper stays alive while connections are in use: the daemon reads the
connecting process's namespace when it accepts, and a process that is gone by
then has none (refused). It exits when :meth:`NamespaceConnector.close` closes
its end of the pair, and the kernel kills it with the namespace's init.

Entering a PID namespace needs CAP_SYS_ADMIN over the namespace's owner: root
for rootful Podman's containers (as the system tests run); otherwise the
helper also enters the process's user namespace, which is the owner's own
under rootless Podman.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

# Runs inside the namespace: one connect per request, the socket or the errno back.
_HELPER = r"""
import os, socket, sys
ctl = socket.socket(fileno=int(sys.argv[1]))
while True:
    path = ctl.recv(4096)
    if not path:
        break
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(os.fsdecode(path))
    except OSError as exc:
        ctl.send(b"E%d" % (exc.errno or 0))
    else:
        socket.send_fds(ctl, [b"K"], [s.fileno()])
    finally:
        s.close()
"""

START_TIMEOUT_S = 30.0


class NamespaceConnector:
    """Connects to Unix sockets from inside the PID namespace of process ``pid``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        enter = ["nsenter", f"--target={pid}", "--pid"]
        if os.geteuid() != 0:
            enter += ["--user", "--preserve-credentials"]
        try:
            self._proc = subprocess.Popen(
                [*enter, "--", sys.executable, "-I", "-S", "-c", _HELPER, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self._lock = threading.Lock()
        self._ctl.settimeout(START_TIMEOUT_S)

    def connect(self, path: Path | str) -> socket.socket:
        """A stream socket connected to ``path`` by a process in the namespace."""
        with self._lock:
            self._ctl.send(os.fsencode(path))
            msg, fds, _flags, _addr = socket.recv_fds(self._ctl, 64, 1)
        if fds:
            return socket.socket(fileno=fds[0])
        if msg.startswith(b"E"):
            errno = int(msg[1:])
            raise OSError(errno, f"connect to {path} from PID namespace of {self.pid}: "
                          f"{os.strerror(errno)}")
        raise OSError(f"the helper in the PID namespace of {self.pid} exited "
                      f"(status {self._proc.poll()})")

    def close(self) -> None:
        self._ctl.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> NamespaceConnector:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@contextlib.contextmanager
def stand_in_container() -> Iterator[int]:
    """A process alone in a fresh PID namespace, standing in for an agent container;
    yields its pid. Root enters a new PID namespace directly, anyone else through
    a user namespace of their own."""
    userns = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    holder = subprocess.Popen(["unshare", *userns, "--pid", "--fork", "--kill-child", "--",
                               "sleep", "infinity"], stdin=subprocess.DEVNULL)
    try:
        children = Path(f"/proc/{holder.pid}/task/{holder.pid}/children")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (pids := children.read_text().split()):
            if holder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("could not start a process in a new PID namespace "
                                   f"(unshare exited {holder.poll()})")
            time.sleep(0.01)  # polling for the child unshare forks
        yield int(pids[0])
    finally:
        holder.kill()  # --kill-child: its child goes with it
        holder.wait()
