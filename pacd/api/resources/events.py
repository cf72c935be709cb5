"""Events: ``GET /v1/events``, a stream of JSON lines for as long as the client reads."""

from __future__ import annotations

import json

from aiohttp import web

from pacd import messages
from pacd.api.health import audit_event
from pacd.api.ndjson import open_stream, relay
from pacd.api.route import Call, Route
from pacd.api.services import Services
from pacd.approvals import iso


class EventRoutes:
    def __init__(self, services: Services) -> None:
        self.services = services

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/v1/events", "events", "a stream of JSON lines", self.events,
                  response=messages.Event, stream=True, action="events.subscribe"),
        ]

    async def events(self, call: Call) -> web.StreamResponse:
        request = call.request
        resp = await open_stream(request)
        sub = self.services.events.subscribe()
        try:
            first = [json.dumps({"type": "subscribed", "time": iso(
                self.services.clock.wall())}).encode() + b"\n"]
            health = self.services.audit.health()
            if health.refusing:
                # Published once at start-up, before anyone could listen: every
                # new subscriber hears it while it lasts.
                first.append(json.dumps(audit_event(health, iso(self.services.clock.wall())))
                             .encode() + b"\n")
            return await relay(request, resp, sub.get, tuple(first))
        finally:
            sub.close()
