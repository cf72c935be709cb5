"""``/v1/data/{concern}/{key}``: the agent's sealed data, read, written and deleted
within what the container's policy lets it reach."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from pacd.agents.resources.base import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    AgentResource,
    name_problem,
)
from pacd.api.route import Call, Route
from pacd.errors import Forbidden, IntegrityError, InvalidRequest, NotFound, QuotaExceeded

DATA_PATH = "/v1/data/{concern}/{key:.+}"


class DataRoutes(AgentResource):
    def routes(self) -> list[Route]:
        return [
            Route("GET", DATA_PATH, "get_data", "read a value", self.get_data,
                  action="agent.data.read"),
            Route("PUT", DATA_PATH, "put_data", "write a value", self.put_data,
                  action="agent.data.write"),
            Route("DELETE", DATA_PATH, "delete_data", "delete a value", self.delete_data,
                  action="agent.data.delete"),
        ]

    @staticmethod
    def _data_target(call: Call) -> tuple[str, str, str]:
        concern = call.params["concern"]
        key = call.params["key"]
        return concern, key, f"{concern}/{key}"

    async def _check_names(self, call: Call, action: str, target: str, concern: str,
                           key: str) -> None:
        problems = [p for p in (name_problem("concern", concern), name_problem("key", key))
                    if p is not None]
        if problems:
            raise await self.refuse(call, action, target[:MAX_KEY_BYTES],
                                    InvalidRequest("; ".join(problems), problems))

    async def get_data(self, call: Call) -> web.Response:
        action = "agent.data.read"
        concern, key, target = self._data_target(call)
        await self._check_names(call, action, target, concern, key)
        if not self.may_read(concern):
            raise await self.refuse(call, action, target, Forbidden(
                f"{self.who} may not read concern {concern!r}"))
        cid = self.me.container_id
        # Most reads are fetched right here: a point read on a free store connection
        # and the opening of a small value cost less than a hop to a worker thread,
        # which on a busy socket was most of a read's cost. A busy store or a large
        # value goes to a thread first. The entry follows the fetch, because the
        # decision depends on it: a value that fails its integrity check (an edited
        # index row, an older ciphertext put back) is a refusal, audited as one.
        # Either way the value leaves only once its entry is durable.
        fetched: bytes | BaseException | None
        try:
            fetched = self.ctx.data.get_if_quick(cid, concern, key)
        except Exception as exc:  # answered below, once the entry is written
            fetched = exc
        if fetched is None:
            try:
                fetched = await asyncio.to_thread(self.ctx.data.get, cid, concern, key)
            except Exception as exc:
                fetched = exc
        if isinstance(fetched, IntegrityError):
            raise await self.refuse(call, action, target, fetched)
        await self.decide(call, action, target, True, "read")
        if isinstance(fetched, NotFound):
            raise NotFound(f"no value {key!r} in concern {concern!r}")
        if isinstance(fetched, BaseException):
            raise fetched
        return web.Response(body=fetched, content_type="application/octet-stream")

    async def put_data(self, call: Call) -> web.Response:
        action = "agent.data.write"
        concern, key, target = self._data_target(call)
        await self._check_names(call, action, target, concern, key)
        if not self.may_write(concern):
            raise await self.refuse(call, action, target, Forbidden(
                f"{self.who} may not write concern {concern!r}"))
        value = await self.read_body(call, action, target, MAX_VALUE_BYTES)
        try:
            await asyncio.to_thread(self.ctx.data.check_quota, self.me.container_id, concern,
                                    key, len(value))
        except QuotaExceeded as exc:
            raise await self.refuse(call, action, target, exc, dict(exc.extra)) from None
        await self.decide(call, action, target, True, "write", {"bytes": len(value)})
        await asyncio.to_thread(self.ctx.data.put, self.me.container_id, concern, key, value,
                                self.ctx.clock())
        return web.Response(status=204)

    async def delete_data(self, call: Call) -> web.Response:
        action = "agent.data.delete"
        concern, key, target = self._data_target(call)
        await self._check_names(call, action, target, concern, key)
        if not self.may_write(concern):
            raise await self.refuse(call, action, target, Forbidden(
                f"{self.who} may not delete in concern {concern!r}"))
        await self.decide(call, action, target, True, "delete")
        # Deleting what is not there leaves the same state: 204 either way.
        with contextlib.suppress(NotFound):
            await asyncio.to_thread(self.ctx.data.delete, self.me.container_id, concern, key)
        return web.Response(status=204)
