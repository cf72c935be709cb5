"""The owner-socket routes (API.md): handlers, levels, and the authorizer.

Blocking work (SQLite, the keychain, signature checks) runs in worker threads
so the event loop keeps serving. Every request that reaches a route is one
audit entry (see :mod:`pacd.api.decisions`): handlers that change state write
theirs in the same transaction as the change, through :attr:`OwnerApi.sink`,
and the server writes a generic allow or deny for the rest — reads included,
failed authentication included. The only exemptions are ``GET /v1/status``
and ``GET /v1/openapi.json`` (``audited=False``): liveness and the API's own
description, polled by every client, revealing nothing of the owner's data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Generator
from dataclasses import replace
from typing import Any, TypeVar, cast

from aiohttp import web

from pacd import __version__
from pacd import messages as m
from pacd.api.credential_routes import Credentials
from pacd.api.decisions import DecisionLog, actor_for
from pacd.api.peercred import peer_cred
from pacd.api.platform_routes import PlatformSessions
from pacd.api.route import Call, Json, Principal, Reply, Route
from pacd.api.services import Services
from pacd.approvals import Approval, b64url, iso
from pacd.audit import AuditHealth
from pacd.core.generators import generate_container_config, generate_openapi_spec
from pacd.core.models import SecurityLevel
from pacd.core.plugins import parse_plugin_schema, validate_plugin
from pacd.core.rules import Action, required_level
from pacd.core.spec import parse_container_spec
from pacd.errors import (
    AuditError,
    AuditUntrusted,
    Conflict,
    Forbidden,
    IntegrityError,
    InvalidRequest,
    KeychainError,
    NotFound,
    PacdError,
    PluginRejected,
    PresenceFailed,
    PresenceRequired,
    RuntimeFailed,
    RuntimeUnavailable,
    SpecError,
    TokenExpired,
    TokenRevoked,
    TooMany,
    Unauthorized,
)
from pacd.plugins.api import plugin_list, start_approved_plugin, uninstall_plugin
from pacd.presence.evidence import VerifiedPresence
from pacd.presence.owner import refuse_if_owner_vanished, remember_owner
from pacd.registry import ContainerRecord
from pacd.vault.datastore import stored_bytes

log = logging.getLogger("pacd.api")

T = TypeVar("T")
PLUGIN_INSTALL = "plugin.install"
AUDIT_REANCHOR = "audit.reanchor"
#: trusting a log its checkpoint no longer vouches for is a carbonProof decision;
#: asking for it is basic, so the daemon can be repaired while it refuses the rest
REANCHOR_LEVEL = SecurityLevel.carbonProof
EVENT_POLL_S = 5.0
EVENT_WRITE_TIMEOUT_S = 5.0
#: what a container id looks like (uuid4 hex); no container name may look like one
CONTAINER_ID = re.compile(r"[0-9a-f]{32}")
#: reasons quoted in a rejection's message (all kept ones are in its ``errors``)
MESSAGE_REASONS = 10
#: who owner-socket requests act as: the peer uid was checked to be the daemon's own
ACTOR = actor_for(os.getuid())
#: audit action names of routes whose operation id is not already one
ACTIONS = {
    "create_owner": "owner.create", "begin_credential": "credential.begin",
    "complete_credential": "credential.enroll", "begin_session": "session.begin",
    "complete_session": "session.create", "current_session": "session.current",
    "create_container": "container.create", "list_containers": "container.list",
    "show_container": "container.show", "delete_container": "container.delete",
    "start_container": "container.start", "stop_container": "container.stop",
    "container_config": "container.config", "container_openapi": "container.openapi",
    "build_image": "image.build", "export_kube": "container.kube",
    "submit_plugin": "plugin.submit", "list_approvals": "approval.list",
    "list_plugins": "plugin.list", "uninstall_plugin": "plugin.uninstall",
    "show_approval": "approval.show", "approve": "approval.approve", "deny": "approval.deny",
    "audit_entries": "audit.read", "audit_verify": "audit.verify",
    "reanchor_audit": "audit.reanchor.request",
    "events": "events.subscribe",
    "list_credentials": "credential.list", "remove_credential": "credential.remove",
}


async def _thread(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


def _level(action: Action) -> str:
    return required_level(action).value


class OwnerApi:
    def __init__(self, services: Services) -> None:
        self.s = services
        #: the audit log as handlers write to it: entries here count as the request's own
        self.sink = DecisionLog(services.audit)
        self.credentials = Credentials(services, self.sink, ACTOR, self.owner_changed)
        self._status_key: tuple[int, int, int, int, int, str] | None = None
        self._status_json = Json(b"")
        self._owner_version = 0
        self.routes = self._table()
        self._openapi: Json | None = None  # built when first asked for: see openapi()

    # --- audit & auth -------------------------------------------------------

    async def audit(self, action: str, target: str, decision: str, reason: str,
                    details: dict[str, Any] | None = None) -> None:
        await self.sink.append_async(ACTOR, action, target, decision, reason, details or {})

    async def authorize(self, request: web.Request, route: Route) -> Principal:
        if route.level == SecurityLevel.basic.value:
            return Principal(level="basic")
        return await self.require(request, SecurityLevel(route.level), route.operation)

    async def require(self, request: web.Request, level: SecurityLevel,
                      operation: str) -> Principal:
        self.check_audit_trust()
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else None
        try:
            info = await _thread(self.s.tokens.check, token, level)
        except (Unauthorized, TokenExpired, TokenRevoked, PresenceRequired) as exc:
            # Tell the client which ceremony would help, whatever the failure; the
            # server records the refusal (with this level) as the request's entry.
            exc.extra.setdefault("required_level", level.value)
            raise
        return Principal(level=info.level.value, token_id=info.token_id, scope=info.scope,
                         expires_at=info.expires_at)

    def check_audit_trust(self) -> None:
        """Refuse anything above basic while the audit log cannot vouch for itself."""
        health = self.s.audit.health()
        if health.refusing:
            raise AuditUntrusted(
                health.reason() + "; actions above basic are refused until the owner "
                "re-anchors the log (`pacd audit reanchor`)", **_untrusted_extra(health))

    def gate_approval(self, approval: Approval) -> None:
        """While the log is untrusted only its re-anchoring can be approved."""
        if approval.kind != AUDIT_REANCHOR:
            self.check_audit_trust()

    # --- status & docs ------------------------------------------------------

    def _status_body(self) -> Json:
        # The hot path is one tuple compare: the body is rebuilt only when one of
        # its inputs says it changed (the rest of the status is fixed at start-up).
        lifecycle = self.s.lifecycle
        key = (self._owner_version, self.s.approvals.pending_count,
               -1 if lifecycle is None else lifecycle.orphans_generation,
               -1 if lifecycle is None else lifecycle.polls_generation,
               self.s.store.integrity.failure_count,
               "" if lifecycle is None else lifecycle.runtime_problem)
        if key != self._status_key:
            orphans = lifecycle.orphans() if lifecycle is not None else []
            owner = self.s.owners.get_owner()
            credentials = self.s.owners.list_credentials()
            view = m.StatusView(
                version=__version__,
                owner=None if owner is None else m.OwnerView(
                    id=owner.id, name=owner.name, created_at=iso(owner.created_at) or "",
                    credentials=len(credentials)),
                pending_approvals=self.s.approvals.pending_count,
                keychain_backend=self.s.secrets.backend_name,
                presence_methods=[
                    m.PresenceMethodView(name=str(p.get("name", "")),
                                         available=bool(p.get("available")),
                                         detail=str(p.get("reason", "")))
                    for p in self.s.presence_methods
                ],
                podman_url=self.s.config.podman_url,
                socket=str(self.s.config.socket),
                pid=os.getpid(),
                started_at=iso(self.s.started_at) or "",
                orphans=[m.OrphanView(**o) for o in orphans],
                integrity_failures=[m.IntegrityFailureView(**f)
                                    for f in self.s.store.integrity.failures()],
                waiting_polls={} if lifecycle is None else lifecycle.waiting_polls(),
                fprintd_bus_address=self.s.config.fprintd_bus_address,
                demo_authenticator=m.DemoAuthenticatorView(
                    allowed=self.s.config.allow_software_authenticator,
                    enrolled=sum(c.software for c in credentials)),
                keystore=self.s.config.keystore,
                podman=None if lifecycle is None else m.PodmanStatusView(
                    **lifecycle.podman_view()),
            )
            base = m.encode(view)
            base.pop("audit", None)
            # The audit part (checkpoint age) changes every call: spliced in below.
            self._status_json = Json(json.dumps(base, separators=(",", ":")).encode()[:-1])
            self._status_key = key
        audit = json.dumps(m.encode(_health_view(self.s.audit.health())),
                           separators=(",", ":")).encode()
        return Json(self._status_json.data + b',"audit":' + audit + b"}")

    def owner_changed(self) -> None:
        self._owner_version += 1

    async def status(self, call: Call) -> Json:
        return self._status_body()

    async def openapi(self, call: Call) -> Json:
        if self._openapi is None:
            # Walking every route's message types takes tens of milliseconds that
            # a daemon start need not wait for: built on the first request.
            from pacd.api.openapi import build_openapi

            self._openapi = Json(json.dumps(build_openapi(self.routes, __version__)).encode())
        return self._openapi

    # --- owner & credentials ------------------------------------------------

    async def create_owner(self, call: Call) -> Reply:
        body: m.OwnerCreate = call.body

        def create() -> m.OwnerView:
            self.s.vault.initialize()
            refuse_if_owner_vanished(self.s.secrets, self.s.owners)
            with self.s.store.transaction():
                owner = self.s.owners.create_owner(body.name, self.s.clock.wall())
                self.sink.append(ACTOR, "owner.create", owner.id, "allow",
                                    "owner identity created", {"name": owner.name})
            remember_owner(self.s.secrets, owner)
            return m.OwnerView(owner.id, owner.name, iso(owner.created_at) or "", 0)

        try:
            view = await _thread(create)
        except Conflict as exc:
            await self.audit("owner.create", "", "deny", exc.message)
            raise
        self.owner_changed()
        return Reply(view, 201)

    # --- sessions -----------------------------------------------------------

    async def begin_session(self, call: Call) -> m.SessionOptions:
        body: m.SessionBegin = call.body
        sock = call.request.transport.get_extra_info("socket") if call.request.transport else None
        peer = peer_cred(sock) if sock is not None else None
        client = f"pid:{peer.pid}" if peer is not None else ""
        options = await _thread(self.s.rp.begin_session, body.level, client)
        return m.SessionOptions(session_id=str(options["session_id"]),
                                publicKey=options["publicKey"], origin=options["origin"])

    async def complete_session(self, call: Call) -> m.SessionToken:
        body: m.SessionComplete = call.body

        def complete() -> tuple[VerifiedPresence, Any]:
            presence = self.s.rp.complete_session(body.session_id, body.credential)
            return presence, self.s.tokens.issue(presence.level)

        try:
            presence, issued = await _thread(complete)
        except PacdError as exc:
            await self.audit("session.create", "", "deny", exc.message, {"code": exc.code})
            raise
        await self.audit("session.create", issued.token_id, "allow",
                         f"{presence.level.value} session opened",
                         {"credential_id": presence.credential_id.hex(),
                          "user_verified": presence.user_verified,
                          "software": presence.software})
        return m.SessionToken(token=issued.token, level=issued.level.value,
                              expires_at=iso(issued.expires_at) or "")

    async def current_session(self, call: Call) -> m.SessionView:
        p = call.principal
        return m.SessionView(token_id=p.token_id or "", level=cast(m.Level, p.level),
                             scope=p.scope or "", expires_at=iso(p.expires_at) or "")

    # --- containers ---------------------------------------------------------

    def _record(self, ref: str) -> ContainerRecord:
        return self.s.registry.get(ref)

    def _view(self, record: ContainerRecord) -> m.ContainerView:
        model = record.model()
        states: dict[str, str] = {}
        if self.s.lifecycle is not None:
            try:
                states = self.s.lifecycle.agent_states(record)
            except (RuntimeUnavailable, RuntimeFailed):
                states = {a.name: "unknown" for a in model.agents}
        agents = [
            m.AgentView(name=a.name, image=a.image,
                        capabilities=[c.value for c in a.capabilities],
                        data_access=a.data_access.value, isolation=a.isolation.value,
                        connections=list(a.allowed_connections),
                        state=states.get(a.name, "created"))
            for a in model.agents
        ]
        plugins = [
            m.PluginView(id=p.plugin_id, name=p.name, version=p.version, agent=p.agent,
                         state=p.state, approval_id=p.approval_id,
                         approved_at=iso(p.approved_at) or "")
            for p in self.s.registry.plugins(record.id)
        ]
        running = [s for s in (a.state for a in agents) if s == "running"]
        state = "running" if running and len(running) == len(agents) else (
            "partial" if running else "stopped" if states else "created")
        concerns = stored_bytes(self.s.store, record.id)
        storage = m.StorageView(used_bytes=sum(concerns.values()),
                                quota_bytes=self.s.config.quota_per_container_bytes,
                                concern_quota_bytes=self.s.config.quota_per_concern_bytes,
                                concerns=concerns)
        return m.ContainerView(id=record.id, name=record.name, owner_id=record.owner_id,
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

        limits = self.s.config
        if len(spec.agents) > limits.max_agents_per_container:
            raise TooMany(f"the spec has {len(spec.agents)} agents; a container has at most "
                          f"{limits.max_agents_per_container} (max_agents_per_container)",
                          limit="max_agents_per_container")

        def create() -> m.ContainerView:
            owner = self.s.owners.require_owner()
            with self.s.store.transaction():
                if self.s.registry.count() >= limits.max_containers:
                    raise TooMany(f"there are already {limits.max_containers} containers "
                                  "(max_containers); delete one first",
                                  limit="max_containers")
                record = self.s.registry.add(spec, owner.id, self.s.clock.wall())
                self.sink.append(ACTOR, "container.create", record.id, "allow",
                                    f"container {record.name!r} created",
                                    {"name": record.name, "token_id": call.principal.token_id})
            return self._view(record)

        try:
            view = await _thread(create)
        except Conflict as exc:
            await self.audit("container.create", spec.name, "deny", exc.message)
            raise
        self.s.events.publish("container.state", id=view.id, name=view.name, state=view.state)
        return Reply(view, 201)

    async def list_containers(self, call: Call) -> m.ContainerList:
        def views() -> list[m.ContainerView]:
            return [self._view(r) for r in self.s.registry.all()]

        return m.ContainerList(containers=await _thread(views))

    async def show_container(self, call: Call) -> m.ContainerView:
        return await _thread(lambda: self._view(self._record(call.params["id"])))

    def _lifecycle(self) -> Any:
        if self.s.lifecycle is None:
            raise RuntimeUnavailable(
                "no container runtime is connected to this daemon (Podman support is not "
                "enabled in this build); containers are stored but cannot run yet")
        return self.s.lifecycle

    def _failed_outcome(self, action: str, target: str, reason: str, exc: PacdError) -> None:
        """Record that an allowed act then failed (the request's entry, an allow, is
        already written). The error stands whether or not this can be recorded."""
        try:
            self.s.audit.append(ACTOR, action, target, "deny", reason, {"code": exc.code})
        except PacdError:
            log.exception("could not audit the failure of %s on %s", action, target)

    async def _lifecycle_call(self, call: Call, verb: str) -> m.ContainerView:
        record = await _thread(self._record, call.params["id"])
        action = f"container.{verb}"
        try:
            runtime = self._lifecycle()
        except PacdError as exc:
            await self.audit(action, record.id, "deny", exc.message, {"code": exc.code})
            raise
        # The decision is on record before anything runs: if it cannot be written
        # (AuditError, 503) nothing is started or stopped.
        await self.audit(action, record.id, "allow", f"container {verb}",
                         {"token_id": call.principal.token_id})
        try:
            await _thread(getattr(runtime, verb), record)
        except PacdError as exc:
            await _thread(self._failed_outcome, f"{action}.result", record.id,
                          f"container {verb} failed: {exc.message}", exc)
            raise
        view = await _thread(self._view, record)
        self.s.events.publish("container.state", id=view.id, name=view.name, state=view.state)
        return view

    async def start_container(self, call: Call) -> m.ContainerView:
        return await self._lifecycle_call(call, "start")

    async def stop_container(self, call: Call) -> m.ContainerView:
        return await self._lifecycle_call(call, "stop")

    async def delete_container(self, call: Call) -> m.Deleted:
        record = await _thread(self._record, call.params["id"])

        def remove() -> None:
            # The decision is durably on record before anything is erased: if it
            # cannot be written (AuditError, 503) the container is untouched. The
            # record goes last, so an erase that fails half-way (Podman down) or a
            # crash leaves a container the owner can simply delete again — not
            # data and keys that no record points to any more.
            self.sink.append(ACTOR, "container.delete", record.id, "allow",
                             f"container {record.name!r} deleted",
                             {"token_id": call.principal.token_id})
            try:
                if self.s.lifecycle is not None:
                    self.s.lifecycle.remove(record)
                self.s.registry.remove(record.id)
                # Nothing is left for its pending approvals to act on.
                self.s.approvals.cancel_for_container(record.id, ACTOR)
                self.s.store.reclaim()  # its data's space goes back to the file system
            except PacdError as exc:
                self._failed_outcome("container.delete.result", record.id,
                                     f"deleting container {record.name!r} failed: "
                                     f"{exc.message}", exc)
                raise

        await _thread(remove)
        self.s.events.publish("container.state", id=record.id, name=record.name,
                              state="deleted")
        return m.Deleted(id=record.id, deleted=True)

    async def container_config(self, call: Call) -> Json:
        record = await _thread(self._record, call.params["id"])
        config = generate_container_config(record.model())
        return Json(json.dumps(config).encode())

    async def container_openapi(self, call: Call) -> Json:
        def build() -> dict[str, Any]:
            record = self._record(call.params["id"])
            plugins = [p.model() for p in self.s.registry.plugins(record.id)]
            return generate_openapi_spec(record.model(), plugins)

        return Json(json.dumps(await _thread(build)).encode())

    async def build_image(self, call: Call) -> web.StreamResponse:
        """Stream the build as JSON lines (``m.ImageBuildLine``) while it runs.

        Refusals (unknown container, no Podman, a base image not in local
        storage) are plain HTTP errors; once the stream has begun, the outcome
        is its last line. The blocking build runs on a thread of its own that
        hands lines to the loop; when the client goes away the thread stops at
        Podman's next line (closing the build connection), so it lives at most
        as long as the build.
        """
        body: m.ImageBuildRequest = call.body
        request = call.request
        record = await _thread(self._record, call.params["id"])
        base = body.base_image or self.s.config.base_image
        details = {"base_image": base, "token_id": call.principal.token_id}
        try:
            tag, lines = await _thread(self._lifecycle().build_image, record, base)
        except PacdError as exc:
            await self.audit("image.build", record.id, "deny", exc.message,
                             {**details, "code": exc.code})
            raise
        await self.audit("image.build", record.id, "allow", f"building {tag} from {base}",
                         {**details, "image": tag})

        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                           "Cache-Control": "no-store"})
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        stop = threading.Event()

        def send(item: dict[str, Any] | None) -> None:
            data = None if item is None else json.dumps(item).encode() + b"\n"
            try:
                loop.call_soon_threadsafe(queue.put_nowait, data)
            except RuntimeError:  # the loop is closed: the daemon is stopping
                stop.set()

        worker = threading.Thread(
            target=self._run_build, args=(record.id, tag, lines),
            kwargs={"stop": stop, "send": send, "details": details},
            name=f"pacd-image-build-{record.id[:8]}", daemon=True)
        worker.start()
        try:
            while True:
                try:
                    data = await asyncio.wait_for(queue.get(), EVENT_POLL_S)
                except TimeoutError:
                    # Quiet build step: notice a client that went away meanwhile.
                    if request.transport is None or request.transport.is_closing():
                        break
                    continue
                if data is None:
                    break
                async with asyncio.timeout(EVENT_WRITE_TIMEOUT_S):
                    await resp.write(data)
        except (TimeoutError, ConnectionError):
            # A client that does not read is dropped; the build stops with it.
            if request.transport is not None:
                request.transport.close()
        finally:
            stop.set()
        return resp

    def _run_build(self, container_id: str, tag: str, lines: Generator[str, None, None], *,
                   stop: threading.Event, send: Callable[[dict[str, Any] | None], None],
                   details: dict[str, Any]) -> None:
        """Drain the build on a worker thread; audit and send its outcome."""
        error: PacdError | None = None
        try:
            try:
                for line in lines:
                    if stop.is_set():
                        break
                    send({"type": "progress", "line": line})
            finally:
                lines.close()  # an abandoned build lets go of its Podman connection
        except PacdError as exc:
            error = exc
        except Exception:
            log.exception("image build %s failed", tag)
            error = RuntimeFailed(f"the build of {tag} failed unexpectedly (see the daemon log)")
        if error is not None:
            decision, reason = "deny", f"build of {tag} failed: {error.message}"
        elif stop.is_set():
            decision, reason = "deny", f"build of {tag} abandoned: the client went away"
        else:
            decision, reason = "allow", f"built {tag}"
        try:
            # The log itself, not the request's sink: the request's decision was the
            # "image.build" entry; this outcome may come after the client has left.
            self.s.audit.append(ACTOR, "image.build.result", container_id, decision, reason,
                                {**details, "image": tag,
                                 **({"code": error.code} if error is not None else {})})
        except PacdError as exc:
            error = error or exc  # an unrecorded success is not reported as one
        send({"type": "done", "image": tag} if error is None
             else {"type": "error", "error": error.to_wire()["error"]})
        send(None)

    async def export_kube(self, call: Call) -> m.KubeExport:
        record = await _thread(self._record, call.params["id"])
        return m.KubeExport(yaml=await _thread(self._lifecycle().export_kube, record))

    # --- plugins & approvals ------------------------------------------------

    async def submit_plugin(self, call: Call) -> Reply:
        body: m.PluginSubmit = call.body
        record = await _thread(self._record, call.params["id"])
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
            await self.audit("plugin.submit", record.id, "deny",
                             f"plugin {name!r} rejected ({count} reasons)",
                             {"agent": body.agent, "errors": rejected.errors})
            raise PluginRejected(f"plugin {name!r} was rejected ({count} reasons): "
                                 f"{shown}{more}", errors=errors, omitted=omitted)
        assert schema is not None
        summary = (f"install plugin {schema.name} {schema.version} for agent {body.agent} "
                   f"in container {record.name}")
        payload: dict[str, Any] = {
            "container_id": record.id, "container_name": record.name, "agent": body.agent,
            "schema": schema.to_json()}
        if body.image is not None:
            # The digest is what the owner signs: the plugin runs only as this content.
            digest = await _thread(self._lifecycle().plugin_image_digest, body.image)
            payload |= {"image": body.image, "image_digest": digest}
            summary += f", running image {body.image} ({digest})"
        approval = await _thread(
            self.s.approvals.submit, PLUGIN_INSTALL, payload,
            ACTOR, summary, float(self.s.config.approval_ttl_s))
        return Reply(m.ApprovalAccepted(approval_id=approval.id,
                                        required_level=approval.required_level.value,
                                        expires_at=iso(approval.expires_at) or ""), 202)

    def execute_plugin_install(self, conn: Any, approval: Approval) -> dict[str, Any]:
        body = approval.body
        record = self.s.registry.get(str(body["container_id"]))
        container = record.model()
        schema = parse_plugin_schema(body["schema"])
        # The policy is checked again at execution: it must still allow this plugin.
        errors = validate_plugin(schema, container.policy, container.agent(str(body["agent"])))
        if errors:
            raise PluginRejected("the plugin no longer passes validation", errors=errors)
        plugin = self.s.registry.record_plugin(conn, record.id, str(body["agent"]),
                                               schema=schema, approval_id=approval.id,
                                               now=self.s.clock.wall(),
                                               image=str(body.get("image", "")),
                                               image_digest=str(body.get("image_digest", "")))
        return {"container_id": record.id, "plugin_id": plugin.plugin_id,
                "agent": plugin.agent, "state": plugin.state}

    async def list_plugins(self, call: Call) -> m.PluginStateList:
        record = await _thread(self._record, call.params["id"])
        return await _thread(plugin_list, self.s, record)

    async def uninstall_plugin(self, call: Call) -> m.PluginRemoved:
        record = await _thread(self._record, call.params["id"])
        return await asyncio.to_thread(
            uninstall_plugin, self.s, self.sink.append, ACTOR, record, call.params["name"],
            token_id=call.principal.token_id)

    # --- audit re-anchoring --------------------------------------------------

    def _reanchor_body(self, health: AuditHealth) -> dict[str, Any]:
        head_seq, head_mac = self.s.audit.head()
        found = (health.untrusted.to_json() if health.untrusted is not None else
                 {"checkpoint_error": health.checkpoint_error,
                  "consecutive_failures": health.checkpoint_failures})
        return {"head_seq": head_seq, "head_mac": head_mac.hex(), "found": found}

    async def reanchor_audit(self, call: Call) -> Reply:
        health = self.s.audit.health()
        if not health.refusing:
            raise Conflict("the audit log is trusted: there is nothing to re-anchor")
        body = self._reanchor_body(health)
        summary = (f"re-anchor the audit log at entry {body['head_seq']} after: "
                   f"{health.reason()}")
        approval = await _thread(
            self.s.approvals.submit, AUDIT_REANCHOR, body, ACTOR, summary,
            float(self.s.config.approval_ttl_s))
        return Reply(m.ApprovalAccepted(approval_id=approval.id,
                                        required_level=approval.required_level.value,
                                        expires_at=iso(approval.expires_at) or ""), 202)

    def execute_audit_reanchor(self, conn: Any, approval: Approval) -> dict[str, Any]:
        """Check the log is still as the owner saw it; the checkpoint moves after the entry."""
        body = approval.body
        health = self.s.audit.health()
        if not health.refusing:
            raise Conflict("the audit log is already trusted")
        current = self._reanchor_body(health)
        seq = int(body["head_seq"])
        # Entries appended since the request are fine (the log keeps recording);
        # a different finding, or the entry the owner saw no longer there, is not.
        if current["found"] != body["found"] or not any(
                e.seq == seq and e.mac.hex() == body["head_mac"]
                for e in self.s.audit.entries(seq - 1, 1)):
            raise Conflict("the audit log changed since this re-anchor was requested; "
                           "request a new one")
        return {"anchored_from_seq": seq, "found": body["found"]}

    def anchor_after_entry(self, entry: Any) -> None:
        self.s.audit.reanchor(int(entry.seq))

    @staticmethod
    def _approval_view(a: Approval) -> m.ApprovalView:
        return m.ApprovalView(
            id=a.id, kind=a.kind, state=cast(m.ApprovalState, a.state),
            required_level=a.required_level.value,
            summary=a.summary, requester=a.requester, created_at=iso(a.created_at) or "",
            expires_at=iso(a.expires_at) or "", resolved_at=iso(a.resolved_at),
            reason=a.reason)

    async def list_approvals(self, call: Call) -> m.ApprovalList:
        q: m.ApprovalQuery = call.query
        items, next_cursor = await _thread(self.s.approvals.page, q.limit, q.cursor)
        return m.ApprovalList(approvals=[self._approval_view(a) for a in items],
                              next_cursor=next_cursor)

    async def show_approval(self, call: Call) -> m.ApprovalDetail:
        def detail() -> m.ApprovalDetail:
            a = self.s.approvals.get(call.params["id"])
            options: dict[str, Any] | None = None
            origin = self.s.config.origin
            if a.state == "pending":
                try:
                    opts = self.s.rp.request_options_for_challenge(
                        a.challenge, a.required_level.satisfies(SecurityLevel.biometric))
                    options, origin = opts["publicKey"], str(opts["origin"])
                except NotFound:
                    options = None  # nothing enrolled: the approval cannot be signed yet
            v = self._approval_view(a)
            return m.ApprovalDetail(**{**v.__dict__, "payload": a.payload,
                                       "challenge": b64url(a.challenge), "publicKey": options,
                                       "origin": origin})

        return await _thread(detail)

    async def approve(self, call: Call) -> m.ApprovalResolved:
        body: m.Approve = call.body

        def verify(challenge: bytes, level: SecurityLevel) -> dict[str, Any]:
            presence = self.s.rp.verify_for_challenge(
                challenge, body.credential,
                require_uv=level.satisfies(SecurityLevel.biometric),
                carbon_proof=level == SecurityLevel.carbonProof)
            if not presence.level.satisfies(level):
                raise PresenceFailed(
                    f"this approval needs {level.value}; the assertion proves "
                    f"{presence.level.value}")
            return {"credential_id": presence.credential_id.hex(),
                    "user_verified": presence.user_verified, "level": presence.level.value,
                    "software": presence.software}

        done = await _thread(self.s.approvals.approve, call.params["id"], verify, ACTOR,
                             body.credential)
        if done.kind == PLUGIN_INSTALL and done.state == "approved":
            await start_approved_plugin(self.s, done)
        return m.ApprovalResolved(id=done.id, state=cast(m.ApprovalState, done.state),
                                  result=done.result)

    async def deny(self, call: Call) -> m.ApprovalResolved:
        body: m.Deny = call.body
        done = await _thread(self.s.approvals.deny, call.params["id"], body.reason, ACTOR)
        return m.ApprovalResolved(id=done.id, state=cast(m.ApprovalState, done.state), result=None)

    # --- audit & events -----------------------------------------------------

    async def audit_entries(self, call: Call) -> m.AuditPage:
        q: m.AuditQuery = call.query
        after = q.after
        if q.cursor:
            if not (q.cursor.isascii() and q.cursor.isdigit()):
                raise InvalidRequest(f"cursor {q.cursor!r} is not a next_cursor this daemon "
                                     "gave")
            after = int(q.cursor)
        entries = await _thread(self.s.audit.entries, after, q.limit)
        return m.AuditPage(next_cursor=str(entries[-1].seq) if len(entries) == q.limit
                           else None, entries=[
            m.AuditEntryView(seq=e.seq, time=iso(e.time) or "", actor=e.actor, action=e.action,
                             target=e.target, decision=e.decision,  # type: ignore[arg-type]
                             reason=e.reason, details=e.details)
            for e in entries
        ])

    async def audit_verify(self, call: Call) -> m.AuditVerify:
        result = await _thread(self.s.audit.verify)
        return m.AuditVerify(ok=result.ok, entries=result.entries,
                             first_bad_seq=result.first_bad_seq, problem=result.problem)

    async def events(self, call: Call) -> web.StreamResponse:
        request = call.request
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                           "Cache-Control": "no-store"})
        await resp.prepare(request)
        sub = self.s.events.subscribe()
        try:
            await resp.write(json.dumps({"type": "subscribed", "time": iso(
                self.s.clock.wall())}).encode() + b"\n")
            health = self.s.audit.health()
            if health.refusing:
                # Published once at start-up, before anyone could listen: every
                # new subscriber hears it while it lasts.
                await resp.write(json.dumps(audit_event(health, iso(self.s.clock.wall())))
                                 .encode() + b"\n")
            while True:
                try:
                    line = await sub.get(EVENT_POLL_S)
                except EOFError:
                    break
                if line is None:
                    # Nothing to send: notice a client that went away.
                    if request.transport is None or request.transport.is_closing():
                        break
                    continue
                async with asyncio.timeout(EVENT_WRITE_TIMEOUT_S):
                    await resp.write(line)
        except (TimeoutError, ConnectionError):
            # A subscriber that does not read is dropped, not waited for.
            if request.transport is not None:
                request.transport.close()
        finally:
            sub.close()
        return resp

    # --- the table ----------------------------------------------------------

    def _table(self) -> list[Route]:
        return [replace(r, action=ACTIONS.get(r.operation, r.action)) for r in self._routes()]

    def _routes(self) -> list[Route]:
        bio = _level(Action.create_container)
        common = (NotFound,)
        return [
            # Not audited per request: liveness and the API's own description, polled
            # by every client and the tray; they reveal nothing of the owner's data.
            Route("GET", "/v1/status", "status", "daemon status", self.status,
                  level=_level(Action.status), response=m.StatusView, audited=False),
            Route("GET", "/v1/openapi.json", "openapi", "this document", self.openapi,
                  response=m.JSON_OBJECT, audited=False),
            Route("POST", "/v1/owner", "create_owner", "create the owner identity and master key",
                  self.create_owner, request=m.OwnerCreate, response=m.OwnerView, status=201,
                  errors=(Conflict, KeychainError, AuditError, IntegrityError)),
            *self.credentials.routes(self.require),
            Route("POST", "/v1/sessions/begin", "begin_session",
                  "request options for an enhanced or biometric session", self.begin_session,
                  request=m.SessionBegin, response=m.SessionOptions, errors=common),
            Route("POST", "/v1/sessions/complete", "complete_session",
                  "verify the assertion and issue a token", self.complete_session,
                  request=m.SessionComplete, response=m.SessionToken,
                  errors=(PresenceFailed, InvalidRequest)),
            PlatformSessions(self.s, self.sink).route(),
            Route("GET", "/v1/sessions/current", "current_session",
                  "the session the presented token belongs to", self.current_session,
                  # any session will do: the lowest level a token can have
                  level=SecurityLevel.enhanced.value, response=m.SessionView),
            Route("POST", "/v1/containers", "create_container", "create a container from a spec",
                  self.create_container, level=bio, request=m.CONTAINER_SPEC,
                  response=m.ContainerView, status=201,
                  errors=(Conflict, NotFound, SpecError, TooMany)),
            Route("GET", "/v1/containers", "list_containers", "list containers",
                  self.list_containers, level=_level(Action.list_containers),
                  response=m.ContainerList),
            Route("GET", "/v1/containers/{id}", "show_container", "container detail",
                  self.show_container, level=_level(Action.show_container),
                  response=m.ContainerView, errors=common),
            Route("DELETE", "/v1/containers/{id}", "delete_container", "delete a container",
                  self.delete_container, level=_level(Action.delete_container),
                  response=m.Deleted, errors=(NotFound, RuntimeFailed)),
            Route("POST", "/v1/containers/{id}/start", "start_container", "start its agents",
                  self.start_container, level=_level(Action.start_container),
                  response=m.ContainerView, errors=(NotFound, RuntimeUnavailable)),
            Route("POST", "/v1/containers/{id}/stop", "stop_container", "stop its agents",
                  self.stop_container, level=_level(Action.stop_container),
                  response=m.ContainerView, errors=(NotFound, RuntimeUnavailable)),
            Route("GET", "/v1/containers/{id}/config", "container_config",
                  "the seed's container-config JSON", self.container_config,
                  level=_level(Action.container_config), response=m.JSON_OBJECT, errors=common),
            Route("GET", "/v1/containers/{id}/openapi", "container_openapi",
                  "OpenAPI 3.0 for the container and its plugins", self.container_openapi,
                  level=_level(Action.container_openapi), response=m.JSON_OBJECT,
                  errors=common),
            Route("POST", "/v1/containers/{id}/image", "build_image",
                  "build the owner's image from a local base image, streaming progress as "
                  "JSON lines (ImageBuildLine) that end with done or error", self.build_image,
                  level=_level(Action.build_image), request=m.ImageBuildRequest,
                  response=m.ImageBuildLine, stream=True,
                  errors=(NotFound, RuntimeUnavailable, RuntimeFailed, InvalidRequest)),
            Route("GET", "/v1/containers/{id}/kube", "export_kube",
                  "Kubernetes YAML with the same security context", self.export_kube,
                  level=_level(Action.export_kube), response=m.KubeExport,
                  errors=(NotFound, RuntimeUnavailable)),
            Route("POST", "/v1/containers/{id}/plugins", "submit_plugin",
                  "validate a plugin and queue it for approval", self.submit_plugin,
                  level=_level(Action.submit_plugin), request=m.PluginSubmit,
                  response=m.ApprovalAccepted, status=202,
                  errors=(NotFound, PluginRejected, TooMany, RuntimeUnavailable)),
            Route("GET", "/v1/containers/{id}/plugins", "list_plugins",
                  "its plugins: pending, approved, running, stopped, refused or failed",
                  self.list_plugins, level=_level(Action.list_plugins),
                  response=m.PluginStateList, errors=common),
            Route("DELETE", "/v1/containers/{id}/plugins/{name}", "uninstall_plugin",
                  "uninstall a plugin (by id or name): its container is removed",
                  self.uninstall_plugin, level=_level(Action.uninstall_plugin),
                  response=m.PluginRemoved, errors=(NotFound, RuntimeUnavailable)),
            Route("GET", "/v1/approvals", "list_approvals", "pending and recent approvals",
                  self.list_approvals, level=_level(Action.list_approvals),
                  query=m.ApprovalQuery, response=m.ApprovalList),
            Route("GET", "/v1/approvals/{id}", "show_approval",
                  "the canonical payload and request options over its digest",
                  self.show_approval, level=_level(Action.list_approvals),
                  response=m.ApprovalDetail, errors=common),
            Route("POST", "/v1/approvals/{id}/approve", "approve",
                  "approve with an assertion over the approval's challenge", self.approve,
                  request=m.Approve, response=m.ApprovalResolved,
                  errors=(NotFound, Conflict, PresenceFailed, Forbidden, AuditError)),
            Route("POST", "/v1/approvals/{id}/deny", "deny", "deny a pending approval",
                  self.deny, level=_level(Action.deny_approval), request=m.Deny,
                  response=m.ApprovalResolved, errors=(NotFound, Conflict)),
            Route("GET", "/v1/audit", "audit_entries", "audit entries in order",
                  self.audit_entries, level=_level(Action.read_audit), query=m.AuditQuery,
                  response=m.AuditPage),
            Route("POST", "/v1/audit/verify", "audit_verify", "verify the audit chain",
                  self.audit_verify, level=_level(Action.verify_audit),
                  response=m.AuditVerify),
            Route("POST", "/v1/audit/reanchor", "reanchor_audit",
                  "ask to trust the audit log as it stands (a carbonProof approval of kind "
                  "audit.reanchor)", self.reanchor_audit,
                  level=_level(Action.verify_audit), response=m.ApprovalAccepted,
                  status=202, errors=(Conflict,)),
            Route("GET", "/v1/events", "events", "a stream of JSON lines", self.events,
                  response=m.Event, stream=True),
        ]


def _untrusted_extra(health: AuditHealth) -> dict[str, Any]:
    if health.untrusted is not None:
        return {"first_bad_seq": health.untrusted.first_bad_seq}
    return {"checkpoint_failures": health.checkpoint_failures}


def _health_view(health: AuditHealth) -> m.AuditHealthView:
    return m.AuditHealthView(
        trusted=not health.refusing, head_seq=health.head_seq,
        checkpoint_seq=health.checkpoint_seq, checkpoint_age_s=health.checkpoint_age_s,
        untrusted=None if health.untrusted is None else m.AuditUntrustedView(
            first_bad_seq=health.untrusted.first_bad_seq, found=health.untrusted.found),
        checkpoint_error=None if health.checkpoint_error is None else
        m.AuditCheckpointErrorView(message=health.checkpoint_error,
                                   count=health.checkpoint_failures))


def audit_event(health: AuditHealth, when: str | None = None) -> dict[str, Any]:
    """The event telling subscribers the log refuses (``audit.untrusted``) or why not."""
    event: dict[str, Any] = {"type": "audit.untrusted" if health.refusing else "audit.trusted"}
    if when is not None:
        event["time"] = when
    if health.untrusted is not None:
        event |= {"first_bad_seq": health.untrusted.first_bad_seq,
                  "found": health.untrusted.found}
    if health.checkpoint_error is not None:
        event |= {"checkpoint_error": health.checkpoint_error,
                  "count": health.checkpoint_failures}
    return event
