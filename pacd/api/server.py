"""The owner-socket HTTP server (aiohttp) with its admission rules.

Per request, in this order: the connection's peer uid must be the daemon's uid
(``peer_refused``); the connection must be within the limit (``busy``); no
``Origin``/``Referer`` header (no browser may reach us); the path must name a
route; then the route's level is checked by the authorizer, the body is read
within the size cap and the read timeout, decoded into the route's message
type, and the handler runs. Every failure becomes ``{"error": {...}}`` from
the error hierarchy; anything unexpected is logged and answered
``internal_error`` without details, and the daemon carries on.

Audit: every routed request ends in exactly one entry, allow or deny, written
before the answer leaves (see :mod:`pacd.api.decisions`): fsync-durable, or
for an allowed route of the *written* class (reads of metadata, declared on
the route) in the log's file and fsynced by the next group commit. If that write
fails the request fails with ``audit_unavailable`` instead — a read whose
record cannot be kept is not served. Refusals a client can repeat for free
(another uid, over the limit, no such route, not HTTP at all) are coalesced
into at most one entry per second per kind, each carrying its count. The
exemptions are the routes marked ``audited=False``: ``GET /v1/status`` and
``GET /v1/openapi.json`` say nothing about the owner's data and are the
liveness probe every client polls, so they stay free of per-request writes.

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

from aiohttp import HttpVersion11, web

from pacd.api.decisions import AuditAppender, Coalescer, RequestDecision, actor_for
from pacd.api.guard import KEEP_IDLE, ConnectionGuard
from pacd.api.peercred import PeerCred
from pacd.api.route import WRITTEN, Call, Json, Principal, Reply, Route
from pacd.core.fields import refuse_surrogates
from pacd.errors import (
    AuditError,
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

#: request key of a stream whose decision entry is due when its headers go out
_STREAM_KEY = "pacd.stream_decision"

Authorizer = Callable[[web.Request, Route], Awaitable[Principal]]


class RequestTimeout(InvalidRequest):
    code = "request_timeout"
    status = 408


class ExpectationFailed(InvalidRequest):
    code = "expectation_failed"
    status = 417


#: request key of an ``Expect`` value other than 100-continue, refused by the middleware
_EXPECT_KEY = "pacd.expect_refused"


async def _expect_handler(request: web.Request) -> None:
    """``Expect: 100-continue`` is answered as aiohttp does; any other expectation
    is left for the middleware to refuse as JSON, with its audit entry (aiohttp's
    own refusal would be plain text sent before any middleware runs)."""
    expect = request.headers.get("Expect", "")
    if expect.lower() != "100-continue":
        request[_EXPECT_KEY] = expect[:100]
        return
    if request.version == HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0


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
        audit: AuditAppender,
        *,
        max_connections: int,
        max_body_bytes: int,
        header_timeout_s: float,
        read_timeout_s: float | None = None,
        shutdown_timeout_s: float = 30.0,
        max_tokenless_body_bytes: int = 64 * 1024,
    ) -> None:
        self.routes = list(routes)
        self._max_body = max_body_bytes
        self._max_tokenless_body = min(max_tokenless_body_bytes, max_body_bytes)
        self._authorize = authorize
        self._audit = audit
        self._uid = os.getuid()
        self.actor = actor_for(self._uid)
        self._read_timeout = read_timeout_s or header_timeout_s
        self.refusals = Coalescer(audit)
        self.guard = ConnectionGuard(max_connections, on_malformed=self._malformed,
                                     on_dropped=self._dropped, on_evicted=self._evicted)
        self.app = web.Application(client_max_size=max_body_bytes,
                                   middlewares=[self._middleware])
        self.app.on_response_prepare.append(self._before_stream)
        for route in self.routes:
            self.app.router.add_route(route.method, route.path, self._endpoint(route),
                                      name=route.operation, expect_handler=_expect_handler)
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            keepalive_timeout=header_timeout_s,
            # No lingering on a body that is still incomplete after the answer (a
            # 408): aiohttp would otherwise keep reading it for 10 s more.
            lingering_time=0,
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
        await self.refusals.close()

    # -- per request ---------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        state = self.guard.state_for(request.transport)
        if state is not None:
            state.active += 1  # not idle while a request is handled (see the guard)
        try:
            if state is None or state.peer is None or state.peer.uid != self._uid:
                peer = state.peer if state is not None else None
                await self.refusals.record(
                    actor_for(peer.uid if peer else None), "peer_refused", request.path,
                    "peer uid differs from the daemon's",
                    {"peer_uid": peer.uid if peer else None,
                     "peer_pid": peer.pid if peer else None, "path": request.path})
                raise PeerRefused("connections are accepted only from the owner's own user id")
            if state.busy:
                await self.refusals.record(
                    self.actor, "connection.busy", request.path,
                    "over the connection limit",
                    {"max_connections": self.guard.max_connections})
                raise Busy(
                    f"the daemon is serving its maximum of {self.guard.max_connections} "
                    "connections; retry shortly"
                )
            if "Origin" in request.headers or "Referer" in request.headers:
                try:
                    await self._audit.append_async(
                        self.actor, "browser_refused", request.path, "deny",
                        "request carried Origin/Referer", {"path": request.path})
                except Exception:
                    # The refusal stands whether or not it could be recorded; the
                    # unrecorded refusal is reported in the daemon's log instead.
                    log.exception("could not audit a browser refusal of %s %s: the request "
                                  "was refused but is not in the audit log",
                                  request.method[:16], request.path[:200])
                raise Forbidden("requests from web pages are refused (Origin or Referer header)")
            if _EXPECT_KEY in request:
                expect = request[_EXPECT_KEY]
                await self.refusals.record(
                    self.actor, "request.expectation_failed", request.path,
                    "unsupported Expect header", {"expect": expect, "path": request.path[:200]})
                raise ExpectationFailed(f"Expect: {expect!r} is not supported "
                                        "(only 100-continue)")
            if request.match_info.http_exception is not None:
                await self.refusals.record(
                    self.actor, "request.unrouted", request.path, "no such route",
                    {"method": request.method[:16], "path": request.path[:200],
                     "status": request.match_info.http_exception.status})
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
        finally:
            if state is not None:
                state.active -= 1

    def _finish_error(self, request: web.Request, exc: PacdError) -> web.Response:
        resp = error_response(exc)
        if isinstance(exc, PeerRefused | Busy | RequestTimeout | ExpectationFailed):
            resp.force_close()  # no keep-alive for refused or abandoned connections
        return resp

    def _malformed(self, peer: PeerCred | None, status: int) -> None:
        self.refusals.note(actor_for(peer.uid if peer else None), "request.malformed", "",
                           "not a valid HTTP request", {"status": status})

    def _evicted(self) -> None:
        self.refusals.note("peer:uid=unknown", "connection.evicted", "",
                           "idle connection closed to make room for a new one",
                           {"keep_idle": KEEP_IDLE})

    def _dropped(self) -> None:
        # Beyond the hard cap nothing is read, so not even the peer is known.
        self.refusals.note("peer:uid=unknown", "connection.dropped", "",
                           "over the hard connection cap; closed unanswered",
                           {"hard_cap": self.guard.hard_cap})

    def _endpoint(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        basic = Principal(level="basic") if route.level == "basic" else None
        allow_durable = route.audit != WRITTEN
        # Whoever can reach a route without a token gets the small cap.
        body_cap = min(route.max_body_bytes or self._max_body,
                       self._max_tokenless_body if basic else self._max_body)

        async def answer(request: web.Request, decision: RequestDecision | None = None
                         ) -> web.StreamResponse:
            # Basic routes need nothing beyond the peer check: no await on the hot path.
            principal = basic or await self._authorize(request, route)
            body: Any = None
            if route.request is not None:
                body = await self._read_body(request, route.request, body_cap)
            query = decode_query(route.query, request.query) if route.query else None
            call = Call(request=request, params=request.match_info, body=body, query=query,
                        principal=principal,
                        decision=decision or RequestDecision(self._audit, self.actor))
            if route.stream and decision is not None:
                # A stream answers before its handler returns: unless the handler
                # records its own decision first, the entry is written as the
                # stream's headers are about to go out (see _before_stream).
                request[_STREAM_KEY] = (route, decision, principal)
            result = await route.handler(call)
            if decision is not None and not decision.recorded:
                await self._record(route, request, decision, "allow", route.summary,
                                   _token_details(principal), durable=allow_durable)
            if isinstance(result, web.StreamResponse):
                return result
            if isinstance(result, Reply):
                return _json_response(result.body, result.status)
            return _json_response(result, route.status)

        if not route.audited:
            return answer  # the documented exemptions: no entry, no extra frame

        async def endpoint(request: web.Request) -> web.StreamResponse:
            decision = RequestDecision(self._audit, self.actor)
            try:
                return await answer(request, decision)
            except PacdError as exc:
                await self._record_refusal(route, request, decision, exc)
                raise
            except web.HTTPException as exc:
                error = _from_http(exc, request)
                await self._record_refusal(route, request, decision, error)
                raise error from None
            except (asyncio.CancelledError, ConnectionError):
                raise
            except Exception:
                log.exception("internal error on %s %s", request.method, request.path)
                error = PacdError("internal error; the daemon logged the details")
                await self._record_refusal(route, request, decision, error)
                raise error from None

        return endpoint

    async def _before_stream(self, request: web.Request,
                             response: web.StreamResponse) -> None:
        pending = request.pop(_STREAM_KEY, None)
        if pending is None:
            return
        route, decision, principal = pending
        if not decision.recorded:
            await self._record(route, request, decision, "allow", route.summary,
                               _token_details(principal), durable=route.audit != WRITTEN)

    async def _record(self, route: Route, request: web.Request, decision: RequestDecision,  # noqa: PLR0917 - one parameter per entry part
                      verdict: str, reason: str, details: dict[str, Any], *,
                      durable: bool = True) -> None:
        """Write the request's entry; a request whose entry cannot be written fails.

        ``durable=False`` only for the allow entry of a route of the *written*
        class; a refusal is always fsynced before it is answered.
        """
        target = request.match_info.get("id") or request.path
        try:
            await decision.append_async(decision.actor, route.action, target, verdict,
                                        reason, details, durable=durable)
        except AuditError:
            raise
        except Exception as exc:
            log.exception("audit write failed for %s", route.operation)
            raise AuditError("the audit log could not record this request") from exc

    async def _record_refusal(self, route: Route, request: web.Request,
                              decision: RequestDecision, exc: PacdError) -> None:
        if decision.recorded or isinstance(exc, AuditError):
            return  # the handler recorded it, or there is no audit log to record it in
        details: dict[str, Any] = {"code": exc.code, "status": exc.status, **exc.extra}
        await self._record(route, request, decision, "deny", exc.message, details)

    async def _read_body(self, request: web.Request, kind: type | RawBody, cap: int) -> Any:
        try:
            async with asyncio.timeout(self._read_timeout):
                raw = await _read_capped(request, cap)
        except TimeoutError:
            # Answered 408 and then closed (see _finish_error): the rest of a body that
            # never came cannot be skipped to reach a next request.
            raise RequestTimeout("the request body did not arrive in time") from None
        if not raw.strip():
            data: Any = {}
        else:
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise MalformedRequest(f"the body is not valid JSON: {exc}") from None
            except RecursionError:
                # Nesting deeper than the parser's stack: no request needs that.
                raise MalformedRequest("the body is nested too deeply to be read") from None
            # A lone surrogate can only arrive as a \u escape: no escape, no walk.
            if b"\\u" in raw:
                refuse_surrogates(data, "body")
        if isinstance(kind, RawBody):
            if not isinstance(data, dict):
                raise InvalidRequest(f"body: expected a {kind.name} object")
            return data
        return decode(kind, data)


async def _read_capped(request: web.Request, cap: int) -> bytes:
    """The body, refused (413) as soon as it is known to exceed ``cap`` bytes."""
    if request.content_length is not None and request.content_length > cap:
        raise PayloadTooLarge(f"the request body is larger than this route accepts "
                              f"({cap} bytes)", max_body_bytes=cap)
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > cap:
            raise PayloadTooLarge(f"the request body is larger than this route accepts "
                                  f"({cap} bytes)", max_body_bytes=cap)
    return bytes(body)


def _token_details(principal: Principal) -> dict[str, Any]:
    if principal.token_id is None:
        return {}
    return {"token_id": principal.token_id, "level": principal.level}


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
