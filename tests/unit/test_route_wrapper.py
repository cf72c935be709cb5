"""The request wrapper both sockets share: one entry per request, in the route's class.

Real aiohttp on a real listening socket, a real audit log on SQLite; the routes
are small handlers written for the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pacd.api.route import WRITTEN, Call, Route
from pacd.api.wrapper import RouteWrapper, error_response
from pacd.audit import AuditEntry, AuditLog
from pacd.errors import Forbidden, PacdError, RateLimited

KEY = bytes(range(32))
ACTOR = "owner:uid=4242"
#: the writer's own deferred fsync never happens during a test
NEVER_S = 3600.0


async def _ok(call: Call) -> dict[str, Any]:
    return {}


async def _forbidden(call: Call) -> dict[str, Any]:
    raise Forbidden("not for you")


@web.middleware
async def _answer_errors(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
    """What both sockets' middlewares do with a refusal: answer it in the one shape."""
    try:
        return await handler(request)
    except PacdError as exc:
        return error_response(exc)


def _serve(log: AuditLog, routes: list[Route],
           exercise: Callable[[TestClient[web.Request, web.Application]], Awaitable[None]]
           ) -> list[AuditEntry]:
    """Serve ``routes`` through the wrapper, run ``exercise``, return the entries."""

    async def run() -> None:
        wrapper = RouteWrapper(log, ACTOR)
        app = web.Application(middlewares=[_answer_errors])
        app.on_response_prepare.append(wrapper.before_stream)
        for route in routes:
            app.router.add_route(route.method, route.path, wrapper.endpoint(route))
        async with TestClient(TestServer(app)) as client:
            await exercise(client)

    asyncio.run(run())
    return log.entries(0, 100)


def test_a_written_class_read_is_answered_before_its_fsync_and_a_durable_act_after_it(
        tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit.sqlite3", KEY, None, written_sync_s=NEVER_S)
    synced: dict[str, int] = {}

    async def exercise(client: TestClient[web.Request, web.Application]) -> None:
        assert (await client.get("/read")).status == 200
        synced["after_read"] = log.synced_seq
        assert (await client.post("/act")).status == 200
        synced["after_act"] = log.synced_seq

    try:
        entries = _serve(log, [
            Route("GET", "/read", "read", "a read of metadata", _ok, action="thing.list",
                  audit=WRITTEN),
            Route("POST", "/act", "act", "a change", _ok, action="thing.change"),
        ], exercise)
    finally:
        log.close()
    read, act = entries
    assert (read.action, read.decision, act.action, act.decision) == (
        "thing.list", "allow", "thing.change", "allow")
    assert synced["after_read"] < read.seq  # answered while only written
    assert synced["after_act"] >= act.seq  # answered after its fsync


def test_a_refused_read_of_the_written_class_is_fsynced_before_its_answer(
        tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit.sqlite3", KEY, None, written_sync_s=NEVER_S)
    synced: list[int] = []

    async def exercise(client: TestClient[web.Request, web.Application]) -> None:
        assert (await client.get("/read")).status == 403
        synced.append(log.synced_seq)

    try:
        entries = _serve(log, [Route("GET", "/read", "read", "a read", _forbidden,
                                     action="thing.list", audit=WRITTEN)], exercise)
    finally:
        log.close()
    [refusal] = entries
    assert (refusal.decision, refusal.details["code"]) == ("deny", "forbidden")
    assert synced == [refusal.seq]


def test_an_entry_in_the_requesters_name_written_beside_the_request_is_not_its_decision(
        tmp_path: Path) -> None:
    # Written straight to the log (as an approval expired on the way would be),
    # in the same actor's name: the request's own decision is still recorded.
    log = AuditLog.open(tmp_path / "audit.sqlite3", KEY, None)

    async def beside(call: Call) -> dict[str, Any]:
        await log.append_async(ACTOR, "thing.expire", "other", "deny", "expired")
        return {}

    async def exercise(client: TestClient[web.Request, web.Application]) -> None:
        assert (await client.post("/act")).status == 200

    try:
        entries = _serve(log, [Route("POST", "/act", "act", "a change", beside,
                                     action="thing.change")], exercise)
    finally:
        log.close()
    assert [(e.action, e.decision) for e in entries] == [
        ("thing.expire", "deny"), ("thing.change", "allow")]


def test_a_decision_the_handler_recorded_is_the_requests_only_entry(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit.sqlite3", KEY, None)

    async def decided_then_failed(call: Call) -> dict[str, Any]:
        await call.decision.record("thing.change", "t", "allow", "changed")
        raise Forbidden("the outcome failed after the decision")

    async def decided(call: Call) -> dict[str, Any]:
        await call.decision.record("thing.change", "u", "deny", "refused by the handler")
        return {}

    async def exercise(client: TestClient[web.Request, web.Application]) -> None:
        assert (await client.post("/fails")).status == 403
        assert (await client.post("/ok")).status == 200

    try:
        entries = _serve(log, [
            Route("POST", "/fails", "fails", "a change", decided_then_failed,
                  action="thing.change"),
            Route("POST", "/ok", "ok", "a change", decided, action="thing.change"),
        ], exercise)
    finally:
        log.close()
    assert [(e.target, e.decision) for e in entries] == [("t", "allow"), ("u", "deny")]


def test_a_rate_limited_refusal_says_when_to_retry_in_the_header_and_the_body(
        tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit.sqlite3", KEY, None)

    async def limited(call: Call) -> dict[str, Any]:
        raise RateLimited("too many calls; retry in 3 s", retry_after=3)

    async def unlimited(call: Call) -> dict[str, Any]:
        raise RateLimited("too many calls")

    async def exercise(client: TestClient[web.Request, web.Application]) -> None:
        answer = await client.post("/limited")
        assert (answer.status, answer.headers.get("Retry-After")) == (429, "3")
        assert (await answer.json())["error"]["retry_after"] == 3
        # No promise in the error, none in the header.
        bare = await client.post("/unlimited")
        assert (bare.status, bare.headers.get("Retry-After")) == (429, None)

    try:
        entries = _serve(log, [
            Route("POST", "/limited", "limited", "a call", limited, action="thing.call"),
            Route("POST", "/unlimited", "unlimited", "a call", unlimited,
                  action="thing.call"),
        ], exercise)
    finally:
        log.close()
    assert [(e.decision, e.details["code"]) for e in entries] == [
        ("deny", "rate_limited"), ("deny", "rate_limited")]
