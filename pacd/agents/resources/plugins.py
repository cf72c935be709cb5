"""``POST /v1/plugins/{plugin}/{path}``: calls to a plugin of this agent."""

from __future__ import annotations

from aiohttp import web

from pacd.agents.resources.base import MAX_KEY_BYTES, AgentResource
from pacd.api.route import Call, Route
from pacd.errors import NotFound


class PluginRoutes(AgentResource):
    def routes(self) -> list[Route]:
        return [Route("POST", "/v1/plugins/{plugin}/{path:.*}", "call_plugin",
                      "call a plugin of this agent", self.call_plugin,
                      action="agent.plugin.call")]

    async def call_plugin(self, call: Call) -> web.Response:
        plugin = call.params["plugin"]
        target = f"{plugin}/{call.params['path']}"[:MAX_KEY_BYTES]
        # Plugins do not run yet: say so, never pretend a call succeeded.
        raise await self.refuse(call, "agent.plugin.call", target, NotFound(
            f"plugin {plugin[:100]!r} is not running"))
