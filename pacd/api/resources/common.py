"""What several owner-socket resources share: worker threads and the container runtime."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from pacd.api.services import Lifecycle, Services
from pacd.errors import RuntimeUnavailable

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Blocking work (SQLite, the keychain, signature checks) off the event loop."""
    return await asyncio.to_thread(fn, *args)


def runtime_of(services: Services) -> Lifecycle:
    if services.lifecycle is None:
        raise RuntimeUnavailable(
            "no container runtime is connected to this daemon (Podman support is not "
            "enabled in this build); containers are stored but cannot run yet")
    return services.lifecycle
