"""How the owner's HTTP travels on this platform: the one place that chooses.

Linux and macOS: a Unix stream socket (``PACD_SOCKET``, 0600 in a 0700
directory; systemd or launchd may hold it). Windows, where CPython has no
``AF_UNIX``: the named pipe ``\\\\.\\pipe\\pacd-<owner's SID>``
(:mod:`pacd.named_pipe`). Both carry the same HTTP/1.1 the same way; only the
byte stream underneath differs.

This module is the client's side of the choice (the CLI, the tray and scripts
connect through :func:`connection`); the daemon's side is
:func:`pacd.api.owner_listener.open_listener`, which asks :func:`kind` too.
The choice takes the platform as an argument so that both branches are tested
on any machine; the Windows branch's Win32 calls run only on Windows.
"""

from __future__ import annotations

import http.client
import socket
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path

from pacd.named_pipe import PipeHTTPConnection, current_user_sid, pipe_name


class Kind(Enum):
    UNIX = "unix socket"
    PIPE = "named pipe"


def kind(platform: str = sys.platform) -> Kind:
    """The owner transport of ``platform`` (a ``sys.platform`` value)."""
    return Kind.PIPE if platform == "win32" else Kind.UNIX


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a Unix stream socket at ``path``."""

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def address(socket_path: Path, platform: str = sys.platform,
            user_sid: Callable[[], str] = current_user_sid) -> str:
    """Where the owner's daemon listens, as messages name it: the socket path, or the
    pipe named for this user's SID."""
    if kind(platform) is Kind.PIPE:
        return pipe_name(user_sid())
    return str(socket_path)


def connection(socket_path: Path, timeout: float | None, platform: str = sys.platform,
               user_sid: Callable[[], str] = current_user_sid) -> http.client.HTTPConnection:
    """A not yet connected HTTP connection to the owner's daemon.

    On Windows ``socket_path`` is not used: the pipe's name comes from the SID
    of the user this process runs as, and connecting checks that the pipe's
    server runs as that user too (:func:`pacd.named_pipe.open_owner_pipe`).
    """
    if kind(platform) is Kind.PIPE:
        return PipeHTTPConnection(pipe_name(user_sid()), timeout)
    return UnixHTTPConnection(str(socket_path), timeout)
