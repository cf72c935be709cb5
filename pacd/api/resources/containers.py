"""Containers: create, list, show, start, stop, delete, and what is generated from them.

A create or delete writes its entry inside the transaction (or before the
erase) it decides; a start or stop is on record before anything runs, and an
act that then fails adds a ``.result`` entry saying so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from typing import Any

from pacd import messages
from pacd.api.resources.common import in_thread, runtime_of
from pacd.api.route import WRITTEN, Call, Json, Reply, Route
from pacd.api.services import Services
from pacd.approvals import iso
from pacd.core.generators import generate_container_config, generate_openapi_spec
from pacd.core.rules import Action, required_level
from pacd.core.spec import parse_container_spec
from pacd.errors import (
    Conflict,
    NotFound,
    PacdError,
    RuntimeFailed,
    RuntimeUnavailable,
    SpecError,
    TooMany,
)
from pacd.registry import ContainerRecord
from pacd.vault.datastore import stored_bytes

log = logging.getLogger("pacd.api")

#: what a container id looks like (uuid4 hex); no container name may look like one
CONTAINER_ID = re.compile(r"[0-9a-f]{32}")


def _level(action: Action) -> str:
    return required_level(action).value


class ContainerRoutes:
    def __init__(self, services: Services) -> None:
        self.services = services

    def routes(self) -> list[Route]:
        common = (NotFound,)
        return [
            Route("POST", "/v1/containers", "create_container", "create a container from a spec",
                  self.create_container, level=_level(Action.create_container),
                  request=messages.CONTAINER_SPEC, response=messages.ContainerView, status=201,
                  errors=(Conflict, NotFound, SpecError, TooMany), action="container.create"),
            Route("GET", "/v1/containers", "list_containers", "list containers",
                  self.list_containers, level=_level(Action.list_containers),
                  response=messages.ContainerList, action="container.list", audit=WRITTEN),
            Route("GET", "/v1/containers/{id}", "show_container", "container detail",
                  self.show_container, level=_level(Action.show_container),
                  response=messages.ContainerView, errors=common, action="container.show",
                  audit=WRITTEN),
            Route("DELETE", "/v1/containers/{id}", "delete_container", "delete a container",
                  self.delete_container, level=_level(Action.delete_container),
                  response=messages.Deleted, errors=(NotFound, RuntimeFailed),
                  action="container.delete"),
            Route("POST", "/v1/containers/{id}/start", "start_container", "start its agents",
                  self.start_container, level=_level(Action.start_container),
                  response=messages.ContainerView, errors=(NotFound, RuntimeUnavailable),
                  action="container.start"),
            Route("POST", "/v1/containers/{id}/stop", "stop_container", "stop its agents",
                  self.stop_container, level=_level(Action.stop_container),
                  response=messages.ContainerView, errors=(NotFound, RuntimeUnavailable),
                  action="container.stop"),
            Route("GET", "/v1/containers/{id}/config", "container_config",
                  "the seed's container-config JSON", self.container_config,
                  level=_level(Action.container_config), response=messages.JSON_OBJECT,
                  errors=common, action="container.config", audit=WRITTEN),
            Route("GET", "/v1/containers/{id}/openapi", "container_openapi",
                  "OpenAPI 3.0 for the container and its plugins", self.container_openapi,
                  level=_level(Action.container_openapi), response=messages.JSON_OBJECT,
                  errors=common, action="container.openapi", audit=WRITTEN),
            Route("GET", "/v1/containers/{id}/kube", "export_kube",
                  "Kubernetes YAML with the same security context", self.export_kube,
                  level=_level(Action.export_kube), response=messages.KubeExport,
                  errors=(NotFound, RuntimeUnavailable), action="container.kube",
                  audit=WRITTEN),
        ]

    def _record(self, ref: str) -> ContainerRecord:
        return self.services.registry.get(ref)

    def _view(self, record: ContainerRecord) -> messages.ContainerView:
        model = record.model()
        states: dict[str, str] = {}
        # plugin id -> its state now (running, stopped, refused …), not the one stored
        # when it was approved
        plugin_states: dict[str, str] = {}
        if self.services.lifecycle is not None:
            try:
                states = self.services.lifecycle.agent_states(record)
            except (RuntimeUnavailable, RuntimeFailed):
                states = {a.name: "unknown" for a in model.agents}
            with contextlib.suppress(RuntimeFailed):
                plugin_states = {p.id: p.state
                                 for p in self.services.lifecycle.plugin_states(record)}
        agents = [
            messages.AgentView(name=a.name, image=a.image,
                               capabilities=[c.value for c in a.capabilities],
                               data_access=a.data_access.value, isolation=a.isolation.value,
                               connections=list(a.allowed_connections),
                               state=states.get(a.name, "created"))
            for a in model.agents
        ]
        plugins = [
            messages.PluginView(id=p.plugin_id, name=p.name, version=p.version, agent=p.agent,
                                state=plugin_states.get(p.plugin_id, p.state),
                                approval_id=p.approval_id,
                                approved_at=iso(p.approved_at) or "")
            for p in self.services.registry.plugins(record.id)
        ]
        running = [s for s in (a.state for a in agents) if s == "running"]
        state = "running" if running and len(running) == len(agents) else (
            "partial" if running else "stopped" if states else "created")
        concerns = stored_bytes(self.services.store, record.id)
        storage = messages.StorageView(used_bytes=sum(concerns.values()),
                                       quota_bytes=self.services.config.quota_per_container_bytes,
                                       concern_quota_bytes=self.services.config.quota_per_concern_bytes,
                                       concerns=concerns)
        return messages.ContainerView(id=record.id, name=record.name, owner_id=record.owner_id,
                                      created_at=iso(record.created_at) or "", state=state,
                                      spec=record.spec, agents=agents, plugins=plugins,
                                      storage=storage)

    async def create_container(self, call: Call) -> Reply:
        spec = parse_container_spec(call.body)
        if CONTAINER_ID.fullmatch(spec.name):
            # {id} in a path is looked up as an id first, then as a name: a name
            # shaped like an id could be taken for another container's id.
            raise SpecError(f"name: {spec.name!r} looks like a container id (32 hex digits); "
                            "choose a name that does not",
                            errors=[f"name: {spec.name!r} looks like a container id"])

        limits = self.services.config
        if len(spec.agents) > limits.max_agents_per_container:
            raise TooMany(f"the spec has {len(spec.agents)} agents; a container has at most "
                          f"{limits.max_agents_per_container} (max_agents_per_container)",
                          limit="max_agents_per_container")

        def create() -> messages.ContainerView:
            owner = self.services.owners.require_owner()
            with self.services.store.transaction():
                if self.services.registry.count() >= limits.max_containers:
                    raise TooMany(f"there are already {limits.max_containers} containers "
                                  "(max_containers); delete one first",
                                  limit="max_containers")
                record = self.services.registry.add(spec, owner.id, self.services.clock.wall())
                call.decision.append(call.decision.actor, "container.create", record.id, "allow",
                                     f"container {record.name!r} created",
                                     {"name": record.name, "token_id": call.principal.token_id})
            return self._view(record)

        try:
            view = await in_thread(create)
        except Conflict as exc:
            await call.decision.record("container.create", spec.name, "deny", exc.message)
            raise
        self.services.events.publish("container.state", id=view.id, name=view.name,
                                     state=view.state)
        return Reply(view, 201)

    async def list_containers(self, call: Call) -> messages.ContainerList:
        def views() -> list[messages.ContainerView]:
            return [self._view(r) for r in self.services.registry.all()]

        return messages.ContainerList(containers=await in_thread(views))

    async def show_container(self, call: Call) -> messages.ContainerView:
        return await in_thread(lambda: self._view(self._record(call.params["id"])))

    def _failed_outcome(self, actor: str, action: str, target: str, reason: str,
                        exc: PacdError) -> None:
        """Record that an allowed act then failed (the request's entry, an allow, is
        already written). The error stands whether or not this can be recorded."""
        try:
            self.services.audit.append(actor, action, target, "deny", reason,
                                       {"code": exc.code})
        except PacdError:
            log.exception("could not audit the failure of %s on %s", action, target)

    async def _lifecycle_call(self, call: Call, verb: str) -> messages.ContainerView:
        record = await in_thread(self._record, call.params["id"])
        action = f"container.{verb}"
        try:
            runtime = runtime_of(self.services)
        except PacdError as exc:
            await call.decision.record(action, record.id, "deny", exc.message, {"code": exc.code})
            raise
        # The decision is on record before anything runs: if it cannot be written
        # (AuditError, 503) nothing is started or stopped.
        await call.decision.record(action, record.id, "allow", f"container {verb}",
                                   {"token_id": call.principal.token_id})
        try:
            await in_thread(getattr(runtime, verb), record)
        except PacdError as exc:
            await in_thread(self._failed_outcome, call.decision.actor, f"{action}.result",
                            record.id,
                            f"container {verb} failed: {exc.message}", exc)
            raise
        view = await in_thread(self._view, record)
        self.services.events.publish("container.state", id=view.id, name=view.name,
                                     state=view.state)
        return view

    async def start_container(self, call: Call) -> messages.ContainerView:
        return await self._lifecycle_call(call, "start")

    async def stop_container(self, call: Call) -> messages.ContainerView:
        return await self._lifecycle_call(call, "stop")

    async def delete_container(self, call: Call) -> messages.Deleted:
        record = await in_thread(self._record, call.params["id"])

        def remove() -> None:
            # The decision is durably on record before anything is erased: if it
            # cannot be written (AuditError, 503) the container is untouched. The
            # record goes last, so an erase that fails half-way (Podman down) or a
            # crash leaves a container the owner can simply delete again — not
            # data and keys that no record points to any more.
            call.decision.append(call.decision.actor, "container.delete", record.id, "allow",
                                 f"container {record.name!r} deleted",
                                 {"token_id": call.principal.token_id})
            try:
                if self.services.lifecycle is not None:
                    self.services.lifecycle.remove(record)
                self.services.registry.remove(record.id)
                # Nothing is left for its pending approvals to act on.
                self.services.approvals.cancel_for_container(record.id,
                                                             call.decision.actor)
                self.services.store.reclaim()  # its data's space goes back to the file system
            except PacdError as exc:
                self._failed_outcome(call.decision.actor, "container.delete.result", record.id,
                                     f"deleting container {record.name!r} failed: "
                                     f"{exc.message}", exc)
                raise

        await in_thread(remove)
        self.services.events.publish("container.state", id=record.id, name=record.name,
                                     state="deleted")
        return messages.Deleted(id=record.id, deleted=True)

    async def container_config(self, call: Call) -> Json:
        record = await in_thread(self._record, call.params["id"])
        config = generate_container_config(record.model())
        return Json(json.dumps(config).encode())

    async def container_openapi(self, call: Call) -> Json:
        def build() -> dict[str, Any]:
            record = self._record(call.params["id"])
            plugins = [p.model() for p in self.services.registry.plugins(record.id)]
            return generate_openapi_spec(record.model(), plugins)

        return Json(json.dumps(await in_thread(build)).encode())

    async def export_kube(self, call: Call) -> messages.KubeExport:
        record = await in_thread(self._record, call.params["id"])
        return messages.KubeExport(yaml=await in_thread(runtime_of(self.services).export_kube,
                                                        record))
