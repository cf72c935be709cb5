"""``/v1/plugins/{plugin}/{path}``: calls to a plugin of this agent, any method.

The daemon is the only way to a plugin (see :mod:`pacd.plugins.calls`): the call
is routed only to a running plugin approved for this agent that declares the
endpoint, within its token bucket, and carries the caller's identity in
``X-Pacd-Agent``, set by the daemon and never taken from the agent.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pacd.agents.resources.base import MAX_KEY_BYTES, AgentResource
from pacd.api.route import Call, Route
from pacd.errors import Forbidden, NotFound, PluginUnavailable, RateLimited
from pacd.plugins.calls import MAX_PLUGIN_BODY


class PluginRoutes(AgentResource):
    def routes(self) -> list[Route]:
        return [Route("*", "/v1/plugins/{plugin}/{path:.*}", "call_plugin",
                      "call a plugin of this agent", self.call_plugin,
                      action="agent.plugin.call")]

    async def call_plugin(self, call: Call) -> web.Response:
        action = "agent.plugin.call"
        request = call.request
        ref = call.params["plugin"]
        path = "/" + call.params["path"]
        target = f"{ref}{path}"[:MAX_KEY_BYTES]
        method = request.method[:16]
        calls = self.ctx.plugins
        if calls is None:
            raise await self.refuse(call, action, target, NotFound(
                f"plugin {ref[:100]!r} is not running"), {"method": method})
        try:
            route = await calls.route(self.me.container_id, self.me.agent, ref, method, path)
            calls.take(route, self.me.agent)
        except (NotFound, Forbidden, RateLimited) as exc:
            raise await self.refuse(call, action, target, exc, {"method": method}) from None
        details: dict[str, Any] = {"plugin_id": route.plugin_id, "endpoint": path,
                                   "method": method}
        body = await self.read_body(call, action, target, MAX_PLUGIN_BODY)
        details["bytes_in"] = len(body)
        try:
            # The caller's identity is the socket's: any X-Pacd-Agent the agent sent
            # is not forwarded (no header of the agent's is).
            answer = await calls.forward(route, method, path + (
                f"?{request.query_string}" if request.query_string else ""), body,
                content_type=request.headers.get("Content-Type"),
                caller=f"{self.me.container_id}/{self.me.agent}")
        except PluginUnavailable as exc:
            raise await self.refuse(call, action, target, exc, details) from None
        # One entry per call, durable before the agent hears the answer.
        await self.decide(call, action, target, True, f"plugin answered {answer.status}",
                          {**details, "status": answer.status, "bytes_out": len(answer.body)})
        return web.Response(status=answer.status, body=answer.body,
                            headers={"Content-Type": answer.content_type})
