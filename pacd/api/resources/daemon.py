"""The daemon itself: ``GET /v1/status`` and ``GET /v1/openapi.json``.

Neither is audited per request (``audited=False``): liveness and the API's own
description, polled by every client and the tray, revealing nothing of the
owner's data. Their class is *written* like every other read of metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from pacd import __version__, messages
from pacd.api.health import health_view
from pacd.api.route import WRITTEN, Call, Json, Route
from pacd.api.services import Services
from pacd.approvals import iso
from pacd.core.rules import Action, required_level


class DaemonRoutes:
    def __init__(self, services: Services, all_routes: Callable[[], list[Route]]) -> None:
        self.services = services
        #: every route the daemon serves, for its OpenAPI document
        self._all_routes = all_routes
        self._status_key: tuple[int, int, int, int, int, str] | None = None
        self._status_json = Json(b"")
        self._owner_version = 0
        self._openapi: Json | None = None  # built when first asked for: see openapi()

    def routes(self) -> list[Route]:
        return [
            # Not audited per request: liveness and the API's own description, polled
            # by every client and the tray; they reveal nothing of the owner's data.
            Route("GET", "/v1/status", "status", "daemon status", self.status,
                  level=required_level(Action.status).value, response=messages.StatusView,
                  audited=False, audit=WRITTEN),
            Route("GET", "/v1/openapi.json", "openapi", "this document", self.openapi,
                  response=messages.JSON_OBJECT, audited=False, audit=WRITTEN),
        ]

    def owner_changed(self) -> None:
        """The owner or their keys changed (the status body shows them)."""
        self._owner_version += 1

    def _status_body(self) -> Json:
        # The hot path is one tuple compare: the body is rebuilt only when one of
        # its inputs says it changed (the rest of the status is fixed at start-up).
        services = self.services
        lifecycle = services.lifecycle
        key = (self._owner_version, services.approvals.pending_count,
               -1 if lifecycle is None else lifecycle.orphans_generation,
               -1 if lifecycle is None else lifecycle.polls_generation,
               services.store.integrity.failure_count,
               "" if lifecycle is None else lifecycle.runtime_problem)
        if key != self._status_key:
            orphans = lifecycle.orphans() if lifecycle is not None else []
            owner = services.owners.get_owner()
            credentials = services.owners.list_credentials()
            view = messages.StatusView(
                version=__version__,
                owner=None if owner is None else messages.OwnerView(
                    id=owner.id, name=owner.name, created_at=iso(owner.created_at) or "",
                    credentials=len(credentials)),
                pending_approvals=services.approvals.pending_count,
                keychain_backend=services.secrets.backend_name,
                presence_methods=[
                    messages.PresenceMethodView(name=str(p.get("name", "")),
                                                available=bool(p.get("available")),
                                                detail=str(p.get("reason", "")))
                    for p in services.presence_methods
                ],
                podman_url=services.config.podman_url,
                socket=str(services.config.socket),
                pid=os.getpid(),
                started_at=iso(services.started_at) or "",
                orphans=[messages.OrphanView(**o) for o in orphans],
                integrity_failures=[messages.IntegrityFailureView(**f)
                                    for f in services.store.integrity.failures()],
                waiting_polls={} if lifecycle is None else lifecycle.waiting_polls(),
                fprintd_bus_address=services.config.fprintd_bus_address,
                demo_authenticator=messages.DemoAuthenticatorView(
                    allowed=services.config.allow_software_authenticator,
                    enrolled=sum(c.software for c in credentials)),
                keystore=services.config.keystore,
                podman=None if lifecycle is None else messages.PodmanStatusView(
                    **lifecycle.podman_view()),
            )
            base = messages.encode(view)
            base.pop("audit", None)
            # The audit part (checkpoint age) changes every call: spliced in below.
            self._status_json = Json(json.dumps(base, separators=(",", ":")).encode()[:-1])
            self._status_key = key
        audit = json.dumps(messages.encode(health_view(services.audit.health())),
                           separators=(",", ":")).encode()
        return Json(self._status_json.data + b',"audit":' + audit + b"}")

    async def status(self, call: Call) -> Json:
        return self._status_body()

    async def openapi(self, call: Call) -> Json:
        if self._openapi is None:
            # Walking every route's message types takes tens of milliseconds that
            # a daemon start need not wait for: built on the first request.
            from pacd.api.openapi import build_openapi

            self._openapi = Json(json.dumps(build_openapi(self._all_routes(),
                                                          __version__)).encode())
        return self._openapi
