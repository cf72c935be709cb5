"""Follows the daemon's event stream on a thread; the tray asks for state only when told.

One ``GET /v1/events`` connection stays open while the daemon runs, so an
idle tray sends nothing: no polling, hence no audit entries. When the stream
cannot be opened or breaks off, the follower waits (doubling from
:data:`FIRST_RETRY_S` up to :data:`MAX_RETRY_S`) and tries again; each attempt
is one request, so a daemon that is down costs at most one attempt per
:data:`MAX_RETRY_S` once the backoff has grown.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from typing import Any

from PySide6.QtCore import QObject, Signal

from gui.signals import emit
from pacd.client import Client
from pacd.errors import PacdError

FIRST_RETRY_S = 0.25
MAX_RETRY_S = 10.0


class EventFollower(QObject):
    """Emits ``connected`` when subscribed, ``received`` per line, ``lost(code, message)``."""

    connected = Signal()
    #: ``object``, not ``dict``: PySide6 6.12 converts a ``dict`` argument through a
    #: QVariantMap and drops a reference to every ``True``/``None`` inside it on the
    #: way; the event's values were freed under the GUI thread (a segfault in
    #: ``Tray.on_event``). An ``object`` argument is passed as the same Python object.
    received = Signal(object)
    lost = Signal(str, str)

    def __init__(self, client: Client, *, first_retry_s: float = FIRST_RETRY_S,
                 max_retry_s: float = MAX_RETRY_S) -> None:
        super().__init__()
        self.client = client
        self.first_retry_s = first_retry_s
        self.max_retry_s = max_retry_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._reset = threading.Event()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="pacd-tray-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def retry_now(self) -> None:
        """Skip the rest of the current backoff and start it over (after "Start daemon":
        the daemon is expected within seconds, not at the next 10 s attempt)."""
        self._reset.set()
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):  # already closed by the daemon
                    self._sock.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
        if self._stop.is_set():
            sock.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        delay = self.first_retry_s
        while not self._stop.is_set():
            code, message = self._follow_once()
            if self._stop.is_set():
                return
            if code == "subscribed":
                delay = self.first_retry_s  # it worked for a while: start the backoff over
                code, message = "daemon_unavailable", "the daemon closed the event stream"
            emit(self.lost, code, message)
            self._wake.wait(delay)
            self._wake.clear()
            delay = self.first_retry_s if self._reset.is_set() else min(delay * 2,
                                                                       self.max_retry_s)
            self._reset.clear()

    def _follow_once(self) -> tuple[str, str]:
        """Read the stream until it ends; returns why (``subscribed`` if it had been open)."""
        subscribed = False
        try:
            for item in self.client.events(timeout=None, opened=self._opened):
                if not isinstance(item, dict):
                    continue
                if item.get("type") == "subscribed":
                    subscribed = True
                    emit(self.connected)
                    continue
                emit(self.received, _plain(item))
        except PacdError as exc:
            return exc.code, exc.message
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if not subscribed:
                return "daemon_unavailable", f"the event stream broke off: {exc!r}"
        finally:
            with self._lock:
                self._sock = None
        if subscribed:
            return "subscribed", ""
        return "daemon_unavailable", "the daemon ended the event stream at once"


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in item.items()}
