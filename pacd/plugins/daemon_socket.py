"""A running plugin's own socket to the daemon: who it is, and the data it may touch.

The daemon serves it at ``/run/pacd-plugin/pacd.sock`` in the plugin's
container (``pacd.sock`` next to the plugin's own ``plugin.sock``), with the
agent socket's machinery — every decision audited, only processes in the
plugin's container served — but as the plugin (actor
``plugin:<container-id>/<plugin-id>``) and with less: ``GET /v1/whoami`` and
the data routes, for the concerns of the agent the plugin was approved for,
within its ``maxDataAccess`` (``none``: nothing, ``readOnly``: reads,
``readWrite``: reads and writes — never more than that agent may do).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pacd.agents.resources.base import AgentContext, AgentIdentity, AgentResource
from pacd.agents.resources.data import DataRoutes
from pacd.agents.resources.identity import IdentityRoutes
from pacd.agents.server import AgentRoutes
from pacd.core.models import AgentDomain, DataAccessLevel, PersonalAIContainer

DAEMON_SOCKET_NAME = "pacd.sock"


@dataclass(frozen=True)
class PluginIdentity(AgentIdentity):
    """The agent a plugin was approved for, and the plugin acting for it."""

    plugin_id: str = ""

    @property
    def actor(self) -> str:
        return f"plugin:{self.container_id}/{self.plugin_id}"


def socket_key(plugin_id: str, agent: str) -> str:
    """The plugin's key among the daemon's sockets; the ':' keeps it apart from
    every agent name."""
    return f"plugin:{plugin_id}:{agent}"


class PluginData(DataRoutes):
    """The agent's data routes, as the plugin: within its ``maxDataAccess`` and never
    beyond what the agent it acts for may do."""

    def __init__(self, ctx: AgentContext, identity: PluginIdentity,
                 container: PersonalAIContainer, member: AgentDomain,
                 max_access: DataAccessLevel) -> None:
        super().__init__(ctx, identity, container, member)
        self.plugin_id = identity.plugin_id
        self.max_access = max_access

    @property
    def who(self) -> str:
        return f"plugin {self.plugin_id!r} (for agent {self.me.agent!r})"

    def may_read(self, concern: str) -> bool:
        return self.max_access is not DataAccessLevel.none and super().may_read(concern)

    def may_write(self, concern: str) -> bool:
        return (self.max_access.rank >= DataAccessLevel.readWrite.rank
                and super().may_write(concern))


class PluginWhoami(IdentityRoutes):
    """``GET /v1/whoami`` as the plugin sees it: itself, the agent, its ceiling."""

    def __init__(self, ctx: AgentContext, identity: PluginIdentity,
                 container: PersonalAIContainer, member: AgentDomain,
                 max_access: DataAccessLevel) -> None:
        super().__init__(ctx, identity, container, member)
        self._whoami = json.dumps({
            "container": container.id,
            "container_name": container.name,
            "plugin": identity.plugin_id,
            "agent": identity.agent,
            "max_data_access": max_access.value,
            "concerns": [c.name for c in container.concerns_of(identity.agent)],
        }, separators=(",", ":")).encode()


class PluginSocketRoutes(AgentRoutes):
    """A plugin's socket: the agent socket's machinery with whoami and data only."""

    def __init__(self, ctx: AgentContext, identity: PluginIdentity,
                 container: PersonalAIContainer, max_access: DataAccessLevel) -> None:
        self.plugin = identity
        self.max_access = max_access  # read by resources(), which super() calls
        super().__init__(ctx, identity, container)

    def resources(self, ctx: AgentContext, identity: AgentIdentity,
                  container: PersonalAIContainer, member: AgentDomain) -> list[AgentResource]:
        return [PluginWhoami(ctx, self.plugin, container, member, self.max_access),
                PluginData(ctx, self.plugin, container, member, self.max_access)]
