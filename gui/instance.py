"""One tray per user: the first claims a local socket, a later start asks it to show itself.

The socket lives in the daemon's private socket directory (0700, the owner's
own), so another user cannot claim or poke it.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

from gui.signals import emit

CONNECT_TIMEOUT_MS = 1000


class SingleInstance(QObject):
    """``claim()`` is True for the first instance; it then emits ``raise_requested``."""

    raise_requested = Signal()

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.server: QLocalServer | None = None

    def claim(self) -> bool:
        probe = QLocalSocket()
        probe.connectToServer(str(self.path))
        if probe.waitForConnected(CONNECT_TIMEOUT_MS):
            probe.write(b"raise\n")
            probe.waitForBytesWritten(CONNECT_TIMEOUT_MS)
            probe.disconnectFromServer()
            return False  # the running tray shows itself
        # Nobody answers: a socket left by a crashed tray is removed and taken over.
        # Before the daemon ever ran its socket directory may not exist yet; made
        # here 0700 as the daemon itself would (it refuses anything less private).
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        QLocalServer.removeServer(str(self.path))
        server = QLocalServer(self)
        server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if not server.listen(str(self.path)):
            return False
        server.newConnection.connect(self._knocked)
        self.server = server
        return True

    def _knocked(self) -> None:
        assert self.server is not None
        while self.server.hasPendingConnections():
            conn = self.server.nextPendingConnection()
            conn.disconnected.connect(conn.deleteLater)
            emit(self.raise_requested)

    def release(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
