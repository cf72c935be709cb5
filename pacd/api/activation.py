"""Socket activation (systemd, launchd) and systemd readiness notification.

systemd: a ``.socket`` unit passes the listening socket as fd 3 with
``LISTEN_FDS``/``LISTEN_PID`` set (see ``packaging/linux/pacd.socket``).

launchd: the agent plist (written by :mod:`pacd.launchagent`) declares a
``Sockets`` dictionary with key ``Listeners`` (``SockPathName`` = the socket
path, ``SockPathMode`` = 384, i.e. 0600); the daemon collects the fd with
``launch_activate_socket("Listeners")`` from libSystem. Outside launchd that
call fails with ESRCH and the daemon binds its own socket.
"""

from __future__ import annotations

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


def launchd_socket(name: str | None = None) -> socket.socket | None:
    """The listening socket launchd holds for us under ``name``, or None.

    ``name`` defaults to the one :mod:`pacd.launchagent` writes into the plist.

    ``int launch_activate_socket(const char *name, int **fds, size_t *cnt)``
    (<launch.h>): on success ``*fds`` is a malloc'ed array of ``*cnt``
    descriptors that we own. We keep the first (one ``SockPathName`` gives one),
    close any others and free the array. Off macOS, or run outside launchd
    (ESRCH), or for a name the plist does not declare (ENOENT): None, and the
    daemon binds its own socket.
    """
    if sys.platform != "darwin":
        return None
    # Imported on macOS only: ctypes and the plist writer are of no use to a
    # daemon started elsewhere, and every start would pay for them.
    import ctypes
    import ctypes.util

    from pacd.launchagent import LAUNCHD_SOCKET_NAME

    if name is None:
        name = LAUNCHD_SOCKET_NAME
    path = ctypes.util.find_library("System")
    if not path:
        return None
    libsystem = ctypes.CDLL(path, use_errno=True)
    activate = libsystem.launch_activate_socket
    activate.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.POINTER(ctypes.c_int)),
                         ctypes.POINTER(ctypes.c_size_t)]
    activate.restype = ctypes.c_int
    libsystem.free.argtypes = [ctypes.c_void_p]
    libsystem.free.restype = None
    fds = ctypes.POINTER(ctypes.c_int)()
    count = ctypes.c_size_t(0)
    if activate(name.encode(), ctypes.byref(fds), ctypes.byref(count)) != 0:
        return None
    try:
        if count.value < 1:
            return None
        for i in range(1, count.value):
            os.close(fds[i])
        os.set_inheritable(fds[0], False)
        return socket.socket(fileno=fds[0])
    finally:
        libsystem.free(fds)


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
