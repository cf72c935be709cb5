"""Agents calling plugins through their own socket (``/v1/plugins/{plugin}/{path}``).

The daemon is the only way to a plugin: its socket is in a directory inside the
plugin's container, which the daemon reaches through the container
(:mod:`pacd.plugins.directory`). A call is routed only to a plugin that is
installed in the caller's container, approved for the calling agent, running,
and that declares the endpoint (path and method); it is rate limited per
(plugin, endpoint, agent) by the endpoint's token bucket; it carries the
caller's identity in ``X-Pacd-Agent``, set here and never taken from the agent.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from pacd.core.models import APIEndpoint
from pacd.core.ratelimit import TokenBucket
from pacd.errors import Forbidden, NotFound, PluginTimeout, PluginUnavailable, RateLimited
from pacd.plugins.directory import PluginDirectories, PluginDirectory
from pacd.registry import ContainerRegistry

#: a call's body, and a plugin's answer, at most (bytes)
MAX_PLUGIN_BODY = 1024 * 1024
#: seconds a plugin has to answer a call completely
PLUGIN_TIMEOUT_S = 30.0
AGENT_HEADER = "X-Pacd-Agent"


@dataclass(frozen=True)
class PluginRoute:
    container_id: str
    plugin_id: str
    name: str
    endpoint: APIEndpoint
    #: the running plugin's directory, holding its socket
    directory: PluginDirectory


@dataclass(frozen=True)
class PluginAnswer:
    status: int
    content_type: str
    body: bytes


class PluginCalls:
    def __init__(self, registry: ContainerRegistry, directories: PluginDirectories,
                 clock: Callable[[], float] = time.monotonic,
                 timeout_s: float = PLUGIN_TIMEOUT_S) -> None:
        self.registry = registry
        self.directories = directories
        self.clock = clock
        self.timeout_s = timeout_s
        self._buckets: dict[tuple[str, str, str, str, str], TokenBucket] = {}

    async def route(self, container_id: str, agent: str, ref: str, method: str,
                    path: str) -> PluginRoute:
        """Where the call goes; NotFound (no such plugin running, or no such endpoint)
        or Forbidden (installed, but approved for another agent)."""
        records = await asyncio.to_thread(self.registry.plugins, container_id)
        # By the route the container's OpenAPI document gives (the name's slug), its
        # id, or its name.
        named = [p for p in records if p.image and ref in (p.model().slug, p.plugin_id, p.name)]
        if not named:
            raise NotFound(f"plugin {ref[:100]!r} is not running in this container")
        mine = [p for p in named if p.agent == agent]
        if not mine:
            approved = ", ".join(sorted({p.agent for p in named}))
            raise Forbidden(f"plugin {named[0].name!r} was approved for agent(s) {approved}, "
                            f"not {agent!r}")
        plugin = mine[0]
        endpoint = next((e for e in plugin.model().endpoints
                         if e.path == path and e.method.value == method), None)
        if endpoint is None:
            raise NotFound(f"plugin {plugin.name!r} has no endpoint {method} {path[:200]}")
        directory = self.directories.get((container_id, plugin.plugin_id, agent))
        if directory is None or not directory.has_socket():
            raise NotFound(f"plugin {plugin.name!r} is not running")
        return PluginRoute(container_id, plugin.plugin_id, plugin.name, endpoint, directory)

    def take(self, route: PluginRoute, agent: str) -> None:
        """Spend one token of the endpoint's bucket for this agent; RateLimited (with
        ``retry_after`` in whole seconds, rounded up) when it is empty."""
        limit = route.endpoint.rate_limit
        if limit is None:
            return
        key = (route.container_id, route.plugin_id, route.endpoint.method.value,
               route.endpoint.path, agent)
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(limit.requests_per_minute,
                                                      limit.burst_size, now)
        if bucket.try_acquire(now):
            return
        wait = max(1, math.ceil(bucket.retry_after(now)))
        raise RateLimited(
            f"{route.endpoint.method.value} {route.endpoint.path} of plugin {route.name!r} "
            f"allows {limit.burst_size} calls at once and {limit.requests_per_minute} a "
            f"minute; retry in {wait} s", retry_after=wait)

    def forget(self, container_id: str) -> None:
        for key in [k for k in self._buckets if k[0] == container_id]:
            del self._buckets[key]

    async def forward(self, route: PluginRoute, method: str, path_qs: str, body: bytes, *,
                      content_type: str | None, caller: str) -> PluginAnswer:
        """Send the call to the plugin and read its whole answer (capped)."""
        headers = {AGENT_HEADER: caller}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            async with asyncio.timeout(self.timeout_s):
                with route.directory.socket_path() as path:
                    return await self._send(route, method, path_qs, body, headers, path)
        except TimeoutError:
            raise PluginTimeout(f"plugin {route.name!r} did not answer within "
                                f"{self.timeout_s:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise PluginUnavailable(f"plugin {route.name!r} is not answering: "
                                    f"{type(exc).__name__}") from None

    @staticmethod
    async def _send(route: PluginRoute, method: str, path_qs: str, body: bytes,  # noqa: PLR0917
                    headers: dict[str, str], path: str) -> PluginAnswer:
        connector = aiohttp.UnixConnector(path=path)
        async with aiohttp.ClientSession(connector=connector) as session, \
                session.request(method, f"http://plugin{path_qs}", data=body,
                                headers=headers, allow_redirects=False) as reply:
            # Read to the end (read(n) may return less than is coming), and stop as
            # soon as the answer is too large.
            chunks: list[bytes] = []
            size = 0
            async for chunk in reply.content.iter_chunked(65536):
                size += len(chunk)
                if size > MAX_PLUGIN_BODY:
                    raise PluginUnavailable(f"plugin {route.name!r} answered with more "
                                            f"than {MAX_PLUGIN_BODY} bytes")
                chunks.append(chunk)
            return PluginAnswer(reply.status,
                                reply.headers.get("Content-Type", "application/octet-stream"),
                                b"".join(chunks))
