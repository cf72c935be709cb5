"""Plugins: submit one for approval, install it once the owner approved, list and
uninstall them (their containers are run by :mod:`pacd.plugins`)."""

from __future__ import annotations

from functools import partial
from typing import Any

from pacd import messages
from pacd.api.resources.common import in_thread, runtime_of
from pacd.api.route import WRITTEN, Call, Reply, Route
from pacd.api.services import Services
from pacd.approvals import Approval, iso
from pacd.core.plugins import parse_plugin_schema, validate_plugin
from pacd.core.rules import Action, required_level
from pacd.errors import NotFound, PluginRejected, RuntimeUnavailable, SpecError, TooMany
from pacd.plugins.api import PLUGIN_INSTALL, plugin_list, uninstall_plugin

__all__ = ["PLUGIN_INSTALL", "PluginRoutes"]
#: reasons quoted in a rejection's message (all kept ones are in its ``errors``)
MESSAGE_REASONS = 10


class PluginRoutes:
    def __init__(self, services: Services) -> None:
        self.services = services

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/v1/containers/{id}/plugins", "submit_plugin",
                  "validate a plugin and queue it for approval", self.submit_plugin,
                  level=required_level(Action.submit_plugin).value,
                  request=messages.PluginSubmit, response=messages.ApprovalAccepted,
                  status=202, errors=(NotFound, PluginRejected, TooMany, RuntimeUnavailable),
                  action="plugin.submit"),
            Route("GET", "/v1/containers/{id}/plugins", "list_plugins",
                  "its plugins: pending, approved, running, stopped, refused or failed",
                  self.list_plugins, level=required_level(Action.list_plugins).value,
                  response=messages.PluginStateList, errors=(NotFound,),
                  action="plugin.list", audit=WRITTEN),
            Route("DELETE", "/v1/containers/{id}/plugins/{name}", "uninstall_plugin",
                  "uninstall a plugin (by id or name): its container is removed",
                  self.uninstall_plugin, level=required_level(Action.uninstall_plugin).value,
                  response=messages.PluginRemoved, errors=(NotFound, RuntimeUnavailable),
                  action="plugin.uninstall"),
        ]

    async def submit_plugin(self, call: Call) -> Reply:
        body: messages.PluginSubmit = call.body
        record = await in_thread(self.services.registry.get, call.params["id"])
        container = record.model()
        errors: list[str] = []
        omitted = 0
        schema = None
        try:
            schema = parse_plugin_schema(body.schema)
        except SpecError as exc:
            errors += [f"schema.{e}" if not e.startswith("schema") else e
                       for e in (exc.reasons or [exc.message])]
            omitted = exc.omitted
        agent = container.agent(body.agent)
        if agent is None:
            errors.append(f"agent: container {record.name!r} has no agent {body.agent!r}")
        if schema is not None:
            errors += validate_plugin(schema, container.policy, agent, written=body.schema)
        name = schema.name if schema is not None else str(body.schema.get("name", "?"))[:100]
        if errors:
            rejected = PluginRejected("", errors=errors, omitted=omitted)
            count = len(rejected.reasons) + rejected.omitted
            shown = "; ".join(rejected.errors[:MESSAGE_REASONS])
            more = "; …" if len(rejected.errors) > MESSAGE_REASONS else ""
            await call.decision.record("plugin.submit", record.id, "deny",
                                       f"plugin {name!r} rejected ({count} reasons)",
                                       {"agent": body.agent, "errors": rejected.errors})
            raise PluginRejected(f"plugin {name!r} was rejected ({count} reasons): "
                                 f"{shown}{more}", errors=errors, omitted=omitted)
        assert schema is not None
        summary = (f"install plugin {schema.title} for agent {body.agent} "
                   f"in container {record.name}")
        payload: dict[str, Any] = {
            "container_id": record.id, "container_name": record.name, "agent": body.agent,
            "schema": schema.to_json()}
        if body.image is not None:
            # The digest is what the owner signs: the plugin runs only as this content.
            digest = await in_thread(runtime_of(self.services).plugin_image_digest, body.image)
            payload |= {"image": body.image, "image_digest": digest}
            summary += f", running image {body.image} ({digest})"
        approval = await in_thread(
            partial(self.services.approvals.submit, record=call.decision,
                    process=call.process()), PLUGIN_INSTALL, payload,
            call.decision.actor, summary, float(self.services.config.approval_ttl_s))
        return Reply(messages.ApprovalAccepted(approval_id=approval.id,
                                               required_level=approval.required_level.value,
                                               expires_at=iso(approval.expires_at) or ""), 202)

    def execute_plugin_install(self, conn: Any, approval: Approval) -> dict[str, Any]:
        body = approval.body
        record = self.services.registry.get(str(body["container_id"]))
        container = record.model()
        schema = parse_plugin_schema(body["schema"])
        # The policy is checked again at execution: it must still allow this plugin.
        errors = validate_plugin(schema, container.policy, container.agent(str(body["agent"])))
        if errors:
            raise PluginRejected("the plugin no longer passes validation", errors=errors)
        plugin = self.services.registry.record_plugin(conn, record.id, str(body["agent"]),
                                                      schema=schema, approval_id=approval.id,
                                                      now=self.services.clock.wall(),
                                                      image=str(body.get("image", "")),
                                                      image_digest=str(body.get("image_digest",
                                                                                "")))
        return {"container_id": record.id, "plugin_id": plugin.plugin_id,
                "agent": plugin.agent, "state": plugin.state}

    async def list_plugins(self, call: Call) -> messages.PluginStateList:
        record = await in_thread(self.services.registry.get, call.params["id"])
        return await in_thread(plugin_list, self.services, record)

    async def uninstall_plugin(self, call: Call) -> messages.PluginRemoved:
        record = await in_thread(self.services.registry.get, call.params["id"])
        return await in_thread(
            partial(uninstall_plugin, token_id=call.principal.token_id), self.services,
            call.decision.append, call.decision.actor, record, call.params["name"])
