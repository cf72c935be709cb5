"""The agent sockets: one aiohttp application and one Unix socket per running agent.

Identity is the socket. Each agent gets its own :class:`AgentRoutes` bound to
its (container, agent) when the socket is opened, and every handler takes the
caller's identity from there, never from the request: an agent can name any
container or agent it likes in a path or header and still acts only as
itself.

Every decision on an agent socket — allowed or refused, including requests
for routes that do not exist — is one audit entry (actor
``agent:<container-id>/<agent>``), appended with the audit log's group commit.
The entry is durable before the agent hears the answer; if it cannot be
written the request fails with 503 ``audit_unavailable`` and nothing is
returned or changed. A read's value is fetched before or while its entry is
written and sent only after the entry is durable; writes are audited before
they are made.

Limits: a data value is at most :data:`MAX_VALUE_BYTES`, a message at most
:data:`MAX_MESSAGE_BYTES`, and an agent has at most the policy's
``maxConcurrentConnections`` requests in flight. Connections are admitted by
the owner socket's connection guard: up to the policy's limit they are
served, a few more get a ``busy`` answer, and beyond twice the limit plus
four they are closed as they are accepted, so an agent holding idle
connections cannot use up the daemon's file descriptors. A connection that
has not sent a complete request head within :data:`HEADER_TIMEOUT_S` is
closed (aiohttp's keep-alive timer runs until the head is complete, and
partial data does not extend it). Refusals that never reach a route —
dropped or busy connections, unparseable requests — are audited coalesced,
one entry per kind and second carrying its count.

On disk (``config.agent_socket_dir``, under the owner socket's private 0700
directory)::

    agents/                      0700  daemon user
      <container-id>/            0700  daemon user
        <agent>/                 0711  mounted at /run/pacd in the agent's container
          agent.sock             0666

The agent's directory, not the socket file, is bind-mounted, so a socket
re-created by a restarted daemon is visible to a container that kept running
(a bind mount of the file would keep pointing at the dead socket). Inside
the container the agent runs as uid 1000 — host uid 1000 with rootful Podman,
a subordinate uid with rootless Podman — which is never the daemon's uid, so
it needs "others" permission: search on its directory and write on the socket
(connecting to a Unix socket needs write permission). The two directories
above are 0700, so no other host user can reach the socket, and each
container sees only its own directory.

File permissions cannot tell the agent from a host process of the daemon's
own uid, which can reach every socket. So every connection is also checked:
the kernel's ``SO_PEERCRED`` pid, read as the connection is accepted, must be
in the PID namespace of the agent's container (compared as namespaces, not
pids: the agent runs under the container's init, and ``podman exec`` joins the
same namespace). The lifecycle records that namespace from Podman's inspect
whenever it starts the container or finds it running; until it has, requests
wait up to :data:`NAMESPACE_WAIT_S` and are then refused. Anything else gets
403 ``peer_refused``, audited coalesced (``agent.peer_refused``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from pacd.agents.resources.base import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    AgentContext,
    AgentIdentity,
    AgentResource,
)
from pacd.agents.resources.data import DataRoutes
from pacd.agents.resources.identity import IdentityRoutes
from pacd.agents.resources.messages import MessageRoutes
from pacd.agents.resources.plugins import PluginRoutes
from pacd.api.decisions import Coalescer, actor_for
from pacd.api.guard import KEEP_IDLE, ConnectionGuard, ConnState
from pacd.api.listener import ensure_private_dir
from pacd.api.peercred import PeerCred, PidNamespace
from pacd.api.route import Call, Route
from pacd.api.wrapper import RouteWrapper, error_response
from pacd.core.models import AgentDomain, PersonalAIContainer
from pacd.errors import (
    Busy,
    ConfigError,
    InvalidRequest,
    NotFound,
    PacdError,
    PeerRefused,
)

#: the identity and context types live with the resources; named here for callers
__all__ = ["AgentContext", "AgentIdentity", "AgentRoutes", "AgentSockets", "bind_agent_socket",
           "remove_container_sockets", "socket_path"]

log = logging.getLogger("pacd.agents")

#: a stopped agent's in-flight requests (a long poll) get this long to finish
SHUTDOWN_TIMEOUT_S = 1.0
#: sockaddr_un.sun_path is 108 bytes including the terminating NUL
MAX_SOCKET_PATH = 107
SOCKET_NAME = "agent.sock"
#: an idle connection, or one still sending its request head, is closed after this long
HEADER_TIMEOUT_S = 10.0
#: how long a request waits for its container's PID namespace to be recorded
#: (the socket opens before the container starts) before it is refused
NAMESPACE_WAIT_S = 10.0


def socket_path(agent_socket_dir: Path, container_id: str, agent: str) -> Path:
    """Where an agent's socket lives on the host; ConfigError if the path is too long."""
    path = agent_socket_dir / container_id / agent / SOCKET_NAME
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigError(
            f"the agent socket path {path} is longer than a Unix socket path may be "
            f"({MAX_SOCKET_PATH} bytes); choose a shorter PACD_SOCKET directory")
    return path


def bind_agent_socket(path: Path) -> socket.socket:
    """Bind a listening socket at ``path`` with the layout described above."""
    agents_dir, container_dir, agent_dir = path.parent.parent.parent, path.parent.parent, \
        path.parent
    agents_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The owner socket's check: created with its mode, or refused if not ours or
    # open beyond it (never chmodded into shape).
    instead = "remove it and restart the daemon"
    ensure_private_dir(agents_dir, "agent socket directory", instead, mode=0o700)
    ensure_private_dir(container_dir, "agent socket directory", instead, mode=0o700)
    ensure_private_dir(agent_dir, "agent socket directory", instead, mode=0o711)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ConfigError(f"{path} exists and is not a socket")
        os.unlink(path)  # left by a daemon that died: this daemon owns the directory
    return listen_for_others(path)


def listen_for_others(path: Path) -> socket.socket:
    """A listening socket at ``path`` that a container's uid may connect to: mode 0666,
    its private parent directories being what admits only that container (see the
    module docstring); nothing is left at ``path`` if binding fails."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o666)  # noqa: S103 - the parents are private
        sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    return sock


def remove_container_sockets(agent_socket_dir: Path, container_id: str) -> None:
    """Remove a container's socket directories (after its agents are gone)."""
    target = agent_socket_dir / container_id
    if target.parent == agent_socket_dir and container_id and "/" not in container_id:
        shutil.rmtree(target, ignore_errors=True)


class AgentRoutes:
    """One agent's socket: its resources' routes behind the connection checks."""

    def __init__(self, ctx: AgentContext, identity: AgentIdentity,
                 container: PersonalAIContainer) -> None:
        member = container.agent(identity.agent)
        if member is None or container.id != identity.container_id:
            raise InvalidRequest(f"agent {identity.agent!r} is not part of container "
                                 f"{identity.container_id}")
        self.ctx = ctx
        self.me = identity
        self.container = container
        self.agent = member
        self._in_flight = 0
        self._max_in_flight = max(1, container.policy.max_concurrent_connections)
        self.refusals = Coalescer(ctx.audit)
        self.guard = ConnectionGuard(self._max_in_flight, on_malformed=self._malformed,
                                     on_dropped=self._dropped, on_evicted=self._evicted,
                                     read_pid_namespace=True)
        #: the agent container's PID namespace; only its processes are served
        self.peer_ns: PidNamespace | None = None
        self._peer_ns_known = asyncio.Event()
        #: every decision is in the agent's name: the socket is its identity
        self.wrapper = RouteWrapper(ctx.audit, identity.actor)
        resources = self.resources(ctx, identity, container, member)
        self.routes: list[Route] = [
            *(route for resource in resources for route in resource.routes()),
            # Last: whatever matched nothing above (any method, any path) is a 404,
            # and a decision like every other one.
            Route("*", "/{tail:.*}", "unknown", "no such route", self.unknown,
                  action="agent.route"),
        ]

    def resources(self, ctx: AgentContext, identity: AgentIdentity,
                  container: PersonalAIContainer, member: AgentDomain) -> list[AgentResource]:
        """The resources this socket serves (a plugin's socket serves fewer)."""
        return [kind(ctx, identity, container, member)
                for kind in (IdentityRoutes, DataRoutes, MessageRoutes, PluginRoutes)]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_VALUE_BYTES, middlewares=[self._middleware])
        for route in self.routes:
            app.router.add_route(route.method, route.path, self.wrapper.endpoint(route))
        return app

    # --- plumbing -------------------------------------------------------------

    def serve_namespace(self, ns: PidNamespace | None) -> None:
        """Serve processes in ``ns`` only (the container's, as it started); None serves none."""
        self.peer_ns = ns
        self._peer_ns_known.set()

    async def _from_container(self, state: ConnState | None) -> bool:
        """Whether the connection was made by a process in the agent's container."""
        if state is None or state.pid_ns is None:
            return False
        if not self._peer_ns_known.is_set():
            # The socket opens before its container starts, so the agent's first
            # request can come before the container's namespace is known: it waits.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(NAMESPACE_WAIT_S):
                    await self._peer_ns_known.wait()
        return self.peer_ns is not None and state.pid_ns == self.peer_ns

    async def _refuse_unrouted(self, action: str, target: str, error: PacdError,
                               details: dict[str, str] | None = None) -> PacdError:
        """Record a refusal taken before any route (raises AuditError if it cannot be)."""
        await self.ctx.audit.append_async(self.me.actor, action, target, "deny",
                                          error.message, {"code": error.code,
                                                          **(details or {})})
        return error

    def _malformed(self, _peer: PeerCred | None, status: int) -> None:
        self.refusals.note(self.me.actor, "agent.request.malformed", "",
                           "not a valid HTTP request", {"status": status})

    def _evicted(self) -> None:
        self.refusals.note(self.me.actor, "agent.connection.evicted", "",
                           "idle connection closed to make room for a new one",
                           {"keep_idle": KEEP_IDLE})

    def _dropped(self) -> None:
        self.refusals.note(self.me.actor, "agent.connection.dropped", "",
                           "over the hard connection cap; closed unanswered",
                           {"hard_cap": self.guard.hard_cap})

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        try:
            state = self.guard.state_for(request.transport)
            if not await self._from_container(state):
                peer = state.peer if state is not None else None
                await self.refusals.record(
                    actor_for(peer.uid if peer else None), "agent.peer_refused", self.me.actor,
                    "the connecting process is not in the agent's container",
                    {"peer_uid": peer.uid if peer else None,
                     "peer_pid": peer.pid if peer else None,
                     "path": request.path[:MAX_KEY_BYTES]})
                refused = error_response(PeerRefused(
                    f"agent {self.me.agent!r}'s socket serves only processes in its own "
                    "container"))
                refused.force_close()
                return refused
            if state is None or state.busy:
                await self.refusals.record(
                    self.me.actor, "agent.connection.busy", request.path[:MAX_KEY_BYTES],
                    "over the connection limit", {"max_connections": self._max_in_flight})
                busy = error_response(Busy(
                    f"agent {self.me.agent!r} already has {self._max_in_flight} connections "
                    "open (the policy's maxConcurrentConnections); retry shortly"))
                busy.force_close()
                return busy
            if self._in_flight >= self._max_in_flight:
                raise await self._refuse_unrouted(
                    "agent.connect", request.path,
                    Busy(f"agent {self.me.agent!r} already has {self._max_in_flight} requests "
                         "in flight (the policy's maxConcurrentConnections); retry shortly"))
            self._in_flight += 1
            # Not idle while the agent's request is handled (long polls included), so
            # the guard's eviction never closes it to make room; a refused peer's
            # connection stays idle and is closed first.
            state.active += 1
            try:
                return await handler(request)
            finally:
                self._in_flight -= 1
                state.active -= 1
        except PacdError as exc:
            return error_response(exc)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("internal error on agent socket %s: %s %s", self.me.actor,
                          request.method, request.path)
            # A failed request is a decision too: recorded, or 503 if it cannot be.
            try:
                await self.ctx.audit.append_async(
                    self.me.actor, "agent.request", request.path[:MAX_KEY_BYTES], "deny",
                    "internal error", {"method": request.method[:16]})
            except PacdError as exc:
                return error_response(exc)
            return error_response(PacdError("internal error; the daemon logged the details"))

    async def unknown(self, call: Call) -> web.Response:
        request = call.request
        error = NotFound(f"no such route on an agent socket: {request.method} "
                         f"{request.path[:200]}")
        await call.decision.append_async(
            self.me.actor, "agent.route", request.path[:MAX_KEY_BYTES], "deny", error.message,
            {"code": error.code, "method": request.method[:16]})
        raise error


class _GuardedSockSite(web.SockSite):
    """A SockSite whose connections pass through the agent's connection guard."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket,
                 guard: ConnectionGuard) -> None:
        super().__init__(runner, sock)
        self._guard = guard
        self._listening = sock

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site; SockSite.start would serve unguarded
        server = self._runner.server
        if server is None:
            raise RuntimeError("the agent socket's runner is not set up")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._guard.wrap(server), sock=self._listening)


@dataclass
class _Site:
    routes: AgentRoutes
    runner: web.AppRunner
    #: removes the socket's file (first thing on close: no new connection after it)
    remove: Callable[[], None]
    sock: socket.socket


class AgentSockets:
    """Every open agent socket of the daemon. Methods run on the event loop."""

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self._sites: dict[tuple[str, str], _Site] = {}
        self._lock = asyncio.Lock()

    async def serve_namespace(self, container_id: str, agent: str,
                              ns: PidNamespace | None) -> bool:
        """Let an open agent socket serve processes in ``ns`` only; False if it is not open."""
        site = self._sites.get((container_id, agent))
        if site is None:
            return False
        site.routes.serve_namespace(ns)
        return True

    def is_open(self, container_id: str, agent: str) -> bool:
        return (container_id, agent) in self._sites

    def open_agents(self) -> list[tuple[str, str]]:
        return sorted(self._sites)

    async def open(self, identity: AgentIdentity, container: PersonalAIContainer,
                   path: Path) -> None:
        """Serve ``identity``'s routes on a new socket at ``path`` (no-op if already open)."""
        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

        await self.open_routes((identity.container_id, identity.agent),
                               lambda: AgentRoutes(self.ctx, identity, container),
                               lambda: bind_agent_socket(path), remove)

    async def open_routes(self, key: tuple[str, str], make: Callable[[], AgentRoutes],
                          bind: Callable[[], socket.socket], remove: Callable[[], None]
                          ) -> None:
        """Serve the routes ``make`` builds on the socket ``bind`` makes, under ``key``
        (no-op if that key is open already); ``remove`` removes its file."""
        async with self._lock:
            if key in self._sites:
                return
            routes = make()
            identity = routes.me
            sock = bind()
            runner = web.AppRunner(routes.app(), access_log=None, handle_signals=False,
                                   shutdown_timeout=SHUTDOWN_TIMEOUT_S,
                                   keepalive_timeout=HEADER_TIMEOUT_S)
            try:
                await runner.setup()
                await _GuardedSockSite(runner, sock, routes.guard).start()
            except BaseException:
                sock.close()
                remove()
                await runner.cleanup()
                raise
            self._sites[key] = _Site(routes, runner, remove, sock)
            log.info("agent socket open: %s at %s", identity.actor, sock.getsockname())

    async def close(self, container_id: str, agent: str) -> bool:
        """Stop serving an agent and remove its socket file; False if it was not open."""
        async with self._lock:
            site = self._sites.pop((container_id, agent), None)
        if site is None:
            return False
        # Unlink first: from this moment no new connection can reach the agent.
        site.remove()
        await site.runner.cleanup()
        site.sock.close()
        await site.routes.refusals.close()
        log.info("agent socket closed: %s", site.routes.me.actor)
        return True

    async def close_all(self) -> None:
        for container_id, agent in list(self._sites):
            await self.close(container_id, agent)
