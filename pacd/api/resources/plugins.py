"""Plugins: submit one for approval, and install it once the owner approved."""

from __future__ import annotations

from functools import partial
from typing import Any

from pacd import messages
from pacd.api.resources.common import in_thread
from pacd.api.route import Call, Reply, Route
from pacd.api.services import Services
from pacd.approvals import Approval, iso
from pacd.core.plugins import parse_plugin_schema, validate_plugin
from pacd.core.rules import Action, required_level
from pacd.errors import NotFound, PluginRejected, SpecError, TooMany

PLUGIN_INSTALL = "plugin.install"
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
                  status=202, errors=(NotFound, PluginRejected, TooMany),
                  action="plugin.submit"),
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
        summary = (f"install plugin {schema.name} {schema.version} for agent {body.agent} "
                   f"in container {record.name}")
        approval = await in_thread(
            partial(self.services.approvals.submit, record=call.decision,
                    process=call.process()), PLUGIN_INSTALL,
            {"container_id": record.id, "container_name": record.name, "agent": body.agent,
             "schema": schema.to_json()},
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
                                                      now=self.services.clock.wall())
        return {"container_id": record.id, "plugin_id": plugin.plugin_id,
                "agent": plugin.agent, "state": plugin.state}
