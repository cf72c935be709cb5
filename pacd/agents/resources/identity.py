"""``GET /v1/whoami``: the identity of this socket, as the agent sees it."""

from __future__ import annotations

import json

from aiohttp import web

from pacd.agents.resources.base import AgentContext, AgentIdentity, AgentResource
from pacd.api.route import Call, Route
from pacd.core.models import AgentDomain, PersonalAIContainer


class IdentityRoutes(AgentResource):
    def __init__(self, ctx: AgentContext, identity: AgentIdentity,
                 container: PersonalAIContainer, member: AgentDomain) -> None:
        super().__init__(ctx, identity, container, member)
        self._whoami = json.dumps({
            "container": container.id,
            "container_name": container.name,
            "agent": member.name,
            "capabilities": [c.value for c in member.capabilities],
            "concerns": [c.name for c in container.concerns_of(member.name)],
        }, separators=(",", ":")).encode()

    def routes(self) -> list[Route]:
        return [Route("GET", "/v1/whoami", "whoami", "the identity of this socket",
                      self.whoami, action="agent.whoami")]

    async def whoami(self, call: Call) -> web.Response:
        await self.decide(call, "agent.whoami", self.me.agent, True, "identity of this socket")
        return web.Response(body=self._whoami, content_type="application/json")
