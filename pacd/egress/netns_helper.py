"""Bind a TCP listener inside another process's network namespace; hand it back.

Run by :func:`pacd.egress.netns.bind_in_netns` as
``python -m pacd.egress.netns_helper PID FD HOST PORT``. It is its own short
process because joining a rootless container's user namespace (needed before
its network namespace can be joined) is refused to a multi-threaded process
such as the daemon. The listener keeps the namespace it was created in after
this process exits; it is sent back over the inherited Unix socket ``FD``.
Standard library only, so it starts fast and imports nothing of the daemon.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


def _setns(fd: int, nstype: int, what: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns({what}): {os.strerror(err)}")


def _same_namespace(a: str, b: str) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def main(argv: list[str]) -> int:
    pid, channel_fd, host, port = int(argv[1]), int(argv[2]), argv[3], int(argv[4])
    channel = socket.socket(fileno=channel_fd)
    ns = f"/proc/{pid}/ns"
    # Both opened before either is joined: after joining the user namespace
    # /proc/PID may no longer be ours to open.
    user_fd = None
    if not _same_namespace(f"{ns}/user", "/proc/self/ns/user"):
        user_fd = os.open(f"{ns}/user", os.O_RDONLY | os.O_CLOEXEC)
    net_fd = os.open(f"{ns}/net", os.O_RDONLY | os.O_CLOEXEC)
    if user_fd is not None:
        _setns(user_fd, CLONE_NEWUSER, "user")
    _setns(net_fd, CLONE_NEWNET, "net")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A listener of an earlier daemon leaves connections in TIME_WAIT on this port.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(64)
    socket.send_fds(channel, [b"listening"], [listener.fileno()])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (OSError, ValueError, IndexError) as exc:
        print(f"egress listener: {exc}", file=sys.stderr)
        sys.exit(1)
