"""Calls to a plugin: the endpoint's token bucket per (plugin, endpoint, agent), and what
a caller gets when the plugin is slow, gone or answers too much — against real Unix
sockets served by this test."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from pacd.core.models import APIEndpoint, HttpMethod, RateLimit
from pacd.errors import PluginTimeout, PluginUnavailable, RateLimited
from pacd.plugins.calls import MAX_PLUGIN_BODY, PluginCalls, PluginRoute
from pacd.plugins.directory import PluginDirectories, PluginDirectory


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def route(sock: Path | None = None, rpm: int = 60, burst: int = 10) -> PluginRoute:
    """A route to the plugin whose directory holds ``sock`` (``plugin.sock``)."""
    endpoint = APIEndpoint("/format", HttpMethod.POST, rate_limit=RateLimit(rpm, burst))
    directory = PluginDirectory(-1) if sock is None else PluginDirectory.at(sock.parent)
    return PluginRoute("c1", "p1", "Text Formatter", endpoint, directory)


def calls(clock: Clock | None = None, timeout_s: float = 30.0) -> PluginCalls:
    return PluginCalls(None, PluginDirectories(), clock or Clock(),  # type: ignore[arg-type]
                       timeout_s=timeout_s)


def test_the_eleventh_call_in_a_burst_is_refused_with_retry_after_rounded_up() -> None:
    clock = Clock()
    c, r = calls(clock), route()
    for _ in range(10):
        c.take(r, "writer")
    with pytest.raises(RateLimited) as refused:
        c.take(r, "writer")
    assert refused.value.extra == {"retry_after": 1}
    clock.now += 0.5  # half a token back: still refused, still "1 s"
    with pytest.raises(RateLimited) as again:
        c.take(r, "writer")
    assert again.value.extra == {"retry_after": 1}
    clock.now += 0.5
    c.take(r, "writer")  # one token refilled at 60 a minute
    # Each agent has its own bucket.
    for _ in range(10):
        c.take(r, "reader")


def test_retry_after_at_one_call_a_minute_is_a_minute() -> None:
    clock = Clock()
    c, r = calls(clock), route(rpm=1, burst=1)
    c.take(r, "writer")
    with pytest.raises(RateLimited) as refused:
        c.take(r, "writer")
    assert refused.value.extra == {"retry_after": 60}


def test_an_endpoint_without_rate_limit_is_not_limited() -> None:
    c = calls()
    r = PluginRoute("c1", "p1", "x", APIEndpoint("/format", HttpMethod.POST),
                    PluginDirectory(-1))
    taken = 0
    for _ in range(1000):
        c.take(r, "writer")  # raises RateLimited if any bucket were applied
        taken += 1
    assert taken == 1000


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _with_plugin(handler: Handler, run: Callable[[Path], Awaitable[None]]) -> None:
    with tempfile.TemporaryDirectory(prefix="pacd-pc-") as tmp:
        path = Path(tmp) / "plugin.sock"
        server = await asyncio.start_unix_server(handler, path=str(path))
        try:
            await run(path)
        finally:
            server.close()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + await reader.readexactly(length)


def test_forward_sends_the_callers_identity_and_returns_the_answer() -> None:
    seen: list[bytes] = []

    async def plugin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_request(reader))
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async def run(path: Path) -> None:
        answer = await calls().forward(route(path), "POST", "/format?x=1", b'{"text":"a"}',
                                       content_type="application/json", caller="c1/writer")
        assert (answer.status, answer.content_type, answer.body) == (
            201, "application/json", b"{}")

    asyncio.run(_with_plugin(plugin, run))
    request = seen[0].decode()
    assert request.startswith("POST /format?x=1 HTTP/1.1\r\n")
    assert "X-Pacd-Agent: c1/writer\r\n" in request
    assert request.endswith('{"text":"a"}')


def test_a_plugin_that_never_answers_is_a_timeout() -> None:
    async def plugin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)  # waits-on: external clock — a slow plugin, not a wait

    async def run(path: Path) -> None:
        with pytest.raises(PluginTimeout):
            await calls(timeout_s=0.2).forward(route(path), "POST", "/format", b"",
                                               content_type=None, caller="c1/writer")

    asyncio.run(_with_plugin(plugin, run))


def test_a_plugin_that_hangs_up_or_answers_too_much_is_unavailable() -> None:
    async def hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()

    async def too_much(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        size = MAX_PLUGIN_BODY + 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)
        await writer.drain()
        writer.close()

    async def run(path: Path) -> None:
        with pytest.raises(PluginUnavailable) as refused:
            await calls().forward(route(path), "POST", "/format", b"", content_type=None,
                                  caller="c1/writer")
        assert type(refused.value) is PluginUnavailable

    asyncio.run(_with_plugin(hangs_up, run))
    asyncio.run(_with_plugin(too_much, run))

    async def nobody(path: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="pacd-pc-") as empty, \
                pytest.raises(PluginUnavailable):
            await calls().forward(route(Path(empty) / "plugin.sock"), "POST", "/format", b"",
                                  content_type=None, caller="c1/writer")

    asyncio.run(_with_plugin(hangs_up, nobody))


def test_a_symbolic_link_in_place_of_the_plugins_socket_is_not_followed() -> None:
    """The plugin owns its directory: a link it puts at plugin.sock, to another socket
    the daemon could reach (the owner's, say), must not take the call there."""
    reached: list[bytes] = []

    async def other(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reached.append(await _read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def run(path: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="pacd-pc-") as plugin:
            (Path(plugin) / "plugin.sock").symlink_to(path)
            r = route(Path(plugin) / "plugin.sock")
            assert not r.directory.has_socket()
            with pytest.raises(PluginUnavailable, match="not a socket"):
                await calls().forward(r, "POST", "/format", b"", content_type=None,
                                      caller="c1/writer")
            # the same socket, not through a link, is reached
            direct = await calls().forward(route(path), "POST", "/format", b"",
                                           content_type=None, caller="c1/writer")
            assert direct.status == 200

    asyncio.run(_with_plugin(other, run))
    assert len(reached) == 1
