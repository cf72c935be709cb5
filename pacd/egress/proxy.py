"""The egress proxy: HTTP (absolute-form) and HTTPS (CONNECT) out of agent and plugin
containers.

One listener per networked agent or plugin, inside its container (see
:mod:`pacd.egress.netns`), so a connection's origin is known without trusting
anything the agent says. Each connection carries one request: the head is
read (at most ``MAX_HEAD_BYTES``, within ``head_timeout_s``), checked against
the container's *current* policy (trusted domain, allowed port, no IP
literal), the name is resolved here and every address it resolves to must be
public unicast (loopback only with ``allow_loopback``), and the connection is
made to the checked address, never re-resolved. Then bytes are relayed both
ways until either side closes or ``idle_timeout_s`` passes without traffic.

Every connection that sent anything is one durable audit entry
(``egress.connect``: who, host, port, allow/deny, bytes up and down). A refusal is
recorded before the agent is answered; an allowed connection is recorded when
it ends, with its byte counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pacd.core.egress import (
    MAX_HEAD_BYTES,
    EgressRefusal,
    ProxyRequest,
    address_refusal,
    check_target,
    parse_request_head,
)
from pacd.core.models import SecurityPolicy
from pacd.errors import PacdError

log = logging.getLogger("pacd.egress")

#: the response header naming why a request was refused (kinds in API.md)
REFUSAL_HEADER = "X-Pacd-Egress-Refusal"
_CHUNK = 64 * 1024


class AuditSink(Protocol):
    async def append_async(  # noqa: PLR0917 - mirrors the audit log's own signature
        self, actor: str, action: str, target: str, decision: str, reason: str,
        details: dict[str, Any] | None = None, *, checkpoint: bool = False,
    ) -> object: ...


#: the policy egress is checked against now; None when the client may no longer go out
PolicyOf = Callable[[], Awaitable[SecurityPolicy | None]]


@dataclass(frozen=True)
class EgressClient:
    """Whom a listener serves: the key it is kept under, the audit actor, and the
    details naming it in each ``egress.connect`` entry."""

    key: tuple[str, str]
    actor: str
    names: Mapping[str, str]

    @classmethod
    def agent(cls, container_id: str, agent: str) -> EgressClient:
        return cls((container_id, agent), f"agent:{container_id}/{agent}",
                   {"container": container_id, "agent": agent})

    @classmethod
    def plugin(cls, container_id: str, key: str, plugin_id: str, plugin: str,
               agent: str) -> EgressClient:
        """A plugin approved for ``agent``, kept under ``key`` (never an agent's name)."""
        return cls((container_id, key), f"plugin:{container_id}/{plugin_id}",
                   {"container": container_id, "agent": agent, "plugin_id": plugin_id,
                    "plugin": plugin})


@dataclass
class _Listener:
    server: asyncio.Server
    pid: int
    policy_of: PolicyOf
    client: EgressClient
    connections: set[asyncio.Task[Any]] = field(default_factory=set)


@dataclass
class _Counts:
    up: int = 0
    down: int = 0


class EgressProxy:
    """The daemon's egress listeners, one per client (an agent, or a plugin)."""

    def __init__(self, audit: AuditSink, *, allow_loopback: bool = False,
                 head_timeout_s: float = 10.0, connect_timeout_s: float = 10.0,
                 idle_timeout_s: float = 300.0) -> None:
        self.audit = audit
        self.allow_loopback = allow_loopback
        self.head_timeout_s = head_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._listeners: dict[tuple[str, str], _Listener] = {}

    def serving(self, key: tuple[str, str]) -> int | None:
        """The init pid of the container whose namespace the listener is in, or None."""
        listener = self._listeners.get(key)
        return listener.pid if listener is not None else None

    async def open(self, client: EgressClient, pid: int, sock: socket.socket,
                   policy_of: PolicyOf) -> None:
        """Serve ``sock`` (already listening) for ``client``, replacing an older listener."""
        await self.close(client.key)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None  # a connection callback always runs in a task
            listener.connections.add(task)
            try:
                await self._handle(listener, reader, writer)
            finally:
                listener.connections.discard(task)

        sock.setblocking(False)
        server = await asyncio.start_server(handle, sock=sock, limit=MAX_HEAD_BYTES)
        listener = _Listener(server, pid, policy_of, client)
        self._listeners[client.key] = listener

    async def close(self, key: tuple[str, str]) -> None:
        """Stop listening for this client and end its connections."""
        listener = self._listeners.pop(key, None)
        if listener is None:
            return
        listener.server.close()
        for task in list(listener.connections):
            task.cancel()
        await asyncio.gather(*listener.connections, return_exceptions=True)
        await listener.server.wait_closed()

    async def close_all(self) -> None:
        for key in list(self._listeners):
            await self.close(key)

    # --- one connection ----------------------------------------------------------------

    async def _handle(self, listener: _Listener, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        client = listener.client
        request: ProxyRequest | None = None
        try:
            try:
                head = await self._read_head(reader)
                if head is None:
                    return  # connected and closed without a byte: nothing was asked
                request = parse_request_head(head)
                policy = await listener.policy_of()
                if policy is None:
                    raise EgressRefusal(403, "egress_not_allowed",
                                        f"this {client.actor.split(':', 1)[0]}'s policy "
                                        "no longer allows external APIs")
                if len(listener.connections) > policy.max_concurrent_connections:
                    raise EgressRefusal(503, "too_many_connections",
                                        f"more than {policy.max_concurrent_connections} "
                                        "connections at once (max_concurrent_connections)")
                check_target(request.host, request.port, policy.trusted_domains,
                             policy.allowed_network_ports)
                address, upstream_reader, upstream_writer = await self._connect(request)
            except EgressRefusal as refusal:
                await self._refuse(client, request, refusal, reader, writer)
                return
            counts = _Counts()
            try:
                await self._relay(request, reader, writer, upstream_reader, upstream_writer,
                                  counts)
            finally:
                upstream_writer.close()
                await self._record(client, request, "allow",
                                   f"connection to {request.host}:{request.port} closed",
                                   {"address": address, "bytes_up": counts.up,
                                    "bytes_down": counts.down})
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout_s)
        except asyncio.LimitOverrunError:
            raise EgressRefusal(431, "head_too_large",
                                f"request head exceeds {MAX_HEAD_BYTES} bytes") from None
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None
            raise EgressRefusal(400, "bad_request",
                                "the connection ended inside the request head") from None
        except TimeoutError:
            raise EgressRefusal(408, "head_timeout",
                                f"no complete request head within {self.head_timeout_s:g} s"
                                ) from None

    async def _connect(self, request: ProxyRequest
                       ) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
        """Resolve the name here and connect to an address that passed the checks."""
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(request.host, request.port, type=socket.SOCK_STREAM),
                self.connect_timeout_s)
        except (OSError, TimeoutError):
            raise EgressRefusal(502, "cannot_resolve",
                                f"{request.host} does not resolve") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:
            # Any address outside public space refuses the name: a trusted name
            # must not become a way to the owner's machine or network.
            why = address_refusal(address, allow_loopback=self.allow_loopback)
            if why is not None:
                raise EgressRefusal(403, "address_not_public",
                                    f"{request.host} resolves to {why}")
        failure = "no address"
        for address in addresses:
            try:
                upstream_reader, upstream_writer = await asyncio.wait_for(
                    asyncio.open_connection(address, request.port), self.connect_timeout_s)
            except TimeoutError:
                failure = f"{address}: no answer within {self.connect_timeout_s:g} s"
                continue
            except OSError as exc:
                failure = f"{address}: {exc.strerror or exc}"
                continue
            return address, upstream_reader, upstream_writer
        status, kind = (504, "upstream_timeout") if "no answer" in failure else (
            502, "upstream_unreachable")
        raise EgressRefusal(status, kind,
                            f"cannot connect to {request.host}:{request.port} ({failure})")

    async def _relay(self, request: ProxyRequest, reader: asyncio.StreamReader,  # noqa: PLR0917
                     writer: asyncio.StreamWriter, upstream_reader: asyncio.StreamReader,
                     upstream_writer: asyncio.StreamWriter, counts: _Counts) -> None:
        if request.tunnel:
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
        else:
            head = request.upstream_head()
            counts.up += len(head)
            upstream_writer.write(head)
            await upstream_writer.drain()

        loop = asyncio.get_running_loop()
        last_traffic = [loop.time()]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            while True:
                try:
                    data = await asyncio.wait_for(src.read(_CHUNK), self.idle_timeout_s)
                except TimeoutError:
                    # Idle means neither direction moved: a long download with a
                    # silent client is not idle.
                    if loop.time() - last_traffic[0] < self.idle_timeout_s:
                        continue
                    raise
                if not data:
                    break
                last_traffic[0] = loop.time()
                if up:
                    counts.up += len(data)
                else:
                    counts.down += len(data)
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                with contextlib.suppress(OSError):
                    dst.write_eof()

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(pump(reader, upstream_writer, True))
                group.create_task(pump(upstream_reader, writer, False))
        except* (OSError, TimeoutError):
            pass  # either side went away or fell silent: the connection is over

    async def _refuse(self, client: EgressClient, request: ProxyRequest | None,
                      refusal: EgressRefusal, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await self._record(client, request, "deny", refusal.reason,
                           {"status": refusal.status, "refusal": refusal.kind})
        body = (refusal.reason + "\n").encode("utf-8", "replace")
        phrase = http.HTTPStatus(refusal.status).phrase
        head = (f"HTTP/1.1 {refusal.status} {phrase}\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n"
                f"{REFUSAL_HEADER}: {refusal.kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        with contextlib.suppress(OSError, TimeoutError):
            writer.write(head.encode("ascii") + body)
            await writer.drain()
            writer.write_eof()
            # Read what the agent is still sending before closing: closing with
            # unread input resets the connection, and the reset can overtake
            # the answer.
            async with asyncio.timeout(1.0):
                while await reader.read(_CHUNK):
                    pass

    async def _record(self, client: EgressClient, request: ProxyRequest | None,
                      decision: str, reason: str, extra: dict[str, Any]) -> None:
        host = request.host if request is not None else ""
        port = request.port if request is not None else 0
        details: dict[str, Any] = {**client.names, "host": host,
                                   "port": port, "method": request.method if request else "",
                                   "bytes_up": 0, "bytes_down": 0, **extra}
        try:
            await self.audit.append_async(client.actor, "egress.connect",
                                          f"{host}:{port}" if host else "", decision, reason,
                                          details)
        except PacdError as exc:
            log.error("egress audit entry not written (%s %s:%s): %s", decision, host, port,
                      exc.message)
