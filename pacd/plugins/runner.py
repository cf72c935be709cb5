"""Approved plugins as hardened containers, one per (container, plugin, agent).

A plugin approved with an image runs while its container's agents run: it is
started after them, stopped with them, re-adopted after a daemon restart
(its container keeps running like an agent's) and removed on uninstall or
when its container is deleted. It runs with an agent's hardening
(:func:`pacd.runtime.hardening.plugin_run_spec`), pinned to the image id the
owner approved: before each start the image reference the owner named is
looked up again, and if it now names other content (a re-tag, a rebuild) the
plugin is *refused* — not started, audited, shown in the listing — until an
owner approves the new image.

The plugin's directory, ``/run/pacd-plugin``, where it creates ``plugin.sock``
and the daemon binds ``pacd.sock``, is a small tmpfs in its container
(:func:`pacd.runtime.hardening.plugin_dir_mount`): what the plugin writes there
is capped and never reaches the host's disk. The daemon reaches it through the
container (:mod:`pacd.plugins.directory`), once the container runs.

Every method blocks on Podman; the caller (the lifecycle) holds the
container's lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pacd.core.actors import DAEMON_ACTOR
from pacd.core.fields import is_image_reference
from pacd.errors import InvalidRequest, NotFound, PacdError
from pacd.messages import PluginStateView
from pacd.registry import ContainerRecord, PluginRecord
from pacd.runtime.hardening import (
    PLUGIN_SOCKET_DIR_IN_CONTAINER,
    plugin_container_name,
    plugin_run_spec,
)

if TYPE_CHECKING:
    from pacd.api.services import Services
    from pacd.runtime.podman import PodmanRuntime

log = logging.getLogger("pacd.plugins")

#: where pacd kept plugin directories on the host before they were capped tmpfs mounts
LEGACY_PLUGINS_DIR = "plugins"

PENDING = "pending"
APPROVED = "approved"
RUNNING = "running"
STOPPED = "stopped"
REFUSED = "refused"
FAILED = "failed"


def image_digest(runtime: PodmanRuntime, ref: str) -> str:
    """The id (``sha256:…``) of ``ref`` in local Podman storage; never pulled."""
    if not is_image_reference(ref) or len(ref) > 512:
        raise InvalidRequest(f"image: {ref!r} is not a container image reference",
                             [f"image: {ref!r} is not a container image reference"])
    if not runtime.image_exists(ref):
        raise NotFound(
            f"image {ref} is not in local Podman storage, and pacd never pulls: put it "
            f"there first (`podman build -t {ref} DIR` or `podman load -i IMAGE.tar`)")
    ident = str(runtime.inspect_image(ref).get("Id", ""))
    if not ident:
        raise NotFound(f"image {ref} has no id in local Podman storage")
    return ident if ident.startswith("sha256:") else f"sha256:{ident}"


def _image_id(ref: str) -> str:
    return ref.removeprefix("sha256:")


def _has_capped_dir(info: dict[str, Any]) -> bool:
    """Whether a plugin container (Podman's inspect) has its directory as pacd makes it
    now: a tmpfs of its own, and nothing of the host mounted there."""
    tmpfs = (info.get("HostConfig") or {}).get("Tmpfs") or {}
    binds = [m for m in info.get("Mounts") or []
             if str(m.get("Destination", "")).rstrip("/") == PLUGIN_SOCKET_DIR_IN_CONTAINER]
    return PLUGIN_SOCKET_DIR_IN_CONTAINER in tmpfs and not binds


class PluginRunner:
    def __init__(self, services: Services) -> None:
        self.s = services
        #: the daemon's side of a plugin (its directory, its own socket, its egress
        #: proxy): set up once its container runs (started, or found running), torn
        #: down when it stops or is removed. Set by the lifecycle.
        self.on_running: Callable[[PodmanRuntime, ContainerRecord, PluginRecord], None] | None \
            = None
        self.on_stopped: Callable[[PluginRecord], None] | None = None
        #: why a plugin is refused or failed, until it next starts or is removed
        self._problems: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._lock = threading.Lock()

    # --- state -----------------------------------------------------------------

    def _problem(self, plugin: PluginRecord) -> tuple[str, str] | None:
        with self._lock:
            return self._problems.get((plugin.container_id, plugin.plugin_id, plugin.agent))

    def _set_problem(self, plugin: PluginRecord, problem: tuple[str, str] | None) -> None:
        key = (plugin.container_id, plugin.plugin_id, plugin.agent)
        with self._lock:
            if problem is None:
                self._problems.pop(key, None)
            else:
                self._problems[key] = problem

    def states(self, runtime: PodmanRuntime | None, record: ContainerRecord
               ) -> list[PluginStateView]:
        """Every approved plugin with its state (``runtime`` None: Podman unreachable)."""
        out: list[PluginStateView] = []
        for p in self.s.registry.plugins(record.id):
            state, reason = self._state_of(runtime, p)
            out.append(PluginStateView(p.plugin_id, p.name, p.version, p.agent, state, reason,
                                   p.image, p.image_digest, p.approval_id))
        return out

    def _state_of(self, runtime: PodmanRuntime | None, p: PluginRecord) -> tuple[str, str]:
        if not p.image:
            return APPROVED, "approved without an image: it does not run"
        problem = self._problem(p)
        if runtime is None:
            return problem or (APPROVED, "Podman is not reachable")
        podman = runtime.state(plugin_container_name(p.container_id, p.plugin_id, p.agent))
        if podman == "running":
            return RUNNING, ""
        if problem is not None:
            return problem
        if podman == "missing":
            return APPROVED, "not started: its container's agents are not running"
        return STOPPED, f"its container is {podman}"

    # --- start, stop, remove ---------------------------------------------------------

    def start_all(self, runtime: PodmanRuntime, record: ContainerRecord) -> None:
        """Start every approved plugin with an image that is not running. A plugin that
        cannot start is refused or failed (audited, in the listing); the others and
        the agents carry on."""
        for p in self.s.registry.plugins(record.id):
            if p.image:
                self._start_one(runtime, record, p)

    def _start_one(self, runtime: PodmanRuntime, record: ContainerRecord,
                   p: PluginRecord) -> None:
        name = plugin_container_name(record.id, p.plugin_id, p.agent)
        if runtime.state(name) == "running":
            # Running already (e.g. across a daemon restart): serve it again — if it
            # runs what the owner approved. Anything else under its name is removed.
            info = runtime.inspect(name)
            running = str(info.get("Image", ""))
            if _image_id(running) != _image_id(p.image_digest):
                runtime.remove(name, force=True, missing_ok=True)
                self._stopped(p)
                self._refuse(record, p, REFUSED,
                             f"its container ran image {running}, not the approved "
                             f"{p.image_digest}; removed")
                return
            if _has_capped_dir(info):
                try:
                    if self.on_running is not None:
                        self.on_running(runtime, record, p)
                except PacdError as exc:
                    log.error("cannot serve the running plugin %s of %s: %s", p.name,
                              record.id, exc.message)
                return
            # Its directory is not the capped one (a container made by an earlier pacd,
            # with a host directory): started afresh below, as the approved image.
            log.warning("plugin %s of %s runs without its capped directory: restarted",
                        p.name, record.id)
            runtime.remove(name, force=True, missing_ok=True)
            self._stopped(p)
        try:
            found = image_digest(runtime, p.image)
        except NotFound as exc:
            found = ""
            missing = exc.message
        else:
            missing = ""
        if found != p.image_digest:
            reason = (missing or f"image {p.image} is now {found}, not the approved "
                      f"{p.image_digest}") + "; approve the plugin again to run another image"
            self._refuse(record, p, REFUSED, reason)
            return
        try:
            model = record.model()
            agent = model.agent(p.agent)
            if agent is None:
                raise NotFound(f"container {record.name!r} has no agent {p.agent!r}")
            # Started by the approved id, so a re-tag between the check and the start
            # cannot swap what runs.
            spec = plugin_run_spec(model, agent, record.owner_id, p.plugin_id,
                                   image=p.image_digest,
                                   capabilities=p.model().required_capabilities)
            runtime.run_agent(spec, replace=True)
            if self.on_running is not None:
                self.on_running(runtime, record, p)
        except PacdError as exc:
            # A plugin the daemon cannot serve (its directory, its socket, its proxy)
            # does not run half set up.
            with contextlib.suppress(PacdError):
                runtime.remove(name, force=True, missing_ok=True)
            self._stopped(p)
            self._refuse(record, p, FAILED, exc.message)
            return
        self._set_problem(p, None)
        self._remove_host_dir(name)
        self._audit(record, p, "plugin.start", "allow", f"plugin {p.name!r} started",
                    details={"image_digest": p.image_digest})
        self.s.events.publish("plugin.state", container_id=record.id, plugin_id=p.plugin_id,
                              agent=p.agent, state=RUNNING)

    def _stopped(self, p: PluginRecord) -> None:
        if self.on_stopped is not None:
            with contextlib.suppress(PacdError):
                self.on_stopped(p)

    def _refuse(self, record: ContainerRecord, p: PluginRecord, state: str,
                reason: str) -> None:
        log.warning("plugin %s of %s (%s) not started: %s", p.name, record.id, p.agent, reason)
        previous = self._problem(p)
        self._set_problem(p, (state, reason))
        if previous != (state, reason):  # once per cause, not on every reconcile
            self._audit(record, p, "plugin.start", "deny", reason,
                        details={"state": state, "image": p.image, "image_digest": p.image_digest})
        self.s.events.publish("plugin.state", container_id=record.id, plugin_id=p.plugin_id,
                              agent=p.agent, state=state, reason=reason)

    def stop_all(self, runtime: PodmanRuntime, record: ContainerRecord) -> None:
        for p in self.s.registry.plugins(record.id):
            if p.image:
                with contextlib.suppress(NotFound):
                    runtime.stop(plugin_container_name(record.id, p.plugin_id, p.agent))
                self._stopped(p)

    def remove_all(self, runtime: PodmanRuntime, record: ContainerRecord) -> None:
        for p in self.s.registry.plugins(record.id):
            self.remove(runtime, p)

    def remove(self, runtime: PodmanRuntime, p: PluginRecord) -> None:
        """Remove the plugin's container (ending its calls; its directory goes with it)."""
        name = plugin_container_name(p.container_id, p.plugin_id, p.agent)
        runtime.remove(name, force=True, missing_ok=True)
        self._stopped(p)
        self._remove_host_dir(name)
        self._set_problem(p, None)

    def _remove_host_dir(self, name: str) -> None:
        """Remove the host directory an earlier pacd mounted for the plugin ``name``
        (``plugins/<name>/`` next to the owner socket), once no container uses it: what
        the plugin wrote there was not capped."""
        base = self.s.config.socket.parent / LEGACY_PLUGINS_DIR
        directory = base / name
        if directory.parent == base and os.path.isdir(directory) \
                and not os.path.islink(directory):
            shutil.rmtree(directory, ignore_errors=True)
            with contextlib.suppress(OSError):
                base.rmdir()  # the last one: nothing of plugins is on the host any more

    def _audit(self, record: ContainerRecord, p: PluginRecord, action: str, decision: str,
               reason: str, *, details: dict[str, object]) -> None:
        with contextlib.suppress(PacdError):
            self.s.audit.append(DAEMON_ACTOR, action, record.id, decision, reason,
                                {"plugin_id": p.plugin_id, "plugin": p.name,
                                 "agent": p.agent, **details})
