"""Per-connection admission: peer credentials and the connection limit.

Every accepted connection passes through :class:`GuardedProtocol`, which reads
the peer's uid from the kernel once, counts the connection and hands the bytes
to aiohttp's own protocol. Decisions that need an HTTP answer (wrong uid, over
the limit) are taken by the server's middleware from the :class:`ConnState`
recorded here, so a refused client still gets a proper JSON error. Beyond a
hard cap (twice the limit) connections are closed without a word, so a flood
cannot even make the daemon parse requests. Both kinds of refusal that never
reach a route — dropped connections and unparseable requests — are reported
through the ``on_dropped``/``on_malformed`` hooks, which the server records
coalesced.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from pacd.api.peercred import PeerCred, PidNamespace, pid_namespace, transport_peer

log = logging.getLogger("pacd.api")


@dataclass
class ConnState:
    peer: PeerCred | None
    busy: bool
    opened: float = field(default_factory=time.monotonic)
    #: requests being handled on it now (0: idle, e.g. half-open or between requests)
    active: int = 0
    #: the peer's PID namespace, read as the connection is accepted (agent sockets only)
    pid_ns: PidNamespace | None = None


MalformedHook = Callable[[PeerCred | None, int], None]
DroppedHook = Callable[[], None]

#: idle connections kept when the limit is reached; beyond these, the oldest idle
#: one is closed to make room for a newcomer (idle clients must not starve the owner)
KEEP_IDLE = 4


def _ignore(*_args: Any) -> None:
    return None


class ConnectionGuard:
    def __init__(self, max_connections: int, *, on_malformed: MalformedHook = _ignore,
                 on_dropped: DroppedHook = _ignore, on_evicted: DroppedHook = _ignore,
                 read_pid_namespace: bool = False) -> None:
        self.on_malformed = on_malformed
        self.read_pid_namespace = read_pid_namespace
        self.on_dropped = on_dropped
        self.on_evicted = on_evicted
        self.max_connections = max(1, max_connections)
        self.hard_cap = self.max_connections * 2 + 4
        self._states: dict[asyncio.BaseTransport, ConnState] = {}
        self._served = 0  # connections within the limit

    @property
    def open_connections(self) -> int:
        return len(self._states)

    def admit(self, transport: asyncio.BaseTransport) -> ConnState | None:
        if len(self._states) >= self.hard_cap or self._served >= self.max_connections:
            self._evict_idle()
        if len(self._states) >= self.hard_cap:
            return None
        peer = transport_peer(transport)
        busy = self._served >= self.max_connections
        if not busy:
            self._served += 1
        # Read at accept, while the connecting process most likely still holds its pid.
        pid_ns = pid_namespace(peer.pid) if self.read_pid_namespace and peer else None
        state = ConnState(peer=peer, busy=busy, pid_ns=pid_ns)
        self._states[transport] = state
        return state

    def _evict_idle(self) -> None:
        """Close the oldest idle connection if more than KEEP_IDLE are idle.

        A served one first (its slot goes to the newcomer), else an unserved one.
        Idle means no request is being handled on it: connected and silent,
        half a request head, or keep-alive between requests.
        """
        idle = [(not s.busy, -s.opened, t) for t, s in self._states.items() if not s.active]
        if len(idle) <= KEEP_IDLE:
            return
        _, _, victim = max(idle, key=lambda item: (item[0], item[1]))
        state = self._states.pop(victim)
        if not state.busy:
            self._served -= 1
        victim.close()
        self.on_evicted()

    def release(self, transport: asyncio.BaseTransport) -> None:
        state = self._states.pop(transport, None)
        if state is not None and not state.busy:
            self._served -= 1

    def state_for(self, transport: asyncio.BaseTransport | None) -> ConnState | None:
        if transport is None:
            return None
        return self._states.get(transport)

    def wrap(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        def make() -> asyncio.Protocol:
            # What web.Server.__call__ does, with our handler class.
            handler = JsonErrorHandler(server, loop=server._loop,
                                       **server._kwargs)
            handler.guard = self
            return GuardedProtocol(handler, self)

        return make


class JsonErrorHandler(RequestHandler):
    """aiohttp's protocol, answering unparseable requests in pacd's error shape.

    aiohttp's own answer is plain text that echoes the offending bytes back;
    ours is the usual ``{"error": ...}`` and says nothing about the input.
    """

    guard: ConnectionGuard | None = None

    def skip_lingering(self) -> None:
        """Read nothing more of the current request's body once it is answered.

        aiohttp lingers on an unread body whatever the answer said; for an answer
        that closes the connection (over a cap, too slow, refused outright) the
        rest is not wanted, and the connection ends as soon as the answer is out.
        """
        self._lingering_time = 0.0

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        log.debug("malformed request: %s", exc)
        if 400 <= status < 500 and self.guard is not None:
            state = self.guard.state_for(self.transport)
            self.guard.on_malformed(state.peer if state is not None else None, status)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        code, text = (("invalid_request", "malformed HTTP request") if 400 <= status < 500
                      else ("internal_error", "internal error; the daemon logged the details"))
        body = json.dumps({"error": {"code": code, "message": text}}).encode()
        resp = web.Response(status=status, body=body, content_type="application/json")
        resp.force_close()
        return resp


class GuardedProtocol(asyncio.Protocol):
    """Delegates to aiohttp's protocol after admission; releases on close."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._guard.admit(transport) is None:
            transport.close()
            self._guard.on_dropped()
            return
        self._transport = transport
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._transport is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._transport is None:
            return None
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return
        self._guard.release(self._transport)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._inner.resume_writing()
