"""How an agent domain becomes a hardened container: a pure mapping, no I/O.

``agent_run_spec`` turns the model (container, agent, policy) into an
``AgentRunSpec`` that says everything Podman must enforce. ``PodmanRuntime``
only translates it to the Podman API, so what is tested here is exactly what
runs. Every container gets the same floor (read-only root, uid 1000, no
capabilities, no-new-privileges, pids/memory limits, a small noexec ``/tmp``);
no agent gets a network interface but loopback: the policy can open only a
way out through pacd's egress proxy (DESIGN.md §5), never a route.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pacd.core.egress import PROXY_ENV
from pacd.core.generators import LABEL_CARBON_BASED, LABEL_PERSONAL_AI, generate_container_config
from pacd.core.models import (
    EXTERNAL_CAPABILITIES,
    AgentDomain,
    Capability,
    IsolationLevel,
    PersonalAIContainer,
)
from pacd.errors import InvalidRequest

# Container labels: only containers pacd creates carry these (see generators.py for
# why image labels use other names).
LABEL_OWNER_ID = "com.luciverse.owner-id"
LABEL_CONTAINER_ID = "com.luciverse.container-id"
LABEL_AGENT = "com.luciverse.agent"
#: on a plugin's container only (with the agent it serves in LABEL_PLUGIN_AGENT, never
#: LABEL_AGENT: the agent reconciler must not take a plugin for an agent)
LABEL_PLUGIN = "com.luciverse.plugin-id"
LABEL_PLUGIN_AGENT = "com.luciverse.plugin-agent"

#: the labels every pacd container carries; ``list_labelled(PACD_LABELS)`` finds them all
PACD_LABELS: Mapping[str, str] = {LABEL_PERSONAL_AI: "true", LABEL_CARBON_BASED: "true"}

#: where the agent socket appears inside every agent container (API.md)
AGENT_SOCKET_IN_CONTAINER = "/run/pacd/agent.sock"
AGENT_SOCKET_DIR_IN_CONTAINER = "/run/pacd"
#: where a plugin container serves HTTP: a socket it creates in a directory pacd mounts
PLUGIN_SOCKET_DIR_IN_CONTAINER = "/run/pacd-plugin"
PLUGIN_SOCKET_IN_CONTAINER = "/run/pacd-plugin/plugin.sock"
#: the plugin's own socket to the daemon (whoami, data within maxDataAccess)
PLUGIN_DAEMON_SOCKET_IN_CONTAINER = "/run/pacd-plugin/pacd.sock"

AGENT_USER = "1000:1000"
DEFAULT_PIDS_LIMIT = 128
DEFAULT_MEMORY_BYTES = 512 * 1024 * 1024
DEFAULT_TMP_BYTES = 64 * 1024 * 1024
#: the plugin's directory (/run/pacd-plugin) holds its socket and the daemon's, little else
PLUGIN_DIR_BYTES = 1024 * 1024
#: the in-container scratch directory (a size-limited tmpfs, not the host's /tmp)
CONTAINER_TMP = "/tmp"  # noqa: S108

# Podman container names: what `podman create --name` accepts.
_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class TmpfsMount:
    target: str
    size_bytes: int
    #: noexec/nosuid/nodev: scratch space must not become a way to run new code
    options: tuple[str, ...] = ("rw", "noexec", "nosuid", "nodev")

    def mount_options(self) -> tuple[str, ...]:
        return (*self.options, f"size={self.size_bytes}")


@dataclass(frozen=True)
class BindMount:
    source: str
    target: str
    read_only: bool = False
    options: tuple[str, ...] = ("nosuid", "nodev", "noexec")

    def mount_options(self) -> tuple[str, ...]:
        return ("rbind", "ro" if self.read_only else "rw", *self.options)


@dataclass(frozen=True)
class PortPublish:
    """One published port. ``host_port`` 0 lets Podman pick a free one."""

    container_port: int
    host_port: int = 0
    #: loopback only: a published agent port is for the owner's machine, not the LAN
    host_ip: str = "127.0.0.1"
    protocol: str = "tcp"


@dataclass(frozen=True)
class AgentRunSpec:
    """Everything Podman must be told to run one agent domain, hardened."""

    name: str
    image: str
    labels: Mapping[str, str]
    env: Mapping[str, str]
    mounts: tuple[BindMount, ...]
    command: tuple[str, ...] | None = None
    user: str = AGENT_USER
    read_only_root: bool = True
    cap_drop: tuple[str, ...] = ("ALL",)
    no_new_privileges: bool = True
    pids_limit: int = DEFAULT_PIDS_LIMIT
    memory_limit_bytes: int = DEFAULT_MEMORY_BYTES
    tmpfs: tuple[TmpfsMount, ...] = field(
        default_factory=lambda: (TmpfsMount(CONTAINER_TMP, DEFAULT_TMP_BYTES),)
    )
    #: False ⇒ the container gets only a loopback interface
    network: bool = False
    published_ports: tuple[PortPublish, ...] = ()
    hostname: str | None = None
    #: a minimal init (catatonit) as PID 1: forwards SIGTERM to the agent, which as
    #: PID 1 itself would ignore it, and reaps zombies
    init: bool = True
    #: seconds between SIGTERM and SIGKILL on stop
    stop_timeout: int = 10

    def __post_init__(self) -> None:
        # Invariants that make a spec safe whatever built it: a spec that
        # would publish ports without a network, or run without the floor, is
        # refused here rather than half-applied by Podman.
        problems: list[str] = []
        if not _CONTAINER_NAME.fullmatch(self.name):
            problems.append(f"name: {self.name!r} is not a valid container name")
        if not self.image:
            problems.append("image: must not be empty")
        if self.published_ports and not self.network:
            problems.append("published_ports: a container without network cannot publish ports")
        for port in self.published_ports:
            if not 1 <= port.container_port <= 65535 or not 0 <= port.host_port <= 65535:
                problems.append(f"published_ports: {port.container_port} is out of range")
            if port.protocol not in ("tcp", "udp"):
                problems.append(f"published_ports: protocol {port.protocol!r}")
        if self.stop_timeout < 0:
            problems.append("stop_timeout: must not be negative")
        if self.pids_limit <= 0 or self.memory_limit_bytes <= 0:
            problems.append("limits: pids and memory limits must be positive")
        for name in self.env:
            if not _ENV_NAME.fullmatch(name):
                problems.append(f"env: {name!r} is not a valid variable name")
        for target in [m.target for m in self.mounts] + [t.target for t in self.tmpfs]:
            if not PurePosixPath(target).is_absolute():
                problems.append(f"mounts: target {target!r} must be absolute")
        if problems:
            raise InvalidRequest("invalid agent run spec: " + "; ".join(problems), problems)


def short_container_id(container_id: str) -> str:
    """The first 12 hex digits of a container id (UUID dashes dropped)."""
    return container_id.replace("-", "").lower()[:12]


def container_name(container_id: str, agent_name: str) -> str:
    """``pacd-<container-id-short>-<agent>``: unique per container and agent."""
    return f"pacd-{short_container_id(container_id)}-{agent_name}"


def agent_labels(container: PersonalAIContainer, agent: AgentDomain,
                 owner_id: str) -> dict[str, str]:
    """The DESIGN.md §5 labels; the daemon finds and reconciles its containers by them."""
    return {
        **PACD_LABELS,
        LABEL_OWNER_ID: owner_id,
        LABEL_CONTAINER_ID: container.id,
        LABEL_AGENT: agent.name,
    }


def seed_env(container: PersonalAIContainer, owner_id: str) -> dict[str, str]:
    """The seed's container-config environment (CARBON_BASED_AUTH, OWNER_ID,
    SECURITY_LEVEL), from the same generator as ``pacd container config``."""
    if owner_id != container.owner_id:
        raise InvalidRequest(f"container {container.id} does not belong to owner {owner_id}")
    env = generate_container_config(container)["env"]
    return {str(k): str(v) for k, v in env.items()}


def egress_via_proxy(container: PersonalAIContainer, agent: AgentDomain) -> bool:
    """Whether the agent may reach the outside (DESIGN.md §5): the policy allows
    external APIs, the agent holds a network capability, and its isolation is not
    strict. Even then it gets no network interface but loopback: its only way out
    is pacd's egress proxy (``HTTP_PROXY``), limited to ``trusted_domains`` on
    ``allowed_network_ports``."""
    if agent.isolation is IsolationLevel.strict:
        return False
    if not container.policy.allow_external_apis:
        return False
    return any(cap in EXTERNAL_CAPABILITIES for cap in agent.capabilities)


def agent_run_spec(
    container: PersonalAIContainer,
    agent: AgentDomain,
    owner_id: str,
    socket_path: Path | str,
    image: str | None = None,
    *,
    command: tuple[str, ...] | None = None,
    socket_dir: Path | str | None = None,
    pids_limit: int = DEFAULT_PIDS_LIMIT,
    memory_limit_bytes: int = DEFAULT_MEMORY_BYTES,
    tmp_bytes: int = DEFAULT_TMP_BYTES,
) -> AgentRunSpec:
    """The hardened run spec for one agent of a container.

    ``socket_path`` is the agent's socket on the host; it is bind-mounted at
    ``/run/pacd/agent.sock``. When ``socket_dir`` is given instead mounted at
    ``/run/pacd`` (it must hold only this agent's ``agent.sock``), a socket
    re-created by a restarted daemon stays reachable in a running container,
    which a bind mount of the socket file itself does not.
    ``image`` overrides the agent's image (e.g. the owner's built image).
    Every agent gets a network namespace of its own with loopback only; one that
    may go out (:func:`egress_via_proxy`) is told where the proxy listens.
    """
    if container.agent(agent.name) != agent:
        raise InvalidRequest(f"agent {agent.name!r} is not part of container {container.id}")
    env = {
        **seed_env(container, owner_id),
        "PACD_AGENT_SOCKET": AGENT_SOCKET_IN_CONTAINER,
        "PACD_AGENT": agent.name,
        "PACD_CONTAINER_ID": container.id,
        **(PROXY_ENV if egress_via_proxy(container, agent) else {}),
    }
    if socket_dir is not None:
        if PurePosixPath(socket_path) != PurePosixPath(socket_dir) / "agent.sock":
            raise InvalidRequest(
                "socket_path must be <socket_dir>/agent.sock when socket_dir is set")
        mount = BindMount(str(socket_dir), AGENT_SOCKET_DIR_IN_CONTAINER)
    else:
        mount = BindMount(str(socket_path), AGENT_SOCKET_IN_CONTAINER)
    return AgentRunSpec(
        name=container_name(container.id, agent.name),
        image=image or agent.image,
        labels=agent_labels(container, agent, owner_id),
        env=env,
        mounts=(mount,),
        command=command,
        pids_limit=pids_limit,
        memory_limit_bytes=memory_limit_bytes,
        tmpfs=(TmpfsMount(CONTAINER_TMP, tmp_bytes),),
        hostname=agent.name,
    )


def plugin_container_name(container_id: str, plugin_id: str, agent_name: str) -> str:
    """``pacd-<container-id-short>.<agent>.p-<plugin-id-short>``: the dots keep it apart
    from every agent container's name (agent names hold no dot)."""
    return f"pacd-{short_container_id(container_id)}.{agent_name}.p-{short_container_id(plugin_id)}"


def plugin_egress_via_proxy(container: PersonalAIContainer, agent: AgentDomain,
                            capabilities: tuple[Capability, ...]) -> bool:
    """Whether a plugin approved for ``agent`` may reach the outside through pacd's egress
    proxy: the policy allows external APIs and the plugin requires a network capability
    (``capabilities``, its schema's ``required_capabilities``) that the agent holds and
    may use (:func:`egress_via_proxy`). A plugin never goes where its agent may not."""
    if not egress_via_proxy(container, agent):
        return False
    return any(cap in EXTERNAL_CAPABILITIES and cap in agent.capabilities
               for cap in capabilities)


def plugin_dir_mount(size_bytes: int = PLUGIN_DIR_BYTES) -> TmpfsMount:
    """The plugin's directory: a tmpfs of ``size_bytes`` in its container, not a host
    directory, so what the plugin writes there is capped (ENOSPC past the size, and
    its pages count against the container's memory limit, as do its inodes: Podman 4.3
    refuses ``nr_inodes``) and never reaches the host's disk.

    Why a tmpfs and not a bind mount of a size-limited host file system: rootless
    Podman cannot be given one (mounting a tmpfs or a loop device on the host needs
    privileges the owner does not have), while a tmpfs in the container is mounted by
    Podman itself, rootless and rootful alike. The daemon reaches it through
    ``/proc/<init pid>/root`` (:mod:`pacd.plugins.directory`), which needs no more
    than pacd already needs over its containers (their namespaces for the peer check
    and the egress listener). Mode 01733: the plugin (uid 1000) may create
    its socket, only the directory's owner (the container's root: the daemon's own
    uid under rootless Podman, root under rootful) may list it, and the sticky bit
    keeps the plugin from removing the daemon's socket."""
    return TmpfsMount(PLUGIN_SOCKET_DIR_IN_CONTAINER, size_bytes,
                      ("rw", "noexec", "nosuid", "nodev", "mode=1733"))


def plugin_run_spec(
    container: PersonalAIContainer,
    agent: AgentDomain,
    owner_id: str,
    plugin_id: str,
    *,
    image: str,
    capabilities: tuple[Capability, ...] = (),
    pids_limit: int = DEFAULT_PIDS_LIMIT,
    memory_limit_bytes: int = DEFAULT_MEMORY_BYTES,
    tmp_bytes: int = DEFAULT_TMP_BYTES,
    dir_bytes: int = PLUGIN_DIR_BYTES,
) -> AgentRunSpec:
    """The hardened run spec for a plugin approved for ``agent``: the agent's floor
    (read-only root, uid 1000, no capabilities, no-new-privileges, limits, loopback
    only), ``image`` pinned by the caller (the approved digest), and its directory
    ``/run/pacd-plugin`` (:func:`plugin_dir_mount`, ``dir_bytes`` at most), where the
    plugin creates ``plugin.sock``. A plugin whose required ``capabilities`` let it out
    (:func:`plugin_egress_via_proxy`) is told where the proxy listens, as an agent is."""
    if container.agent(agent.name) != agent:
        raise InvalidRequest(f"agent {agent.name!r} is not part of container {container.id}")
    labels = {
        **PACD_LABELS,
        LABEL_OWNER_ID: owner_id,
        LABEL_CONTAINER_ID: container.id,
        LABEL_PLUGIN: plugin_id,
        LABEL_PLUGIN_AGENT: agent.name,
    }
    env = {
        "PACD_PLUGIN_SOCKET": PLUGIN_SOCKET_IN_CONTAINER,
        "PACD_DAEMON_SOCKET": PLUGIN_DAEMON_SOCKET_IN_CONTAINER,
        "PACD_PLUGIN_ID": plugin_id,
        "PACD_CONTAINER_ID": container.id,
        "PACD_AGENT": agent.name,
        **(PROXY_ENV if plugin_egress_via_proxy(container, agent, capabilities) else {}),
    }
    return AgentRunSpec(
        name=plugin_container_name(container.id, plugin_id, agent.name),
        image=image,
        labels=labels,
        env=env,
        mounts=(),
        pids_limit=pids_limit,
        memory_limit_bytes=memory_limit_bytes,
        tmpfs=(TmpfsMount(CONTAINER_TMP, tmp_bytes), plugin_dir_mount(dir_bytes)),
        hostname="plugin",
    )
