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

The per-route part — level, body, handler, the request's entry, the answer — is
the wrapper both sockets share (:mod:`pacd.api.wrapper`).

Slow clients: aiohttp's keep-alive timer runs from the moment a connection is
accepted until a complete request head has arrived and is not extended by
partial data, so setting it to the header timeout drops a client that dribbles
its headers; bodies are read under their own deadline here.

Answers before the body: a refusal (a missing token, say) is often decided
from the head alone, while the client — which writes head and body
separately — is still sending its body. Closing the connection then would
break the client's write (EPIPE) on an answer that promised keep-alive, so
the rest of a small body (at most the tokenless cap, within the body deadline)
is read and discarded after the answer, as aiohttp's lingering does. A larger
or unannounced (chunked) body is not read at all: that answer says
``Connection: close`` and the connection ends with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import HttpVersion11, web

from pacd.api.decisions import AuditAppender, Coalescer, actor_for
from pacd.api.guard import KEEP_IDLE, ConnectionGuard, JsonErrorHandler
from pacd.api.owner_listener import OwnerListener
from pacd.api.peercred import PeerCred, own_uid
from pacd.api.route import Route
from pacd.api.wrapper import (
    Authorizer,
    RequestTimeout,
    RouteWrapper,
    error_response,
    from_http,
)
from pacd.errors import (
    Busy,
    Forbidden,
    InvalidRequest,
    PacdError,
    PayloadTooLarge,
    PeerRefused,
)

log = logging.getLogger("pacd.api")


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
        self._audit = audit
        self._uid = own_uid()
        self.actor = actor_for(self._uid)
        self.guard = ConnectionGuard(max_connections, on_malformed=self._malformed,
                                     on_dropped=self._dropped, on_evicted=self._evicted)
        self.wrapper = RouteWrapper(audit, self.actor, authorize=authorize,
                                    peer_of=self._peer_of,
                                    max_body_bytes=max_body_bytes,
                                    max_tokenless_body_bytes=max_tokenless_body_bytes,
                                    read_timeout_s=read_timeout_s or header_timeout_s)
        self.refusals = Coalescer(audit)
        #: the most of a body still to come that is read and discarded after an answer
        self._linger_bytes = min(max_tokenless_body_bytes, max_body_bytes)
        self.app = web.Application(client_max_size=max_body_bytes,
                                   middlewares=[self._middleware])
        self.app.on_response_prepare.append(self.wrapper.before_stream)
        for route in self.routes:
            self.app.router.add_route(route.method, route.path, self.wrapper.endpoint(route),
                                      name=route.operation, expect_handler=_expect_handler)
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            keepalive_timeout=header_timeout_s,
            # The rest of a body still arriving after a keep-alive answer is read
            # under the body deadline (see _no_broken_body); an answer that closes
            # the connection (a 408 among them) turns lingering off for it.
            lingering_time=read_timeout_s or header_timeout_s,
            shutdown_timeout=shutdown_timeout_s,
            handle_signals=False,
        )
        self._site: _GuardedSite | None = None

    def _peer_of(self, request: web.Request) -> PeerCred | None:
        state = self.guard.state_for(request.transport)
        return state.peer if state is not None else None

    # -- lifecycle -----------------------------------------------------------

    async def start(self, listener: OwnerListener) -> None:
        """Serve on ``listener`` (the owner socket, or the owner pipe on Windows)."""
        await self._runner.setup()
        self._site = _GuardedSite(self._runner, listener, self.guard)
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
        resp = await self._answer(request, handler)
        self._no_broken_body(request, resp)
        return resp

    def _no_broken_body(self, request: web.Request, resp: web.StreamResponse) -> None:
        """Decide what becomes of a body the answer did not wait for (see the module doc).

        Small and announced, on a keep-alive answer: aiohttp reads and discards it
        after the answer (its lingering), so the client's write of it completes.
        Otherwise the answer closes the connection and nothing more is read.
        """
        if request.content.is_eof():
            return
        length = request.content_length
        if (resp.keep_alive is not False and length is not None
                and length <= self._linger_bytes):
            return
        if not resp.prepared:
            resp.force_close()
        if isinstance(request.protocol, JsonErrorHandler):
            request.protocol.skip_lingering()

    async def _answer(
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
            return self._finish_error(request, from_http(exc, request))
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
        if isinstance(exc, PeerRefused | Busy | RequestTimeout | ExpectationFailed
                      | PayloadTooLarge):
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


class _GuardedSite(web.BaseSite):
    """A site on an :class:`OwnerListener` whose connections pass through the guard."""

    def __init__(self, runner: web.AppRunner, listener: OwnerListener,
                 guard: ConnectionGuard) -> None:
        super().__init__(runner)
        self._listener = listener
        self._guard = guard

    @property
    def name(self) -> str:
        return f"http://{self._listener.where}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await self._listener.serve(self._guard.wrap(server))
