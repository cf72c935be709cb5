"""Container lifecycle: agent domains as hardened Podman containers, each with its socket.

:class:`ContainerLifecycle` is the daemon's ``Lifecycle`` (see
:mod:`pacd.api.services`). Its public methods block (Podman calls) and run in
worker threads; agent sockets live on the event loop and are opened and
closed there through :meth:`_on_loop`.

Podman is the truth about what runs. pacd keeps it in step three ways:

* at start-up (and after every reconnect) :meth:`reconcile` lists the
  containers carrying pacd's labels and this owner's id: the ones pacd knows
  get their socket opened or closed to match their state; the ones it does not
  know are *orphans* — reported (``orphans()``, the audit log, an event) and
  left alone, never adopted;
* a watcher thread follows Podman's event stream; any start/stop/death/removal
  of one of our containers re-inspects that agent, closes the socket of an
  agent that stopped, and publishes ``container.state``;
* every ``agent_states`` call asks Podman directly.

If Podman cannot be reached, lifecycle calls raise ``RuntimeUnavailable``
(503, with the adapter's explanation of how to start Podman) while the rest of
the daemon keeps working; the watcher retries in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from pacd.agents.inbox import Doorbell, Inbox
from pacd.agents.server import (
    AgentContext,
    AgentIdentity,
    AgentSockets,
    remove_container_sockets,
    socket_path,
)
from pacd.api.peercred import pid_namespace
from pacd.api.services import Services
from pacd.core.actors import DAEMON_ACTOR
from pacd.core.egress import PROXY_HOST, PROXY_PORT
from pacd.core.generators import generate_containerfile
from pacd.core.models import PersonalAIContainer, SecurityPolicy
from pacd.egress.netns import bind_in_netns
from pacd.egress.proxy import EgressClient, EgressProxy, PolicyOf
from pacd.errors import NotFound, PacdError, RuntimeFailed, RuntimeUnavailable
from pacd.messages import PluginStateView
from pacd.plugins.calls import PluginCalls
from pacd.plugins.daemon_socket import (
    DAEMON_SOCKET_NAME,
    PluginIdentity,
    PluginSocketRoutes,
    socket_key,
)
from pacd.plugins.directory import PluginDirectories, PluginDirectory
from pacd.plugins.runner import PluginRunner, image_digest
from pacd.registry import ContainerRecord, PluginRecord
from pacd.runtime.hardening import (
    LABEL_AGENT,
    LABEL_CONTAINER_ID,
    LABEL_OWNER_ID,
    LABEL_PLUGIN,
    PACD_LABELS,
    agent_run_spec,
    container_name,
    egress_via_proxy,
    plugin_container_name,
    plugin_egress_via_proxy,
)
from pacd.runtime.images import build_owner_image, owner_image_tag
from pacd.runtime.kube import export_kube
from pacd.runtime.podman_url import no_podman_socket
from pacd.vault import SealedData

if TYPE_CHECKING:
    # The adapter pulls in podman-py, requests and urllib3 (a third of the
    # daemon's import time): it is imported by runtime(), when Podman is first
    # used, so a daemon that never touches a container never loads it.
    from pacd.runtime.podman import PodmanRuntime, RuntimeEvent

log = logging.getLogger("pacd.containers")

T = TypeVar("T")
P = ParamSpec("P")

RUNNING = "running"
STOPPED = "stopped"
MISSING = "missing"
#: how long a worker thread waits for the event loop to open or close a socket
LOOP_CALL_TIMEOUT_S = 30.0
RETRY_MIN_S = 0.5
RETRY_MAX_S = 10.0


def agent_state(podman_state: str) -> str:
    """Podman's container state as an agent state: running, stopped or missing."""
    if podman_state == "missing":
        return MISSING
    return RUNNING if podman_state == "running" else STOPPED


@dataclass(frozen=True)
class Orphan:
    """A container with pacd's labels and this owner's id that pacd does not know."""

    podman_id: str
    name: str
    state: str
    container_id: str
    agent: str

    def to_json(self) -> dict[str, str]:
        return {"podman_id": self.podman_id, "name": self.name, "state": self.state,
                "container_id": self.container_id, "agent": self.agent}


@dataclass
class _Locks:
    guard: threading.Lock = field(default_factory=threading.Lock)
    per_container: dict[str, threading.Lock] = field(default_factory=dict)

    def of(self, container_id: str) -> threading.Lock:
        with self.guard:
            return self.per_container.setdefault(container_id, threading.Lock())


class ContainerLifecycle:
    def __init__(self, services: Services, loop: asyncio.AbstractEventLoop) -> None:
        self.services = services
        self.loop = loop
        self.inbox = Inbox(services.store, services.vault)
        self.data = SealedData(services.store, services.vault,
                               container_quota=services.config.quota_per_container_bytes,
                               concern_quota=services.config.quota_per_concern_bytes)
        self.doorbell = Doorbell()
        self.plugins = PluginRunner(services)
        self.plugins.on_running = self._serve_plugin
        self.plugins.on_stopped = self._close_plugin_socket
        #: each running plugin's directory, reached through its container
        self.plugin_dirs = PluginDirectories()
        self.plugin_calls = PluginCalls(services.registry, self.plugin_dirs)
        self.sockets = AgentSockets(AgentContext(
            data=self.data, audit=services.audit, inbox=self.inbox, doorbell=self.doorbell,
            clock=services.clock.wall, plugins=self.plugin_calls))
        self.egress = EgressProxy(services.audit,
                                  allow_loopback=services.config.egress_allow_loopback)
        #: guards ``_runtime`` only: held for a read or a swap, never across a connect,
        #: so a status answer does not wait for Podman (or for podman-py's import)
        self._runtime_lock = threading.Lock()
        #: one connect at a time (the watcher's and a request's would race otherwise)
        self._connect_lock = threading.Lock()
        self._runtime: PodmanRuntime | None = None
        #: the last state pacd saw per agent, so each change is reported once
        self._known: dict[tuple[str, str], str] = {}
        self._known_lock = threading.Lock()
        self._locks = _Locks()
        self._orphans: dict[str, Orphan] = {}
        #: bumped whenever the set of orphans changes, so readers can cache orphans()
        self.orphans_generation = 0
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        #: why the watcher is not following Podman right now ("" when it is)
        self.runtime_problem = "not connected yet"

    # --- Podman connection -----------------------------------------------------

    def runtime(self) -> PodmanRuntime:
        """The Podman adapter, connecting on first use; RuntimeUnavailable if none answers."""
        with self._connect_lock:
            with self._runtime_lock:
                if self._runtime is not None:
                    return self._runtime
            # No socket where Podman would listen: nothing to connect to, and no need to
            # load the adapter (podman-py, requests, urllib3) to say so.
            absent = no_podman_socket(self.services.config.podman_url, os.environ)
            if absent is not None:
                raise RuntimeUnavailable(absent)
            from pacd.runtime.podman import connect_podman  # lazy: see TYPE_CHECKING above

            runtime = connect_podman(self.services.config.podman_url, os.environ)
            with self._runtime_lock:
                self._runtime = runtime
            return runtime

    def podman_view(self) -> dict[str, Any]:
        with self._runtime_lock:
            current = self._runtime
        problem = self.runtime_problem
        url = current.url if current is not None else self.services.config.podman_url
        return {"connected": not problem, "url": url,
                "detail": problem or f"following Podman events on {url}"}

    def _lost_runtime(self, runtime: PodmanRuntime) -> None:
        # Forget the adapter so the next call looks for Podman again (the rootless
        # socket may appear, or the owner may have started podman.socket).
        with self._runtime_lock:
            if self._runtime is runtime:
                self._runtime = None
        with contextlib.suppress(Exception):
            runtime.close()

    def _with_runtime(self, fn: Callable[Concatenate[PodmanRuntime, P], T],
                      *args: P.args, **kwargs: P.kwargs) -> T:
        runtime = self.runtime()
        try:
            return fn(runtime, *args, **kwargs)
        except RuntimeUnavailable:
            self._lost_runtime(runtime)
            raise

    # --- the event loop ------------------------------------------------------------

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the daemon's loop from a worker thread and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(LOOP_CALL_TIMEOUT_S)

    def _open_socket(self, record: ContainerRecord, model: PersonalAIContainer,
                     agent: str) -> None:
        identity = AgentIdentity(record.id, record.name, record.owner_id, agent)
        path = socket_path(self.services.config.agent_socket_dir, record.id, agent)
        self._on_loop(self.sockets.open(identity, model, path))

    def _serve_container(self, runtime: PodmanRuntime, container_id: str, agent: str) -> None:
        """Let the agent's socket serve the processes of its running container, and only
        those: its init's PID namespace, looked up now (at each start or sighting of a
        running container), so the request path never asks Podman."""
        ns = pid_namespace(runtime.init_pid(container_name(container_id, agent)))
        if ns is None:
            log.error("cannot tell the PID namespace of %s/%s: its socket serves no one",
                      container_id, agent)
        elif ns == pid_namespace(os.getpid()):
            # A container in the host's PID namespace would let every host process
            # of the owner's uid act as the agent: serve no one instead.
            log.error("%s/%s runs in the host's PID namespace: its socket serves no one",
                      container_id, agent)
            ns = None
        self._on_loop(self.sockets.serve_namespace(container_id, agent, ns))

    def _close_socket(self, container_id: str, agent: str) -> bool:
        self._on_loop(self.egress.close((container_id, agent)))
        return self._on_loop(self.sockets.close(container_id, agent))

    def _open_egress(self, runtime: PodmanRuntime, record: ContainerRecord, agent: str) -> None:
        """Serve the egress proxy inside a running agent's container when its policy lets
        it out (the container itself has loopback only). Looked up at each start or
        sighting, like the socket's namespace; a listener already in this container
        is kept."""
        model = record.model()
        member = model.agent(agent)
        if member is None or not egress_via_proxy(model, member):
            return
        pid = runtime.init_pid(container_name(record.id, agent))
        if pid is None:
            raise RuntimeFailed(f"agent {agent!r} of {record.id} is not running: "
                                "no egress proxy for it")
        self._listen_for_egress(EgressClient.agent(record.id, agent), pid,
                                self._egress_policy(record.id, agent))

    def _listen_for_egress(self, client: EgressClient, pid: int, policy_of: PolicyOf) -> None:
        """The proxy's listener in the network namespace of ``pid`` (a container's init),
        served for ``client``; a listener already in that container is kept."""
        if self.egress.serving(client.key) == pid:
            return
        sock = bind_in_netns(pid, PROXY_HOST, PROXY_PORT)
        try:
            self._on_loop(self.egress.open(client, pid, sock, policy_of))
        except BaseException:
            sock.close()
            raise

    def _egress_policy(self, container_id: str, agent: str, plugin_id: str | None = None
                       ) -> PolicyOf:
        """The policy each egress connection is checked against: the container's as it
        is now, or None once the agent (or the plugin approved for it, ``plugin_id``)
        may no longer go out, or the container or plugin is gone."""
        def read() -> SecurityPolicy | None:
            try:
                model = self.services.registry.get(container_id).model()
            except NotFound:
                return None
            member = model.agent(agent)
            if member is None or not egress_via_proxy(model, member):
                return None
            if plugin_id is not None:
                plugin = next((p for p in self.services.registry.plugins(container_id)
                               if p.plugin_id == plugin_id and p.agent == agent), None)
                if plugin is None or not plugin_egress_via_proxy(
                        model, member, plugin.model().required_capabilities):
                    return None
            return model.policy

        async def policy() -> SecurityPolicy | None:
            return await asyncio.to_thread(read)

        return policy

    # --- Lifecycle ---------------------------------------------------------------------

    @property
    def polls_generation(self) -> int:
        return self.doorbell.generation

    def waiting_polls(self) -> dict[str, int]:
        return self.doorbell.waiting()

    def agent_states(self, record: ContainerRecord) -> dict[str, str]:
        """Per agent: running, stopped or missing, as Podman sees it now."""
        return self._with_runtime(self._states, record)

    def _states(self, runtime: PodmanRuntime, record: ContainerRecord) -> dict[str, str]:
        model = record.model()
        found = {c.name.lstrip("/"): c for c in runtime.list_labelled(
            {**PACD_LABELS, LABEL_OWNER_ID: record.owner_id, LABEL_CONTAINER_ID: record.id})}
        states: dict[str, str] = {}
        for agent in model.agents:
            item = found.get(container_name(record.id, agent.name))
            states[agent.name] = MISSING if item is None else agent_state(item.state)
        return states

    def start(self, record: ContainerRecord) -> dict[str, str]:
        """Create and start every agent that is not running; all or nothing."""
        with self._locks.of(record.id):
            return self._with_runtime(self._start, record)

    def _start(self, runtime: PodmanRuntime, record: ContainerRecord) -> dict[str, str]:
        model = record.model()
        states = self._states(runtime, record)
        started: list[str] = []
        try:
            for agent in model.agents:
                if states[agent.name] == RUNNING:
                    # Running already (e.g. across a daemon restart): just serve it.
                    self._open_socket(record, model, agent.name)
                    self._serve_container(runtime, record.id, agent.name)
                    self._open_egress(runtime, record, agent.name)
                    continue
                # The socket exists before the agent does, so its first request works.
                self._open_socket(record, model, agent.name)
                started.append(agent.name)
                path = socket_path(self.services.config.agent_socket_dir, record.id, agent.name)
                spec = agent_run_spec(model, agent, record.owner_id, path,
                                      socket_dir=path.parent)
                runtime.run_agent(spec, replace=True)
                self._serve_container(runtime, record.id, agent.name)
                self._open_egress(runtime, record, agent.name)
                self._note(record.id, agent.name, RUNNING)
        except BaseException:
            # All or nothing: a container whose agents half run is worse than one
            # that is plainly stopped.
            for name in started:
                with contextlib.suppress(PacdError):
                    runtime.remove(container_name(record.id, name), force=True,
                                   missing_ok=True)
                with contextlib.suppress(Exception):
                    self._close_socket(record.id, name)
                self._note(record.id, name, MISSING)
            raise
        # Plugins after their agents; one that cannot start is refused or failed on its
        # own (audited, listed) and does not undo the agents.
        self.plugins.start_all(runtime, record)
        return self._states(runtime, record)

    def stop(self, record: ContainerRecord) -> dict[str, str]:
        with self._locks.of(record.id):
            return self._with_runtime(self._stop_agents, record)

    def _stop_agents(self, runtime: PodmanRuntime, record: ContainerRecord) -> dict[str, str]:
        self.plugins.stop_all(runtime, record)
        for agent in record.model().agents:
            with contextlib.suppress(NotFound):
                runtime.stop(container_name(record.id, agent.name))
            self._close_socket(record.id, agent.name)
        states = self._states(runtime, record)
        for name, state in states.items():
            # Noted under the container lock, so the watcher sees no change to report:
            # the owner's stop is audited by the API already.
            self._note(record.id, name, state)
        return states

    def remove(self, record: ContainerRecord) -> None:
        """Remove the agents' containers, sockets, sealed data, keys and inboxes."""
        with self._locks.of(record.id):
            self._with_runtime(self._remove, record)

    def _remove(self, runtime: PodmanRuntime, record: ContainerRecord) -> None:
        self.plugins.remove_all(runtime, record)
        self.plugin_calls.forget(record.id)
        for agent in record.model().agents:
            runtime.remove(container_name(record.id, agent.name), force=True, missing_ok=True)
            self._close_socket(record.id, agent.name)
        remove_container_sockets(self.services.config.agent_socket_dir, record.id)
        self.data.delete_container(record.id)
        self.services.vault.forget_container(record.id)
        self.inbox.delete_container(record.id)
        with self._known_lock:
            for key in [k for k in self._known if k[0] == record.id]:
                del self._known[key]

    def build_image(self, record: ContainerRecord, base_image: str
                    ) -> tuple[str, Generator[str, None, None]]:
        """The owner's image tag, and its build as a generator of progress lines.

        Whatever can be refused is refused here, before anything is built (a bad
        base reference, no Podman, a base image not in local storage), so the
        caller can still answer with a plain error. The generator blocks on
        Podman and is meant to be drained in a worker thread; closing it early
        closes the connection to Podman.
        """
        model = record.model()
        repository = self.services.config.image_repository
        tag = owner_image_tag(record.owner_id, repository)
        generate_containerfile(model, base_image)  # the reference is checked before Podman
        if not self._with_runtime(lambda runtime: runtime.image_exists(base_image)):
            raise NotFound(
                f"base image {base_image} is not in local Podman storage, and pacd builds "
                "without registry access. Put a base image there first (`podman load -i "
                f"IMAGE.tar`, `podman import ROOTFS.tar {base_image}` or `podman build -t "
                f"{base_image} DIR`), or name one that is there: `pacd image build ID --base "
                "IMAGE` (request member base_image), or base_image in config.toml "
                "(PACD_BASE_IMAGE)")
        runtime = self.runtime()

        def lines() -> Generator[str, None, None]:
            try:
                yield from build_owner_image(runtime, model, record.owner_id,
                                             repository=repository, base_image=base_image)
            except RuntimeUnavailable:
                self._lost_runtime(runtime)
                raise

        return tag, lines()

    def export_kube(self, record: ContainerRecord) -> str:
        return export_kube(record.model(), record.owner_id)

    # --- plugins -------------------------------------------------------------------

    def _serve_plugin(self, runtime: PodmanRuntime, record: ContainerRecord,
                      plugin: PluginRecord) -> None:
        """Set up the daemon's side of a running plugin: its directory (reached through
        the container), its own socket to the daemon there, served to the processes of
        its container and only those (like an agent's, see _serve_container), and the
        egress proxy in its network namespace when its policy lets it out."""
        name = plugin_container_name(record.id, plugin.plugin_id, plugin.agent)
        pid = runtime.init_pid(name)
        if pid is None:
            raise RuntimeFailed(f"plugin container {name} is not running")
        key = (record.id, plugin.plugin_id, plugin.agent)
        directory = self.plugin_dirs.get(key)
        if directory is None or directory.pid != pid:
            # A container not served yet (or a new one): what served an earlier one goes.
            self._close_plugin_socket(plugin)
            directory = PluginDirectory.of_process(pid)
            # The pid still names this container after the directory was opened, so
            # it is not a process that took the number of one that died.
            if runtime.init_pid(name) != pid:
                directory.close()
                raise RuntimeFailed(f"plugin container {name} stopped while starting")
            self.plugin_dirs.attach(key, directory)
        served = directory
        model = record.model()
        identity = PluginIdentity(record.id, record.name, record.owner_id, plugin.agent,
                                  plugin_id=plugin.plugin_id)
        access = plugin.model().security_requirements.max_data_access
        self._on_loop(self.sockets.open_routes(
            (record.id, socket_key(plugin.plugin_id, plugin.agent)),
            lambda: PluginSocketRoutes(self.sockets.ctx, identity, model, access),
            lambda: served.bind(DAEMON_SOCKET_NAME),
            lambda: served.unlink(DAEMON_SOCKET_NAME)))
        ns = pid_namespace(pid)
        if ns is not None and ns == pid_namespace(os.getpid()):
            log.error("plugin container %s runs in the host's PID namespace: its socket "
                      "serves no one", name)
            ns = None
        self._on_loop(self.sockets.serve_namespace(
            record.id, socket_key(plugin.plugin_id, plugin.agent), ns))
        member = model.agent(plugin.agent)
        if member is not None and plugin_egress_via_proxy(
                model, member, plugin.model().required_capabilities):
            self._listen_for_egress(
                EgressClient.plugin(record.id, socket_key(plugin.plugin_id, plugin.agent),
                                    plugin.plugin_id, plugin.name, plugin.agent),
                pid, self._egress_policy(record.id, plugin.agent, plugin.plugin_id))

    def _close_plugin_socket(self, plugin: PluginRecord, *, keep_directory: bool = False
                             ) -> None:
        """Tear down the daemon's side of a plugin: its proxy, its socket, then its
        directory (the socket is removed through it). ``keep_directory`` (a plugin
        that died): calls still find its dead socket there and get 502, as they do
        until it is started again or removed, rather than 404 for a plugin that is
        installed."""
        key = socket_key(plugin.plugin_id, plugin.agent)
        self._on_loop(self.egress.close((plugin.container_id, key)))
        self._on_loop(self.sockets.close(plugin.container_id, key))
        if not keep_directory:
            self.plugin_dirs.close((plugin.container_id, plugin.plugin_id, plugin.agent))

    def _is_plugin_of(self, record: ContainerRecord, name: str) -> bool:
        return any(p.image and plugin_container_name(record.id, p.plugin_id, p.agent) == name
                   for p in self.services.registry.plugins(record.id))

    def plugin_image_digest(self, ref: str) -> str:
        """The id of an image in local Podman storage (never pulled); NotFound if absent."""
        return self._with_runtime(image_digest, ref)

    def plugin_states(self, record: ContainerRecord) -> list[PluginStateView]:
        try:
            return self._with_runtime(self.plugins.states, record)
        except RuntimeUnavailable:
            return self.plugins.states(None, record)

    def sync_plugins(self, record: ContainerRecord) -> None:
        """Start approved plugins if the container's agents all run (after an approval)."""
        with self._locks.of(record.id):
            def sync(runtime: PodmanRuntime) -> None:
                states = self._states(runtime, record)
                if states and all(state == RUNNING for state in states.values()):
                    self.plugins.start_all(runtime, record)
            self._with_runtime(sync)

    def remove_plugin(self, record: ContainerRecord, plugin: PluginRecord) -> None:
        """Remove a plugin's container (its calls end) and directory."""
        with self._locks.of(record.id):
            self._with_runtime(self.plugins.remove, plugin)

    # --- orphans & reconciling ---------------------------------------------------------

    def orphans(self) -> list[dict[str, str]]:
        with self._known_lock:
            return [o.to_json() for o in sorted(self._orphans.values(), key=lambda o: o.name)]

    def _known_state(self, container_id: str, agent: str) -> str:
        with self._known_lock:
            return self._known.get((container_id, agent), MISSING)

    def _note(self, container_id: str, agent: str, state: str) -> bool:
        """Remember an agent's state; True if it changed."""
        with self._known_lock:
            changed = self._known.get((container_id, agent), MISSING) != state
            self._known[(container_id, agent)] = state
            return changed

    def reconcile(self) -> list[Orphan]:
        """Bring sockets in line with Podman and report orphans; the orphans found."""
        return self._with_runtime(self._reconcile)

    def _reconcile(self, runtime: PodmanRuntime) -> list[Orphan]:
        owner = self.services.owners.get_owner()
        if owner is None:
            return []  # no owner, so no container can be ours
        records = {r.id: r for r in self.services.registry.all()}
        found: dict[str, Orphan] = {}
        for item in runtime.list_labelled({**PACD_LABELS, LABEL_OWNER_ID: owner.id}):
            cid = item.labels.get(LABEL_CONTAINER_ID, "")
            agent = item.labels.get(LABEL_AGENT, "")
            record = records.get(cid)
            name = item.name.lstrip("/")
            if LABEL_PLUGIN in item.labels:
                if record is None or not self._is_plugin_of(record, name):
                    found[item.id] = Orphan(item.id, name, item.state, cid,
                                            item.labels.get(LABEL_PLUGIN, ""))
                continue
            if (record is None or record.model().agent(agent) is None
                    or name != container_name(cid, agent)):
                found[item.id] = Orphan(item.id, name, item.state, cid, agent)
        for record in records.values():
            with self._locks.of(record.id):
                # Listed again under the lock: a listing taken before a start or stop
                # that was in progress would undo it.
                states = self._states(runtime, record)
                for agent, state in states.items():
                    self._sync_agent(runtime, record, agent, state)
                if states and all(state == RUNNING for state in states.values()):
                    # e.g. after a daemon restart: plugins run while their agents do
                    self.plugins.start_all(runtime, record)
        self._report_orphans(found)
        return list(found.values())

    def _report_orphans(self, found: dict[str, Orphan]) -> None:
        with self._known_lock:
            new = [o for pid, o in found.items() if pid not in self._orphans]
            if found != self._orphans:
                self.orphans_generation += 1
            self._orphans = found
        for orphan in new:
            log.warning("orphan container %s (%s): carries pacd's labels but pacd does "
                        "not know it; left alone", orphan.name, orphan.podman_id[:12])
            with contextlib.suppress(PacdError):
                self.services.audit.append(
                    DAEMON_ACTOR, "container.orphan", orphan.podman_id, "info",
                    "a container with pacd's labels that pacd does not know; not adopted",
                    orphan.to_json())
            self.services.events.publish("container.orphan", **orphan.to_json())

    def _sync_agent(self, runtime: PodmanRuntime, record: ContainerRecord, agent: str,
                    state: str) -> None:
        """Open or close one agent's socket to match ``state`` (Podman's view, seen
        by the watcher or a reconcile; the caller holds the container's lock), and
        report a change pacd did not make itself."""
        if state == RUNNING:
            try:
                self._open_socket(record, record.model(), agent)
                self._serve_container(runtime, record.id, agent)
                self._open_egress(runtime, record, agent)
            except PacdError as exc:
                log.error("cannot open the socket or egress proxy of %s/%s: %s", record.id,
                          agent, exc.message)
        else:
            self._close_socket(record.id, agent)
        if not self._note(record.id, agent, state):
            return
        if state != RUNNING:
            with contextlib.suppress(PacdError):
                self.services.audit.append(DAEMON_ACTOR, "container.agent_state", record.id, "info",
                                    f"agent {agent!r} is {state} (not stopped by pacd)",
                                    {"agent": agent, "state": state})
        self._publish(record, agent, state)

    def _publish(self, record: ContainerRecord, agent: str, state: str) -> None:
        states = {a.name: self._known_state(record.id, a.name) for a in record.model().agents}
        running = sum(1 for s in states.values() if s == RUNNING)
        overall = RUNNING if running == len(states) else "partial" if running else STOPPED
        self.services.events.publish("container.state", id=record.id, name=record.name,
                              state=overall, agent=agent, agent_state=state)

    # --- the Podman event watcher ------------------------------------------------------

    def start_watching(self) -> None:
        self._watcher = threading.Thread(target=self._watch, name="pacd-podman-events",
                                         daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        delay = RETRY_MIN_S
        since: float | None = None
        while not self._stop.is_set():
            runtime: PodmanRuntime | None = None
            try:
                runtime = self.runtime()
                # Replay from just before the reconcile: nothing between the listing
                # and the subscription is missed (handling an event twice is harmless).
                since = (since or time.time()) - 1.0
                self._reconcile(runtime)
                self.runtime_problem = ""
                delay = RETRY_MIN_S
                for event in runtime.events(since, self._stop, label_filter=PACD_LABELS):
                    since = max(since, event.time)
                    self._on_event(runtime, event)
            except RuntimeUnavailable as exc:
                if self._stop.is_set():
                    break
                self.runtime_problem = exc.message
                log.warning("following Podman: %s (retrying in %.1f s)", exc.message, delay)
                if runtime is not None:
                    self._lost_runtime(runtime)
            except Exception as exc:  # the watcher must survive anything and retry
                if self._stop.is_set():
                    break
                self.runtime_problem = str(exc)
                log.exception("following Podman failed; retrying in %.1f s", delay)
            self._stop.wait(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def _on_event(self, runtime: PodmanRuntime, event: RuntimeEvent) -> None:
        cid = event.labels.get(LABEL_CONTAINER_ID, "")
        agent = event.labels.get(LABEL_AGENT, "")
        owner = self.services.owners.get_owner()
        if owner is None or event.labels.get(LABEL_OWNER_ID) != owner.id:
            return  # another pacd's container (another PACD_HOME on the same Podman)
        if LABEL_PLUGIN in event.labels:
            # A plugin's state is read from Podman when listed; here an unknown plugin
            # container changes the orphans, and a plugin that is no longer running
            # loses its socket to the daemon.
            try:
                record = self.services.registry.get(cid) if cid else None
            except NotFound:
                record = None
            name = event.name.lstrip("/")
            if record is None or not self._is_plugin_of(record, name):
                self._reconcile(runtime)
                return
            with self._locks.of(cid):  # not half way through a start or stop
                if runtime.state(name) != "running":
                    for p in self.services.registry.plugins(cid):
                        if plugin_container_name(cid, p.plugin_id, p.agent) == name:
                            self._close_plugin_socket(p, keep_directory=True)
            return
        try:
            record = self.services.registry.get(cid) if cid else None
        except NotFound:
            record = None
        if record is None or record.model().agent(agent) is None:
            self._reconcile(runtime)  # an unknown container came or went: orphans changed
            return
        # The event says *something* happened; Podman's current state says what is
        # true now (events of a replaced container may arrive after the new one runs).
        # The lock keeps this from acting on a start or stop that is half done.
        with self._locks.of(cid):
            state = agent_state(runtime.state(container_name(cid, agent)))
            self._sync_agent(runtime, record, agent, state)

    async def close(self) -> None:
        """Stop following Podman and close every agent socket (agents keep running)."""
        self._stop.set()
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.join, 10.0)
        await self.sockets.close_all()
        await self.egress.close_all()
        self.plugin_dirs.close_all()
        # Not while a request's connect is under way: it would set a runtime after this.
        with self._connect_lock, self._runtime_lock:
            runtime, self._runtime = self._runtime, None
        if runtime is not None:
            runtime.close()


async def attach_lifecycle(services: Services) -> ContainerLifecycle:
    """Build the lifecycle on the running loop and make it the daemon's.

    It does not follow Podman yet: the daemon calls :meth:`~ContainerLifecycle.start_watching`
    once its socket listens, so start-up never waits for Podman (connecting, importing
    podman-py, the first reconcile). Podman need not be reachable at all: lifecycle
    calls answer 503 until it is, and the watcher connects when it can.
    """
    lifecycle = ContainerLifecycle(services, asyncio.get_running_loop())
    services.lifecycle = lifecycle
    return lifecycle
