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
import json
import logging
import os
import re
import shutil
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from pacd.agents.inbox import MAX_BATCH, MAX_PENDING, Doorbell, Inbox
from pacd.api.decisions import Coalescer, actor_for
from pacd.api.guard import KEEP_IDLE, ConnectionGuard, ConnState
from pacd.api.peercred import PeerCred, PidNamespace
from pacd.audit import AuditLog
from pacd.core.fields import refuse_surrogates
from pacd.core.models import PersonalAIContainer
from pacd.core.rules import can_connect, may_read, may_write
from pacd.errors import (
    Busy,
    ConfigError,
    Forbidden,
    IntegrityError,
    InvalidRequest,
    MalformedRequest,
    NotFound,
    PacdError,
    PayloadTooLarge,
    PeerRefused,
    PluginUnavailable,
    QuotaExceeded,
    RateLimited,
)
from pacd.plugins.calls import MAX_PLUGIN_BODY, PluginCalls
from pacd.vault import SealedData

log = logging.getLogger("pacd.agents")

MAX_VALUE_BYTES = 1024 * 1024
MAX_MESSAGE_BYTES = 64 * 1024
MAX_KEY_BYTES = 512
DEFAULT_WAIT_S = 25.0
MAX_WAIT_S = 60.0
#: a stopped agent's in-flight requests (a long poll) get this long to finish
SHUTDOWN_TIMEOUT_S = 1.0
#: sockaddr_un.sun_path is 108 bytes including the terminating NUL
MAX_SOCKET_PATH = 107
SOCKET_NAME = "agent.sock"
BODY_TIMEOUT_S = 30.0
#: an idle connection, or one still sending its request head, is closed after this long
HEADER_TIMEOUT_S = 10.0
#: how long a request waits for its container's PID namespace to be recorded
#: (the socket opens before the container starts) before it is refused
NAMESPACE_WAIT_S = 10.0

# Keys are opaque to pacd but must be printable: no control characters (they end
# up in audit entries and error messages) and a bounded length.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class AgentIdentity:
    container_id: str
    container_name: str
    owner_id: str
    agent: str

    @property
    def actor(self) -> str:
        return f"agent:{self.container_id}/{self.agent}"


@dataclass(frozen=True)
class AgentContext:
    """The daemon parts every agent socket uses."""

    data: SealedData
    audit: AuditLog
    inbox: Inbox
    doorbell: Doorbell
    clock: Callable[[], float] = time.time
    #: how calls reach plugins (None: no plugin runs, every call is 404)
    plugins: PluginCalls | None = None


def socket_path(agent_socket_dir: Path, container_id: str, agent: str) -> Path:
    """Where an agent's socket lives on the host; ConfigError if the path is too long."""
    path = agent_socket_dir / container_id / agent / SOCKET_NAME
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigError(
            f"the agent socket path {path} is longer than a Unix socket path may be "
            f"({MAX_SOCKET_PATH} bytes); choose a shorter PACD_SOCKET directory")
    return path


def _private_dir(path: Path, mode: int) -> None:
    """Create ``path`` with ``mode``, or check an existing one is ours and set its mode."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=mode)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ConfigError(f"{path} must be a directory owned by uid {os.getuid()}")
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)  # mkdir's mode is filtered by the umask


def bind_agent_socket(path: Path) -> socket.socket:
    """Bind a listening socket at ``path`` with the layout described above."""
    agents_dir, container_dir, agent_dir = path.parent.parent.parent, path.parent.parent, \
        path.parent
    agents_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _private_dir(agents_dir, 0o700)
    _private_dir(container_dir, 0o700)
    _private_dir(agent_dir, 0o711)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ConfigError(f"{path} exists and is not a socket")
        os.unlink(path)  # left by a daemon that died: this daemon owns the directory
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o666)  # noqa: S103 - see the module docstring: private parents
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


def _error(exc: PacdError) -> web.Response:
    response = web.Response(body=json.dumps(exc.to_wire()).encode(), status=exc.status,
                            content_type="application/json")
    if isinstance(exc, RateLimited) and "retry_after" in exc.extra:
        response.headers["Retry-After"] = str(exc.extra["retry_after"])
    return response


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(payload, separators=(",", ":")).encode(),
                        status=status, content_type="application/json")


def _name_problem(what: str, value: str) -> str | None:
    # The usual name, short printable ASCII, passes without the encode and the regex.
    if len(value) <= MAX_KEY_BYTES and value.isascii() and value.isprintable() and value:
        return None
    if not value:
        return f"{what} must not be empty"
    if len(value.encode("utf-8")) > MAX_KEY_BYTES:
        return f"{what} is longer than {MAX_KEY_BYTES} bytes"
    if _CONTROL.search(value):
        return f"{what} must not contain control characters"
    return None


def _float_param(request: web.Request, name: str, default: float, lo: float, hi: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number of seconds, got {raw[:40]!r}") from None
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be between {lo:g} and {hi:g}, got {value:g}")
    return value


class AgentRoutes:
    """The agent-socket routes of API.md for one agent."""

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
        self._whoami = json.dumps({
            "container": container.id,
            "container_name": container.name,
            "agent": member.name,
            "capabilities": [c.value for c in member.capabilities],
            "concerns": [c.name for c in container.concerns_of(member.name)],
        }, separators=(",", ":")).encode()

    @property
    def who(self) -> str:
        """Who this socket serves, for messages."""
        return f"agent {self.me.agent!r}"

    def may_read(self, concern: str) -> bool:
        return may_read(self.container, self.me.agent, concern)

    def may_write(self, concern: str) -> bool:
        return may_write(self.container, self.me.agent, concern)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_VALUE_BYTES, middlewares=[self._middleware])
        self.add_data_routes(app)
        app.router.add_post("/v1/agents/{agent}/messages", self.send_message)
        app.router.add_get("/v1/messages", self.receive_messages, allow_head=False)
        app.router.add_route("*", "/v1/plugins/{plugin}/{path:.*}", self.call_plugin)
        # Last: whatever matched nothing above (any method, any path) is a 404,
        # and a decision like every other one.
        app.router.add_route("*", "/{tail:.*}", self.unknown)
        return app

    def add_data_routes(self, app: web.Application) -> None:
        data = "/v1/data/{concern}/{key:.+}"
        app.router.add_get("/v1/whoami", self.whoami, allow_head=False)
        app.router.add_get(data, self.get_data, allow_head=False)
        app.router.add_put(data, self.put_data)
        app.router.add_delete(data, self.delete_data)

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

    async def decide(self, action: str, target: str, allowed: bool, reason: str,
                     details: dict[str, Any] | None = None) -> None:
        """Record one decision; raises AuditError (503) if it cannot be recorded."""
        await self.ctx.audit.append_async(self.me.actor, action, target,
                                          "allow" if allowed else "deny", reason, details)

    async def refuse(self, action: str, target: str, error: PacdError,
                     details: dict[str, Any] | None = None) -> PacdError:
        """Audit a refusal and hand back the error to raise."""
        await self.decide(action, target, False, error.message,
                          {"code": error.code, **(details or {})})
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
                refused = _error(PeerRefused(
                    f"agent {self.me.agent!r}'s socket serves only processes in its own "
                    "container"))
                refused.force_close()
                return refused
            if state is None or state.busy:
                await self.refusals.record(
                    self.me.actor, "agent.connection.busy", request.path[:MAX_KEY_BYTES],
                    "over the connection limit", {"max_connections": self._max_in_flight})
                busy = _error(Busy(
                    f"agent {self.me.agent!r} already has {self._max_in_flight} connections "
                    "open (the policy's maxConcurrentConnections); retry shortly"))
                busy.force_close()
                return busy
            if self._in_flight >= self._max_in_flight:
                raise await self.refuse(
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
            return _error(exc)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("internal error on agent socket %s: %s %s", self.me.actor,
                          request.method, request.path)
            # A failed request is a decision too: recorded, or 503 if it cannot be.
            try:
                await self.decide("agent.request", request.path[:MAX_KEY_BYTES], False,
                                  "internal error", {"method": request.method[:16]})
            except PacdError as exc:
                return _error(exc)
            return _error(PacdError("internal error; the daemon logged the details"))

    @staticmethod
    def _data_target(request: web.Request) -> tuple[str, str, str]:
        concern = request.match_info["concern"]
        key = request.match_info["key"]
        return concern, key, f"{concern}/{key}"

    async def _check_names(self, action: str, target: str, concern: str, key: str) -> None:
        problems = [p for p in (_name_problem("concern", concern), _name_problem("key", key))
                    if p is not None]
        if problems:
            raise await self.refuse(action, target[:MAX_KEY_BYTES],
                                    InvalidRequest("; ".join(problems), problems))

    # --- routes ---------------------------------------------------------------

    async def whoami(self, request: web.Request) -> web.Response:
        await self.decide("agent.whoami", self.me.agent, True, "identity of this socket")
        return web.Response(body=self._whoami, content_type="application/json")

    async def get_data(self, request: web.Request) -> web.Response:
        action = "agent.data.read"
        concern, key, target = self._data_target(request)
        await self._check_names(action, target, concern, key)
        if not self.may_read(concern):
            raise await self.refuse(action, target, Forbidden(
                f"{self.who} may not read concern {concern!r}"))
        cid = self.me.container_id
        # Most reads are fetched right here: a point read on a free store connection
        # and the opening of a small value cost less than a hop to a worker thread,
        # which on a busy socket was most of a read's cost. A busy store or a large
        # value goes to a thread first. The entry follows the fetch, because the
        # decision depends on it: a value that fails its integrity check (an edited
        # index row, an older ciphertext put back) is a refusal, audited as one.
        # Either way the value leaves only once its entry is durable.
        fetched: bytes | BaseException | None
        try:
            fetched = self.ctx.data.get_if_quick(cid, concern, key)
        except Exception as exc:  # answered below, once the entry is written
            fetched = exc
        if fetched is None:
            try:
                fetched = await asyncio.to_thread(self.ctx.data.get, cid, concern, key)
            except Exception as exc:
                fetched = exc
        if isinstance(fetched, IntegrityError):
            raise await self.refuse(action, target, fetched)
        await self.decide(action, target, True, "read")
        if isinstance(fetched, NotFound):
            raise NotFound(f"no value {key!r} in concern {concern!r}")
        if isinstance(fetched, BaseException):
            raise fetched
        return web.Response(body=fetched, content_type="application/octet-stream")

    async def put_data(self, request: web.Request) -> web.Response:
        action = "agent.data.write"
        concern, key, target = self._data_target(request)
        await self._check_names(action, target, concern, key)
        if not self.may_write(concern):
            raise await self.refuse(action, target, Forbidden(
                f"{self.who} may not write concern {concern!r}"))
        value = await self._read_body(request, action, target, MAX_VALUE_BYTES)
        try:
            await asyncio.to_thread(self.ctx.data.check_quota, self.me.container_id, concern,
                                    key, len(value))
        except QuotaExceeded as exc:
            raise await self.refuse(action, target, exc, dict(exc.extra)) from None
        await self.decide(action, target, True, "write", {"bytes": len(value)})
        await asyncio.to_thread(self.ctx.data.put, self.me.container_id, concern, key, value,
                                self.ctx.clock())
        return web.Response(status=204)

    async def delete_data(self, request: web.Request) -> web.Response:
        action = "agent.data.delete"
        concern, key, target = self._data_target(request)
        await self._check_names(action, target, concern, key)
        if not self.may_write(concern):
            raise await self.refuse(action, target, Forbidden(
                f"{self.who} may not delete in concern {concern!r}"))
        await self.decide(action, target, True, "delete")
        # Deleting what is not there leaves the same state: 204 either way.
        with contextlib.suppress(NotFound):
            await asyncio.to_thread(self.ctx.data.delete, self.me.container_id, concern, key)
        return web.Response(status=204)

    async def send_message(self, request: web.Request) -> web.Response:
        action = "agent.message.send"
        to = request.match_info["agent"]
        problem = _name_problem("agent", to)
        if problem is not None:
            raise await self.refuse(action, to[:MAX_KEY_BYTES], InvalidRequest(problem))
        if not can_connect(self.container, self.me.agent, to):
            raise await self.refuse(action, to, Forbidden(
                f"agent {self.me.agent!r} may not send messages to {to!r}"))
        raw = await self._read_body(request, action, to, MAX_MESSAGE_BYTES)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise await self.refuse(action, to, MalformedRequest(
                f"a message must be JSON: {exc}")) from None
        except RecursionError:
            raise await self.refuse(action, to, MalformedRequest(
                "a message must be JSON nested less deeply")) from None
        try:
            refuse_surrogates(body, "body")  # it is stored as UTF-8: it must be text
        except InvalidRequest as exc:
            raise await self.refuse(action, to, exc) from None
        pending = await asyncio.to_thread(self.ctx.inbox.pending, self.me.container_id, to)
        if pending >= MAX_PENDING:
            raise await self.refuse(action, to, Busy(
                f"agent {to!r} has {pending} undelivered messages; retry later"))
        await self.decide(action, to, True, "message accepted", {"bytes": len(raw)})
        message_id = await asyncio.to_thread(self.ctx.inbox.put, self.me.container_id, to,
                                             self.me.agent, body, self.ctx.clock())
        self.ctx.doorbell.ring(self.me.container_id, to)
        return _json({"id": message_id, "to": to, "accepted": True}, 202)

    async def receive_messages(self, request: web.Request) -> web.StreamResponse:
        action = "agent.messages.receive"
        try:
            wait = _float_param(request, "timeout", DEFAULT_WAIT_S, 0.0, MAX_WAIT_S)
            limit = int(_float_param(request, "limit", MAX_BATCH, 1, MAX_BATCH))
        except InvalidRequest as exc:
            raise await self.refuse(action, self.me.agent, exc) from None
        cid, me = self.me.container_id, self.me.agent
        bell = self.ctx.doorbell.arm(cid, me)
        try:
            messages = await asyncio.to_thread(self.ctx.inbox.peek, cid, me, limit)
            if not messages and wait > 0 and await self.ctx.doorbell.wait(cid, me, bell, wait):
                messages = await asyncio.to_thread(self.ctx.inbox.peek, cid, me, limit)
        finally:
            self.ctx.doorbell.disarm(cid, me, bell)
        await self.decide(action, me, True, f"{len(messages)} messages delivered",
                          {"ids": [m.id for m in messages]})
        payload = json.dumps([m.to_json() for m in messages],
                             separators=(",", ":")).encode()
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload)
        await response.write_eof()
        # Only now, with the whole answer written out, are the messages removed: a
        # failed write above leaves them for the next call (at-least-once).
        await asyncio.to_thread(self.ctx.inbox.remove, cid, me, [m.id for m in messages])
        return response

    async def call_plugin(self, request: web.Request) -> web.Response:
        action = "agent.plugin.call"
        ref = request.match_info["plugin"]
        path = "/" + request.match_info["path"]
        target = f"{ref}{path}"[:MAX_KEY_BYTES]
        method = request.method[:16]
        calls = self.ctx.plugins
        if calls is None:
            raise await self.refuse(action, target, NotFound(
                f"plugin {ref[:100]!r} is not running"), {"method": method})
        try:
            route = await calls.route(self.me.container_id, self.me.agent, ref, method, path)
            calls.take(route, self.me.agent)
        except (NotFound, Forbidden, RateLimited) as exc:
            raise await self.refuse(action, target, exc, {"method": method}) from None
        details: dict[str, Any] = {"plugin_id": route.plugin_id, "endpoint": path,
                                   "method": method}
        body = await self._read_body(request, action, target, MAX_PLUGIN_BODY)
        details["bytes_in"] = len(body)
        try:
            # The caller's identity is the socket's: any X-Pacd-Agent the agent sent
            # is not forwarded (no header of the agent's is).
            answer = await calls.forward(route, method, path + (
                f"?{request.query_string}" if request.query_string else ""), body,
                content_type=request.headers.get("Content-Type"),
                caller=f"{self.me.container_id}/{self.me.agent}")
        except PluginUnavailable as exc:
            raise await self.refuse(action, target, exc, details) from None
        # One entry per call, durable before the agent hears the answer.
        await self.decide(action, target, True, f"plugin answered {answer.status}",
                          {**details, "status": answer.status, "bytes_out": len(answer.body)})
        return web.Response(status=answer.status, body=answer.body,
                            headers={"Content-Type": answer.content_type})

    async def unknown(self, request: web.Request) -> web.Response:
        raise await self.refuse("agent.route", request.path[:MAX_KEY_BYTES], NotFound(
            f"no such route on an agent socket: {request.method} {request.path[:200]}"),
            {"method": request.method[:16]})

    async def _read_body(self, request: web.Request, action: str, target: str,
                         limit: int) -> bytes:
        declared = request.content_length
        if declared is not None and declared > limit:
            raise await self.refuse(action, target, PayloadTooLarge(
                f"the body is {declared} bytes; at most {limit} are accepted"))
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                while chunk := await request.content.read(65536):
                    size += len(chunk)
                    if size > limit:
                        raise await self.refuse(action, target, PayloadTooLarge(
                            f"the body is larger than {limit} bytes"))
                    chunks.append(chunk)
        except TimeoutError:
            raise await self.refuse(action, target, MalformedRequest(
                f"the body did not arrive within {BODY_TIMEOUT_S:g} s")) from None
        raw = b"".join(chunks)
        return raw


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
    path: Path
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
        await self.open_routes((identity.container_id, identity.agent),
                               lambda: AgentRoutes(self.ctx, identity, container),
                               lambda: bind_agent_socket(path), path)

    async def open_routes(self, key: tuple[str, str], make: Callable[[], AgentRoutes],
                          bind: Callable[[], socket.socket], path: Path) -> None:
        """Serve the routes ``make`` builds on the socket ``bind`` makes at ``path``,
        under ``key`` (no-op if that key is open already)."""
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
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                await runner.cleanup()
                raise
            self._sites[key] = _Site(routes, runner, path, sock)
            log.info("agent socket open: %s at %s", identity.actor, path)

    async def close(self, container_id: str, agent: str) -> bool:
        """Stop serving an agent and remove its socket file; False if it was not open."""
        async with self._lock:
            site = self._sites.pop((container_id, agent), None)
        if site is None:
            return False
        # Unlink first: from this moment no new connection can reach the agent.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(site.path)
        await site.runner.cleanup()
        site.sock.close()
        await site.routes.refusals.close()
        log.info("agent socket closed: %s", site.routes.me.actor)
        return True

    async def close_all(self) -> None:
        for container_id, agent in list(self._sites):
            await self.close(container_id, agent)
