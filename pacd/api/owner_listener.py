"""Where the daemon listens for its owner: the daemon's side of :mod:`pacd.transport`.

:func:`open_listener` picks by platform and claims the address before the
daemon opens its databases (a second daemon, or a squatter on the pipe's name,
is turned away first):

- :class:`UnixListener`: the socket systemd or launchd hands over, else one
  bound 0600 in a private directory with its lock (:mod:`pacd.api.listener`).
  Peers are named by the kernel (``SO_PEERCRED``/``LOCAL_PEERCRED``).
- :class:`PipeListener` (Windows): the owner pipe. Its endpoint
  (:class:`pacd.named_pipe.Win32PipeEndpoint`) accepts clients, names each
  client process's user SID and makes asyncio's duplex pipe transport; the
  listener turns the SID into the connection's :class:`PeerCred` (the owner's,
  or None: refused with ``peer_refused`` and audited, as on the socket) and
  hands it over as the transport extra :data:`VERIFIED_PEER`.

Either way the same aiohttp app, connection guard and middleware serve the
bytes. The accept loop of :class:`PipeListener` is plain asyncio and is tested
on Linux with a socketpair standing in for each pipe instance; the Win32
endpoint under it has run only where the README says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from pacd.api.peercred import VERIFIED_PEER, PeerCred, own_uid
from pacd.config import Config
from pacd.errors import ConfigError
from pacd.named_pipe import current_user_sid, pipe_name
from pacd.transport import Kind, kind

if TYPE_CHECKING:
    from pacd.api.listener import SocketLock

log = logging.getLogger("pacd.api")

ProtocolFactory = Callable[[], asyncio.Protocol]


class OwnerListener(Protocol):
    #: the address as messages and the audit log name it
    where: str

    async def serve(self, protocol_factory: ProtocolFactory) -> asyncio.AbstractServer:
        """Start accepting; each connection gets a protocol from ``protocol_factory``."""
        ...

    def close(self) -> None:
        """Give the address up (after the server has stopped)."""
        ...


class UnixListener:
    def __init__(self, sock: socket.socket, lock: SocketLock | None, path: Path | None) -> None:
        self.sock = sock
        self.lock = lock
        self.path = path  # set when we bound it (and so must remove it)
        self.where = str(path) if path is not None else str(sock.getsockname())

    async def serve(self, protocol_factory: ProtocolFactory) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        return await loop.create_server(protocol_factory, sock=self.sock)

    def close(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        if self.lock is not None:
            self.lock.release()
        self.sock.close()


H = TypeVar("H")


class PipeEndpoint(Protocol[H]):
    """One named pipe's server side, as :class:`PipeListener` drives it (the Win32
    calls live behind this; tests stand in with socketpairs)."""

    address: str

    async def accept(self) -> H | None:
        """The next connected instance; None once closed."""
        ...

    def peer_sid(self, handle: H) -> str:
        """The user SID of the client process (raises OSError if it cannot be told)."""
        ...

    def client_pid(self, handle: H) -> int: ...

    def attach(self, handle: H, protocol: asyncio.Protocol, extra: dict[str, object]) -> None:
        """Make the transport of ``handle`` that feeds ``protocol``, with ``extra``."""
        ...

    def discard(self, handle: H) -> None: ...

    def close(self) -> None: ...


class _PipeServing(asyncio.AbstractServer):
    """What aiohttp's site holds for a running :class:`PipeListener`: close stops accepting."""

    def __init__(self, endpoint: PipeEndpoint[Any], task: asyncio.Task[None]) -> None:
        self._endpoint = endpoint
        self._task = task

    def close(self) -> None:
        self._endpoint.close()
        self._task.cancel()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def is_serving(self) -> bool:
        return not self._task.done()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._task.get_loop()

    async def start_serving(self) -> None:
        return None  # serving since PipeListener.serve

    async def serve_forever(self) -> None:
        await self._task


class PipeListener(Generic[H]):
    """Serves the owner pipe: only a client running as ``owner_sid`` is the owner."""

    def __init__(self, endpoint: PipeEndpoint[H], owner_sid: str,
                 owner_uid: Callable[[], int] = own_uid) -> None:
        self.endpoint = endpoint
        self.owner_sid = owner_sid
        self.where = endpoint.address
        self._owner_uid = owner_uid
        self._task: asyncio.Task[None] | None = None

    def peer(self, handle: H) -> PeerCred | None:
        """The owner's :class:`PeerCred` for a client of the owner's SID, else None
        (another user, or one whose process could not be looked at: fail closed)."""
        try:
            if self.endpoint.peer_sid(handle) != self.owner_sid:
                return None
            pid = self.endpoint.client_pid(handle)
        except OSError as exc:
            log.warning("could not tell who opened %s: %s", self.where, exc)
            return None
        return PeerCred(uid=self._owner_uid(), pid=pid, gid=None)

    async def serve(self, protocol_factory: ProtocolFactory) -> asyncio.AbstractServer:
        self._task = asyncio.get_running_loop().create_task(self._accept(protocol_factory))
        return _PipeServing(self.endpoint, self._task)

    async def _accept(self, protocol_factory: ProtocolFactory) -> None:
        while True:
            handle = await self.endpoint.accept()
            if handle is None:
                return
            extra: dict[str, object] = {"addr": self.where, VERIFIED_PEER: self.peer(handle)}
            try:
                self.endpoint.attach(handle, protocol_factory(), extra)
            except Exception:
                log.exception("could not serve a connection on %s", self.where)
                self.endpoint.discard(handle)

    def close(self) -> None:
        self.endpoint.close()


def _unix_listener(config: Config) -> UnixListener:
    # imported here: the socket's locks use fcntl, which Windows does not have
    from pacd.api.activation import activated_socket
    from pacd.api.listener import bind_owner_socket, check_activated_socket

    inherited = activated_socket()
    if inherited is not None:
        check_activated_socket(inherited)
        return UnixListener(inherited, None, None)
    sock, lock = bind_owner_socket(config.socket)
    return UnixListener(sock, lock, config.socket)


def _win32_endpoint(sid: str) -> PipeEndpoint[Any]:
    if sys.platform == "win32":
        from pacd.named_pipe import Win32PipeEndpoint

        return Win32PipeEndpoint(sid)
    raise ConfigError(f"the owner pipe exists only on Windows; {pipe_name(sid)} "
                              f"cannot be created on {sys.platform}")


def open_listener(config: Config, platform: str = sys.platform,
                  user_sid: Callable[[], str] = current_user_sid,
                  pipe_endpoint: Callable[[str], PipeEndpoint[Any]] = _win32_endpoint,
                  ) -> OwnerListener:
    """Claim the owner's address on ``platform``: the pipe on Windows (created now, so
    a squatter holding the name stops the start), else the Unix socket."""
    if kind(platform) is Kind.PIPE:
        sid = user_sid()
        return PipeListener(pipe_endpoint(sid), sid)
    return _unix_listener(config)
