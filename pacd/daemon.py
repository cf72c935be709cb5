"""The daemon: wires the parts together and serves the owner socket until told to stop.

Start-up fails closed: without a usable keychain (or the explicitly configured
passphrase keystore) there is no master key, hence no audit key, hence no
daemon — it exits with the keychain's own explanation instead of running
without protection.

Shutdown (SIGTERM, SIGINT; on Windows Ctrl+C, Ctrl+Break — see
:mod:`pacd.stop_signals`): a ``daemon.stopping`` event goes out, event
streams end, the listener stops accepting, in-flight requests run to
completion (their work is in worker threads and their audit entries are
durable before they answer), then the audit log drains and writes its final
checkpoint. Nothing acknowledged is lost: every acknowledgement comes after
a synced commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from pacd import __version__
from pacd.agents.inbox import Inbox
from pacd.api.access import AUDIT_REANCHOR, OwnerAccess
from pacd.api.activation import sd_notify
from pacd.api.health import audit_event
from pacd.api.listener import ensure_private_dir
from pacd.api.owner_listener import OwnerListener, open_listener
from pacd.api.resources.approvals import ApprovalRoutes
from pacd.api.resources.audit import REANCHOR_LEVEL, AuditRoutes
from pacd.api.resources.containers import ContainerRoutes
from pacd.api.resources.daemon import DaemonRoutes
from pacd.api.resources.events import EventRoutes
from pacd.api.resources.images import ImageRoutes
from pacd.api.resources.owner import CREDENTIAL_ADD, CREDENTIAL_REMOVE, OwnerRoutes
from pacd.api.resources.plugins import PLUGIN_INSTALL, PluginRoutes
from pacd.api.resources.sessions import SessionRoutes
from pacd.api.route import Route
from pacd.api.server import OwnerServer
from pacd.api.services import Services
from pacd.approvals import ApprovalQueue
from pacd.audit import AuditEntry, AuditHealth, AuditLog
from pacd.config import Config
from pacd.containers import attach_lifecycle
from pacd.core.actors import DAEMON_ACTOR
from pacd.core.rules import Action, required_level
from pacd.errors import PacdError
from pacd.events import EventBus
from pacd.home_lock import HomeLock
from pacd.integrity import AuditedFailures
from pacd.open_files import raise_open_file_limit
from pacd.presence.attestation import AttestationPolicy
from pacd.presence.clock import SystemClock
from pacd.presence.owner import OwnerRegistry
from pacd.presence.rp import RelyingParty
from pacd.presence.tokens import TokenService
from pacd.registry import ContainerRegistry
from pacd.retention import Retention, run_periodically
from pacd.stop_signals import on_stop_signals
from pacd.store import Store
from pacd.vault import SealedData, Vault, open_secret_store

log = logging.getLogger("pacd.daemon")

EXPIRY_TICK_S = 1.0
PRESENCE_REPORT_TIMEOUT_S = 5.0


class PresenceProbe:
    """Which presence methods work here, asked in its own thread from the start of
    start-up: the answer may take D-Bus round trips, which overlap with opening the
    keychain and the databases instead of following them. Bounded in time."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._result: list[dict[str, Any]] = []
        self._deadline = time.monotonic() + PRESENCE_REPORT_TIMEOUT_S
        self._worker = threading.Thread(target=self._run, name="pacd-presence-report",
                                        daemon=True)
        self._worker.start()

    def _run(self) -> None:
        try:
            from pacd.presence.report import presence_methods_report

            self._result.extend(a.to_json() for a in presence_methods_report(
                self._config.fprintd_bus_address, self._config.platform_presence))
        except Exception as exc:  # a diagnostic: never a reason not to start
            log.warning("presence methods report failed: %s", exc)

    def result(self) -> list[dict[str, Any]]:
        """The report; empty if it did not finish in time (blocks until then)."""
        self._worker.join(max(0.0, self._deadline - time.monotonic()))
        return [] if self._worker.is_alive() else list(self._result)


def ensure_private_home(home: Path) -> None:
    """Create PACD_HOME 0700, or refuse an existing one that is not private to us.

    It holds the state and audit databases: a directory others may enter or
    write to would let them read those files' names and sizes, or replace them.
    """
    ensure_private_dir(home, "PACD_HOME", "choose another PACD_HOME")


def build_services(config: Config) -> Services:
    """Open every part; raises the part's own error (keychain, audit) on failure."""
    ensure_private_home(config.home)
    secrets = open_secret_store(config)
    store = Store(config.state_db)
    vault = Vault(store, secrets)
    vault.initialize()
    audit = AuditLog.open(config.audit_db, vault.derive_subkey("audit"), secrets)
    # Before any module reads a row that decides access (pacd.integrity).
    store.integrity = vault.row_sealer()
    failures = AuditedFailures(audit.append)
    store.integrity.on_failure(failures, failures.close)
    clock = SystemClock()
    owners = OwnerRegistry(store)
    events = EventBus()

    def on_refusal(action: str, details: dict[str, Any]) -> None:
        audit.append("presence", action, str(details.get("credential_id", "")), "deny",
                     "presence refused", details)

    rp = RelyingParty(store, owners, config.rp_id, config.origin, clock,
                      challenge_ttl_s=config.challenge_ttl_s, on_refusal=on_refusal,
                      carbon_proof_max_age_s=config.carbon_proof_max_age_s,
                      attestation=AttestationPolicy.from_config(config.attestation,
                                                                config.allowed_aaguids),
                      allow_software=config.allow_software_authenticator)
    tokens = TokenService(store, clock, config.token_lifetime_s)
    # A request resolving an approval hands the queue its own decision (record=...).
    approvals = ApprovalQueue(store, audit, clock.wall, events.publish,
                              max_pending=config.max_pending_approvals,
                              max_pending_per_kind=config.max_pending_approvals_per_kind)
    return Services(
        config=config, store=store, secrets=secrets, vault=vault, audit=audit, owners=owners,
        rp=rp, tokens=tokens, registry=ContainerRegistry(store), approvals=approvals,
        events=events, clock=clock, started_at=clock.wall(),
    )


def owner_routes(services: Services) -> tuple[list[Route], OwnerAccess]:
    """The owner socket's resources, assembled into the one list it serves and documents.

    Also registers the executors of the approvals the resources queue.
    """
    access = OwnerAccess(services)
    routes: list[Route] = []
    daemon = DaemonRoutes(services, lambda: routes)
    owner = OwnerRoutes(services, access, daemon.owner_changed)
    plugins = PluginRoutes(services)
    audit = AuditRoutes(services)
    for resource_ in (daemon, owner, SessionRoutes(services), ContainerRoutes(services),
                      ImageRoutes(services), plugins, ApprovalRoutes(services), audit,
                      EventRoutes(services)):
        routes += resource_.routes()
    approvals = services.approvals
    approvals.register(PLUGIN_INSTALL, required_level(Action.install_plugin),
                       plugins.execute_plugin_install)
    approvals.register(AUDIT_REANCHOR, REANCHOR_LEVEL, audit.execute_audit_reanchor,
                       after_entry=audit.anchor_after_entry)
    approvals.set_gate(access.gate_approval)
    approvals.register(CREDENTIAL_ADD, required_level(Action.add_credential),
                       owner.execute_add)
    approvals.register(CREDENTIAL_REMOVE, required_level(Action.remove_credential),
                       owner.execute_remove)
    return routes, access


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # The socket (and its lock) first: a second daemon must be turned away
        # before it opens the state and audit databases.
        listener = open_listener(self.config)
        try:
            # Then the home: one daemon per PACD_HOME whatever socket it serves.
            ensure_private_home(self.config.home)
            home_lock = HomeLock(self.config.home)
        except BaseException:
            listener.close()
            raise
        presence = PresenceProbe(self.config)
        try:
            services = await asyncio.to_thread(build_services, self.config)
        except BaseException:
            home_lock.release()
            listener.close()
            raise
        try:
            await self._serve(loop, services, listener, presence)
        finally:
            with contextlib.suppress(PacdError):
                await asyncio.to_thread(services.audit.append, DAEMON_ACTOR, "daemon.stop",
                                        listener.where, "info", "pacd stopped", {})
            await asyncio.to_thread(services.store.integrity.close)
            await asyncio.to_thread(services.audit.close)
            services.store.close()
            home_lock.release()
            listener.close()

    async def _serve(self, loop: asyncio.AbstractEventLoop, services: Services,
                     listener: OwnerListener, presence: PresenceProbe) -> None:
        services.events.bind(loop)
        services.presence_methods = await asyncio.to_thread(presence.result)
        routes, access = owner_routes(services)
        self._watch_audit_health(services)

        def on_audit(entry: AuditEntry) -> None:
            services.events.publish("audit.appended", seq=entry.seq, action=entry.action,
                                    decision=entry.decision, target=entry.target,
                                    actor=entry.actor)

        services.audit.add_listener(on_audit)
        server = OwnerServer(
            routes, access.authorize, services.audit,
            max_connections=self.config.max_connections,
            max_body_bytes=self.config.max_body_bytes,
            max_tokenless_body_bytes=self.config.max_tokenless_body_bytes,
            header_timeout_s=self.config.header_timeout_s,
        )
        on_stop_signals(loop, self.request_stop)
        expiry = asyncio.create_task(self._expire(services))
        retention = asyncio.create_task(run_periodically(
            Retention(services.store, services.registry,
                      SealedData(services.store, services.vault),
                      Inbox(services.store, services.vault),
                      services.audit, services.clock.wall),
            self.config.retention_interval_s))
        # Containers: agent sockets and Podman (which need not be reachable to start).
        lifecycle = await attach_lifecycle(services)
        try:
            await server.start(listener)
            await asyncio.to_thread(services.audit.append, DAEMON_ACTOR, "daemon.start",
                                    listener.where, "info",
                                    f"pacd {__version__} listening", {"pid": os.getpid()})
            sd_notify("READY=1")
            log.info("pacd %s listening on %s", __version__, listener.where)
            # Only now Podman: connecting (podman-py's import), the reconcile that
            # reopens the sockets of running agents and the event stream run in the
            # watcher's thread while the socket already answers; container calls made
            # before the first connect connect themselves.
            lifecycle.start_watching()
            await self._stop.wait()
            sd_notify("STOPPING=1")
            log.info("stopping")
            services.events.publish("daemon.stopping")
            await asyncio.sleep(0)  # let streams take the last event
            services.events.close_all()
            await server.stop()
        finally:
            await lifecycle.close()
            for task in (expiry, retention):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @staticmethod
    def _watch_audit_health(services: Services) -> None:
        """Tell subscribers (and the log) when the audit log stops or starts vouching."""
        health = services.audit.health()
        refusing = [health.refusing]
        if health.refusing:
            log.error("%s; actions above basic are refused until `pacd audit reanchor` is "
                      "approved", health.reason())
            _publish_health(services, health)

        def changed(health: AuditHealth) -> None:
            if health.checkpoint_error is not None:
                services.events.publish("audit.checkpoint_error",
                                        message=health.checkpoint_error,
                                        count=health.checkpoint_failures,
                                        refusing=health.refusing)
            if health.refusing != refusing[0]:
                refusing[0] = health.refusing
                _publish_health(services, health)

        services.audit.add_health_listener(changed)

    async def _expire(self, services: Services) -> None:
        while True:
            await asyncio.sleep(EXPIRY_TICK_S)
            try:
                await asyncio.to_thread(services.approvals.expire_due)
            except PacdError as exc:  # e.g. the audit log is unavailable: retry next tick
                log.warning("approval expiry: %s", exc.message)


def _publish_health(services: Services, health: AuditHealth) -> None:
    event = audit_event(health)
    services.events.publish(str(event.pop("type")), **event)


def _run(main: Coroutine[Any, Any, None]) -> None:
    """uvloop where available (a faster event loop for the socket hot path)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def main(config: Config) -> int:
    """Run the daemon in the foreground; returns the process exit code."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s pacd[%(process)d] %(levelname)s %(message)s")
    # Whatever the daemon creates (databases, their WAL files, directories) is
    # private unless it sets a wider mode on purpose (the agent sockets do).
    os.umask(0o077)
    raise_open_file_limit()
    try:
        _run(Daemon(config).run())
    except PacdError as exc:
        print(f"pacd daemon: {exc.message}", file=sys.stderr)
        return exc.exit_code
    return 0
