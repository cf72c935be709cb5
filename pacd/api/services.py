"""The daemon's parts as the routes see them, and the seam for the container runtime."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pacd.approvals import ApprovalQueue
from pacd.audit import AuditLog
from pacd.config import Config
from pacd.events import EventBus
from pacd.messages import PluginStateView
from pacd.presence.clock import Clock
from pacd.presence.owner import OwnerRegistry
from pacd.presence.rp import RelyingParty
from pacd.presence.tokens import TokenService
from pacd.registry import ContainerRecord, ContainerRegistry, PluginRecord
from pacd.store import Store
from pacd.vault import SecretStore, Vault


class Lifecycle(Protocol):
    """What the container runtime offers the API; absent until a runtime is wired in.

    Every method is blocking (the API calls it in a worker thread) and raises
    errors from :mod:`pacd.errors` (``RuntimeUnavailable``, ``RuntimeFailed``).
    """

    #: changes whenever orphans() would answer differently (a cheap cache key)
    orphans_generation: int
    #: why the runtime is not followed right now ("" when it is)
    runtime_problem: str

    def podman_view(self) -> dict[str, Any]:
        """``{"connected", "url", "detail"}``: the Podman service as followed now
        (non-blocking)."""
        ...

    def agent_states(self, record: ContainerRecord) -> dict[str, str]: ...

    #: changes whenever waiting_polls() would answer differently (a cheap cache key)
    @property
    def polls_generation(self) -> int: ...

    def waiting_polls(self) -> dict[str, int]:
        """Agents' ``GET /v1/messages`` long polls waiting for mail right now, by
        ``"<container id>/<agent>"`` (non-blocking: read on the event loop)."""
        ...

    def orphans(self) -> list[dict[str, str]]:
        """Containers with pacd's labels and this owner's id that pacd does not know
        (non-blocking: the last reconcile's findings)."""
        ...

    def start(self, record: ContainerRecord) -> dict[str, str]: ...

    def stop(self, record: ContainerRecord) -> dict[str, str]: ...

    def remove(self, record: ContainerRecord) -> None: ...

    def build_image(self, record: ContainerRecord, base_image: str
                    ) -> tuple[str, Generator[str, None, None]]:
        """Refuse up front (raise) or return the tag and a blocking generator of
        progress lines; the image exists once the generator is exhausted."""
        ...

    def export_kube(self, record: ContainerRecord) -> str: ...

    def plugin_image_digest(self, ref: str) -> str:
        """The id of an image in local Podman storage (never pulled); NotFound if absent."""
        ...

    def plugin_states(self, record: ContainerRecord) -> list[PluginStateView]: ...

    def sync_plugins(self, record: ContainerRecord) -> None:
        """Start the approved plugins that should run and do not."""
        ...

    def remove_plugin(self, record: ContainerRecord, plugin: PluginRecord) -> None: ...


@dataclass
class Services:
    config: Config
    store: Store
    secrets: SecretStore
    vault: Vault
    audit: AuditLog
    owners: OwnerRegistry
    rp: RelyingParty
    tokens: TokenService
    registry: ContainerRegistry
    approvals: ApprovalQueue
    events: EventBus
    clock: Clock
    started_at: float
    presence_methods: list[dict[str, Any]] = field(default_factory=list)
    lifecycle: Lifecycle | None = None
