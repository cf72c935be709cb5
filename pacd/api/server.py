"""The owner-socket HTTP server (aiohttp) with its admission rules.

Per request, in this order: the connection's peer uid must be the daemon's uid
(``peer_refused``, audited); the connection must be within the limit
(``busy``); no ``Origin``/``Referer`` header (no browser may reach us, audited);
then the route's level is checked by the authorizer, the body is read within
the size cap and the read timeout, decoded into the route's message type, and
the handler runs. Every failure becomes ``{"error": {...}}`` from the error
hierarchy; anything unexpected is logged and answered ``internal_error``
without details, and the daemon carries on.

Slow clients: aiohttp's keep-alive timer runs from the moment a connection is
accepted until a complete request head has arrived and is not extended by
partial data, so setting it to the header timeout drops a client that dribbles
its headers; bodies are read under their own deadline here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from pacd.api.guard import ConnectionGuard
from pacd.api.route import Call, Json, Principal, Reply, Route
from pacd.errors import (
    Busy,
    Forbidden,
    InvalidRequest,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    PacdError,
    PayloadTooLarge,
    PeerRefused,
)
from pacd.messages import RawBody, decode, decode_query, encode

log = logging.getLogger("pacd.api")

Authorizer = Callable[[web.Request, Route], Awaitable[Principal]]
RefusalHook = Callable[[str, str, dict[str, Any]], Awaitable[None]]


class RequestTimeout(InvalidRequest):
    code = "request_timeout"
    status = 408


def error_response(exc: PacdError) -> web.Response:
    body = json.dumps(exc.to_wire()).encode()
    return web.Response(body=body, status=exc.status, content_type="application/json")


def _json_response(payload: Any, status: int) -> web.Response:
    if isinstance(payload, Json):
        data = payload.data
    else:
        data = json.dumps(encode(payload), separators=(",", ":")).encode()
    return web.Response(body=data, status=status, content_type="application/json")


class OwnerServer:
    def __init__(
        self,
        routes: Iterable[Route],
        authorize: Authorizer,
        on_refusal: RefusalHook,
        *,
        max_connections: int,
        max_body_bytes: int,
        header_timeout_s: float,
        read_timeout_s: float | None = None,
        shutdown_timeout_s: float = 30.0,
    ) -> None:
        self.routes = list(routes)
        self._authorize = authorize
        self._on_refusal = on_refusal
        self._uid = os.getuid()
        self._read_timeout = read_timeout_s or header_timeout_s
        self.guard = ConnectionGuard(max_connections)
        self.app = web.Application(client_max_size=max_body_bytes,
                                   middlewares=[self._middleware])
        for route in self.routes:
            self.app.router.add_route(route.method, route.path, self._endpoint(route),
                                      name=route.operation)
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            keepalive_timeout=header_timeout_s,
            shutdown_timeout=shutdown_timeout_s,
            handle_signals=False,
        )
        self._site: _GuardedSockSite | None = None

    # -- lifecycle -----------------------------------------------------------

    async def start(self, sock: socket.socket) -> None:
        await self._runner.setup()
        self._site = _GuardedSockSite(self._runner, sock, self.guard)
        await self._site.start()

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, close idle connections."""
        await self._runner.cleanup()

    # -- per request ---------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            state = self.guard.state_for(request.transport)
            if state is None or state.peer is None or state.peer.uid != self._uid:
                peer = state.peer if state is not None else None
                await self._refuse("peer_refused", "peer uid differs from the daemon's", {
                    "peer_uid": peer.uid if peer else None,
                    "peer_pid": peer.pid if peer else None,
                    "path": request.path,
                })
                raise PeerRefused("connections are accepted only from the owner's own user id")
            if state.busy:
                raise Busy(
                    f"the daemon is serving its maximum of {self.guard.max_connections} "
                    "connections; retry shortly"
                )
            if "Origin" in request.headers or "Referer" in request.headers:
                await self._refuse("browser_refused", "request carried Origin/Referer", {
                    "path": request.path,
                })
                raise Forbidden("requests from web pages are refused (Origin or Referer header)")
            return await handler(request)
        except PacdError as exc:
            return self._finish_error(request, exc)
        except web.HTTPException as exc:
            return self._finish_error(request, _from_http(exc, request))
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            return self._finish_error(request, PacdError(
                "internal error; the daemon logged the details"))

    def _finish_error(self, request: web.Request, exc: PacdError) -> web.Response:
        resp = error_response(exc)
        if isinstance(exc, PeerRefused | Busy):
            resp.force_close()  # no keep-alive for refused connections
        return resp

    async def _refuse(self, action: str, reason: str, details: dict[str, Any]) -> None:
        try:
            await self._on_refusal(action, reason, details)
        except Exception:
            # The refusal stands whether or not it could be recorded.
            log.exception("could not audit refusal %s", action)

    def _endpoint(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        basic = Principal(level="basic") if route.level == "basic" else None

        async def endpoint(request: web.Request) -> web.StreamResponse:
            # Basic routes need nothing beyond the peer check: no await on the hot path.
            principal = basic or await self._authorize(request, route)
            body: Any = None
            if route.request is not None:
                body = await self._read_body(request, route.request)
            query = decode_query(route.query, request.query) if route.query else None
            call = Call(request=request, params=request.match_info, body=body, query=query,
                        principal=principal)
            result = await route.handler(call)
            if isinstance(result, web.StreamResponse):
                return result
            if isinstance(result, Reply):
                return _json_response(result.body, result.status)
            return _json_response(result, route.status)

        return endpoint

    async def _read_body(self, request: web.Request, kind: type | RawBody) -> Any:
        try:
            async with asyncio.timeout(self._read_timeout):
                raw = await request.read()
        except TimeoutError:
            if request.transport is not None:
                request.transport.close()
            raise RequestTimeout("the request body did not arrive in time") from None
        if not raw.strip():
            data: Any = {}
        else:
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise MalformedRequest(f"the body is not valid JSON: {exc}") from None
        if isinstance(kind, RawBody):
            if not isinstance(data, dict):
                raise InvalidRequest(f"body: expected a {kind.name} object")
            return data
        return decode(kind, data)


def _from_http(exc: web.HTTPException, request: web.Request) -> PacdError:
    if exc.status == 404:
        return NotFound(f"no such route: {request.method} {request.path}")
    if exc.status == 405:
        return MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
    if exc.status == 413:
        return PayloadTooLarge("the request body is larger than the daemon accepts")
    if exc.status == 400:
        return MalformedRequest(exc.reason or "bad request")
    return PacdError(exc.reason or "request failed")


class _GuardedSockSite(web.SockSite):
    """A SockSite whose connections pass through the connection guard."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket,
                 guard: ConnectionGuard) -> None:
        super().__init__(runner, sock)
        self._guard = guard
        self._sock_ref = sock

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._guard.wrap(server), sock=self._sock_ref)
