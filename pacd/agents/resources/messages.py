"""Messages between the agents of one container: send to another, receive one's own."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from pacd.agents.inbox import MAX_BATCH, MAX_PENDING
from pacd.agents.resources.base import (
    MAX_KEY_BYTES,
    MAX_MESSAGE_BYTES,
    AgentResource,
    float_param,
    name_problem,
)
from pacd.api.route import Call, Reply, Route
from pacd.core.fields import refuse_surrogates
from pacd.core.rules import can_connect
from pacd.errors import Busy, Forbidden, InvalidRequest, MalformedRequest

DEFAULT_WAIT_S = 25.0
MAX_WAIT_S = 60.0


class MessageRoutes(AgentResource):
    def routes(self) -> list[Route]:
        return [
            Route("POST", "/v1/agents/{agent}/messages", "send_message",
                  "send a message to another agent", self.send_message, status=202,
                  action="agent.message.send"),
            Route("GET", "/v1/messages", "receive_messages",
                  "this agent's messages, waiting for one up to ?timeout seconds",
                  self.receive_messages, action="agent.messages.receive"),
        ]

    async def send_message(self, call: Call) -> Reply:
        action = "agent.message.send"
        to = call.params["agent"]
        problem = name_problem("agent", to)
        if problem is not None:
            raise await self.refuse(call, action, to[:MAX_KEY_BYTES], InvalidRequest(problem))
        if not can_connect(self.container, self.me.agent, to):
            raise await self.refuse(call, action, to, Forbidden(
                f"agent {self.me.agent!r} may not send messages to {to!r}"))
        raw = await self.read_body(call, action, to, MAX_MESSAGE_BYTES)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise await self.refuse(call, action, to, MalformedRequest(
                f"a message must be JSON: {exc}")) from None
        except RecursionError:
            raise await self.refuse(call, action, to, MalformedRequest(
                "a message must be JSON nested less deeply")) from None
        try:
            refuse_surrogates(body, "body")  # it is stored as UTF-8: it must be text
        except InvalidRequest as exc:
            raise await self.refuse(call, action, to, exc) from None
        pending = await asyncio.to_thread(self.ctx.inbox.pending, self.me.container_id, to)
        if pending >= MAX_PENDING:
            raise await self.refuse(call, action, to, Busy(
                f"agent {to!r} has {pending} undelivered messages; retry later"))
        await self.decide(call, action, to, True, "message accepted", {"bytes": len(raw)})
        message_id = await asyncio.to_thread(self.ctx.inbox.put, self.me.container_id, to,
                                             self.me.agent, body, self.ctx.clock())
        self.ctx.doorbell.ring(self.me.container_id, to)
        return Reply({"id": message_id, "to": to, "accepted": True}, 202)

    async def receive_messages(self, call: Call) -> web.StreamResponse:
        action = "agent.messages.receive"
        request = call.request
        try:
            wait = float_param(request, "timeout", DEFAULT_WAIT_S, 0.0, MAX_WAIT_S)
            limit = int(float_param(request, "limit", MAX_BATCH, 1, MAX_BATCH))
        except InvalidRequest as exc:
            raise await self.refuse(call, action, self.me.agent, exc) from None
        cid, me = self.me.container_id, self.me.agent
        bell = self.ctx.doorbell.arm(cid, me)
        try:
            messages = await asyncio.to_thread(self.ctx.inbox.peek, cid, me, limit)
            if not messages and wait > 0 and await self.ctx.doorbell.wait(cid, me, bell, wait):
                messages = await asyncio.to_thread(self.ctx.inbox.peek, cid, me, limit)
        finally:
            self.ctx.doorbell.disarm(cid, me, bell)
        await self.decide(call, action, me, True, f"{len(messages)} messages delivered",
                          {"ids": [message.id for message in messages]})
        payload = json.dumps([message.to_json() for message in messages],
                             separators=(",", ":")).encode()
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload)
        await response.write_eof()
        # Only now, with the whole answer written out, are the messages removed: a
        # failed write above leaves them for the next call (at-least-once).
        await asyncio.to_thread(self.ctx.inbox.remove, cid, me,
                                [message.id for message in messages])
        return response
