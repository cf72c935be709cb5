"""What the owner API does with plugins beyond approving them: list, start, uninstall.

Kept out of the route table so the routes stay thin: each function blocks and
is called in a worker thread (``start_approved_plugin`` excepted, which hands
its Podman work to one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pacd import messages as m
from pacd.api.services import Services
from pacd.approvals import Approval
from pacd.core.plugins import parse_plugin_schema
from pacd.errors import NotFound, PacdError, SpecError
from pacd.plugins.runner import PENDING
from pacd.registry import ContainerRecord

log = logging.getLogger("pacd.plugins")

PLUGIN_INSTALL = "plugin.install"


def plugin_list(services: Services, record: ContainerRecord) -> m.PluginStateList:
    """Approved plugins with their runtime state, then the ones awaiting approval."""
    out: list[m.PluginStateView] = []
    if services.lifecycle is not None:
        out += services.lifecycle.plugin_states(record)
    else:
        out += [m.PluginStateView(id=p.plugin_id, name=p.name, version=p.version,
                                  agent=p.agent, state="approved",
                                  reason="no container runtime", image=p.image,
                                  image_digest=p.image_digest, approval_id=p.approval_id)
                for p in services.registry.plugins(record.id)]
    for approval in services.approvals.recent():
        body = approval.body
        if (approval.kind != PLUGIN_INSTALL or approval.state != "pending"
                or body.get("container_id") != record.id):
            continue
        try:
            schema = parse_plugin_schema(body["schema"])
        except (SpecError, KeyError):
            continue  # cannot happen for a payload pacd wrote; never shown half
        out.append(m.PluginStateView(
            id=schema.id, name=schema.name, version=schema.version, agent=str(body["agent"]),
            state=PENDING, reason=f"waiting for the owner's approval {approval.id}",
            image=str(body.get("image", "")), image_digest=str(body.get("image_digest", "")),
            approval_id=approval.id))
    return m.PluginStateList(plugins=out)


async def start_approved_plugin(services: Services, approval: Approval) -> None:
    """Start a plugin just approved, if its container's agents run. The approval
    stands whatever happens here: a plugin that cannot start is listed as refused
    or failed with the reason (and audited by the runner)."""
    lifecycle = services.lifecycle
    if lifecycle is None or not approval.body.get("image"):
        return
    try:
        record = await asyncio.to_thread(services.registry.get,
                                         str(approval.body["container_id"]))
        await asyncio.to_thread(lifecycle.sync_plugins, record)
    except PacdError as exc:
        log.warning("approved plugin not started now: %s", exc.message)


def uninstall_plugin(services: Services, append: Callable[..., Any], actor: str,
                     record: ContainerRecord, name: str, *, token_id: str | None
                     ) -> m.PluginRemoved:
    """Uninstall the plugin ``name`` (its id, or its name) for every agent it was
    approved for: audited first, then its containers are removed (in-flight calls
    end with them), then the record — so a failure half way leaves a plugin the
    owner can uninstall again, never a record without a decision."""
    matches = [p for p in services.registry.plugins(record.id)
               if name in (p.plugin_id, p.name, p.model().slug)]
    if not matches:
        raise NotFound(f"container {record.name!r} has no plugin {name!r}")
    plugin_id = matches[0].plugin_id
    matches = [p for p in matches if p.plugin_id == plugin_id]
    append(actor, "plugin.uninstall", record.id, "allow",
           f"plugin {matches[0].name!r} uninstalled",
           {"plugin_id": plugin_id, "agents": [p.agent for p in matches],
            "token_id": token_id})
    for p in matches:
        if services.lifecycle is not None and p.image:
            services.lifecycle.remove_plugin(record, p)
        services.registry.remove_plugin(record.id, p.plugin_id, p.agent)
    services.events.publish("plugin.state", container_id=record.id, plugin_id=plugin_id,
                            state="removed")
    return m.PluginRemoved(container_id=record.id, plugin_id=plugin_id,
                           agents=[p.agent for p in matches], removed=True)
