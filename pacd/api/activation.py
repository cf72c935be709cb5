"""Socket activation (systemd, launchd) and systemd readiness notification.

systemd: a ``.socket`` unit passes the listening socket as fd 3 with
``LISTEN_FDS``/``LISTEN_PID`` set (see ``packaging/linux/pacd.socket``).

launchd: the agent plist declares a ``Sockets`` dictionary with key
``Listeners`` (``SockPathName`` = the socket path, ``SockPathMode`` = 384, i.e.
0600); the daemon collects the fd with ``launch_activate_socket("Listeners")``
from libSystem. Outside launchd that call fails with ESRCH and the daemon binds
its own socket.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import sys
from collections.abc import MutableMapping

SD_LISTEN_FDS_START = 3


def systemd_socket(env: MutableMapping[str, str] | None = None) -> socket.socket | None:
    env = os.environ if env is None else env
    if env.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    if count < 1:
        return None
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(var, None)  # not inherited by anything we start
    os.set_inheritable(SD_LISTEN_FDS_START, False)
    return socket.socket(fileno=SD_LISTEN_FDS_START)


def launchd_socket(name: str = "Listeners") -> socket.socket | None:
    if sys.platform != "darwin":
        return None
    path = ctypes.util.find_library("System")
    if not path:
        return None
    libsystem = ctypes.CDLL(path, use_errno=True)
    fds = ctypes.POINTER(ctypes.c_int)()
    count = ctypes.c_size_t(0)
    err = libsystem.launch_activate_socket(
        name.encode(), ctypes.byref(fds), ctypes.byref(count)
    )
    if err != 0 or count.value < 1:
        return None
    try:
        return socket.socket(fileno=fds[0])
    finally:
        libc = ctypes.CDLL(None)
        libc.free(fds)


def activated_socket() -> socket.socket | None:
    return systemd_socket() or launchd_socket()


def sd_notify(state: str, env: MutableMapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to systemd if it asked for notifications."""
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True
