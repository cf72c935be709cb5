"""The one request wrapper of both sockets: parse, authorise, handle, record, answer.

For each :class:`Route` it builds the aiohttp handler that, in order, checks
the caller's level (the owner socket's tokens; an agent socket's routes are
basic — the socket is the identity), reads and decodes the body within its
cap and deadline, hands the handler a :class:`Call` carrying the request's
:class:`RequestDecision`, and answers. A handler records its decision through
``call.decision`` where the moment matters (before a write, inside a
transaction); otherwise the wrapper records it: an allow after the handler
returned (in the route's durability class), a deny when it raised. Whatever
happens, one entry per request, and a request whose entry cannot be written
fails with ``audit_unavailable`` instead. Errors are answered in one shape
(:func:`error_response`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from pacd.api.decisions import AuditAppender, RequestDecision
from pacd.api.peercred import PeerCred
from pacd.api.route import WRITTEN, Call, Json, Principal, Reply, Route
from pacd.core.fields import refuse_surrogates
from pacd.errors import (
    AuditError,
    InvalidRequest,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    PacdError,
    PayloadTooLarge,
    RateLimited,
)
from pacd.messages import RawBody, decode, decode_query, encode

log = logging.getLogger("pacd.api")

#: request key of a stream whose decision entry is due when its headers go out
_STREAM_KEY: web.RequestKey[tuple[Route, RequestDecision, Principal]] = web.RequestKey(
    "pacd.stream_decision")

Authorizer = Callable[[web.Request, Route], Awaitable[Principal]]
Endpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestTimeout(InvalidRequest):
    code = "request_timeout"
    status = 408


def error_response(exc: PacdError) -> web.Response:
    body = json.dumps(exc.to_wire()).encode()
    response = web.Response(body=body, status=exc.status, content_type="application/json")
    if isinstance(exc, RateLimited) and "retry_after" in exc.extra:
        # The header HTTP clients already honour, besides the body's retry_after.
        response.headers["Retry-After"] = str(exc.extra["retry_after"])
    return response


def json_response(payload: Any, status: int) -> web.Response:
    if isinstance(payload, Json):
        data = payload.data
    else:
        data = json.dumps(encode(payload), separators=(",", ":")).encode()
    return web.Response(body=data, status=status, content_type="application/json")


async def _basic_only(request: web.Request, route: Route) -> Principal:
    raise RuntimeError(f"route {route.operation} needs a token but its socket has none")


class RouteWrapper:
    """Makes the aiohttp handler of each route of one socket."""

    def __init__(self, audit: AuditAppender, actor: str, *,
                 authorize: Authorizer = _basic_only,
                 peer_of: Callable[[web.Request], PeerCred | None] = lambda _request: None,
                 max_body_bytes: int = 0,
                 max_tokenless_body_bytes: int = 0, read_timeout_s: float = 30.0) -> None:
        self._audit = audit
        self.actor = actor
        self._authorize = authorize
        #: the connected process as the socket's guard saw it (approvals name it)
        self._peer_of = peer_of
        self._max_body = max_body_bytes
        self._max_tokenless_body = min(max_tokenless_body_bytes, max_body_bytes)
        self._read_timeout = read_timeout_s

    def endpoint(self, route: Route) -> Endpoint:
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
                        decision=decision or RequestDecision(self._audit, self.actor),
                        peer=self._peer_of(request))
            if route.stream and decision is not None:
                # A stream answers before its handler returns: unless the handler
                # records its own decision first, the entry is written as the
                # stream's headers are about to go out (see before_stream).
                request[_STREAM_KEY] = (route, decision, principal)
            result = await route.handler(call)
            if decision is not None and not decision.recorded:
                await self._record(route, request, decision, "allow", route.summary,
                                   _token_details(principal), durable=allow_durable)
            if isinstance(result, web.StreamResponse):
                return result
            if isinstance(result, Reply):
                return json_response(result.body, result.status)
            return json_response(result, route.status)

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
                error = from_http(exc, request)
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

    async def before_stream(self, request: web.Request,
                            response: web.StreamResponse) -> None:
        """``on_response_prepare``: a stream's entry, unless its handler wrote one."""
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
            # Answered 408 and then closed (see the server): the rest of a body that
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


def from_http(exc: web.HTTPException, request: web.Request) -> PacdError:
    if exc.status == 404:
        return NotFound(f"no such route: {request.method} {request.path}")
    if exc.status == 405:
        return MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
    if exc.status == 413:
        return PayloadTooLarge("the request body is larger than the daemon accepts")
    if exc.status == 400:
        return MalformedRequest(exc.reason or "bad request")
    return PacdError(exc.reason or "request failed")
