"""The daemon's event stream: fan-out of small JSON events to any number of subscribers.

Publishing never waits: each subscriber has its own bounded buffer, and a
subscriber whose buffer is full is dropped (it receives a final
``{"type": "overflow"}`` line) instead of slowing the daemon down. Events may be
published from worker threads (the audit log's listener runs there); they are
handed to the event loop thread-safely.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
from datetime import UTC, datetime
from typing import Any

DEFAULT_BUFFER = 256


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Subscription:
    """One subscriber's bounded buffer. Iterate it to receive encoded lines."""

    def __init__(self, bus: EventBus, limit: int) -> None:
        self._bus = bus
        self._limit = limit
        self._lines: collections.deque[bytes] = collections.deque()
        self._wakeup = asyncio.Event()
        self.overflowed = False
        self.closed = False

    def _offer(self, line: bytes) -> None:
        if self.closed:
            return
        if len(self._lines) >= self._limit:
            # Keep what was buffered, add the overflow marker, and stop: the
            # subscriber learns it missed events instead of silently losing them.
            self.overflowed = True
            self._lines.append(_encode({"type": "overflow", "time": utc_now_iso()}))
            self.close()
            return
        self._lines.append(line)
        self._wakeup.set()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()
        self._bus._forget(self)

    async def get(self, timeout: float) -> bytes | None:
        """The next line; None after ``timeout`` without one; EOFError once closed and drained."""
        if self._lines:
            return self._lines.popleft()
        if self.closed:
            raise EOFError
        self._wakeup.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._wakeup.wait()
        except TimeoutError:
            return None
        if self._lines:
            return self._lines.popleft()
        if self.closed:
            raise EOFError
        return None


def _encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), default=str).encode() + b"\n"


class EventBus:
    def __init__(self, buffer: int = DEFAULT_BUFFER) -> None:
        self._buffer = buffer
        self._subs: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the loop so other threads can publish."""
        self._loop = loop
        self._thread = threading.get_ident()

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def subscribe(self) -> Subscription:
        sub = Subscription(self, self._buffer)
        self._subs.add(sub)
        return sub

    def _forget(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def publish(self, type_: str, **data: Any) -> None:
        """Send an event to every subscriber; never blocks, callable from any thread."""
        if not self._subs:
            # Nobody listens (the usual case: every audited request publishes one):
            # no encoding, and no wake-up of the loop from the audit writer's thread.
            # A subscriber added meanwhile subscribed after this event, as it would
            # had it come a moment later.
            return
        event = {"type": type_, "time": utc_now_iso(), **data}
        line = _encode(event)
        loop = self._loop
        if loop is None:
            self._deliver(line)
        elif threading.get_ident() != self._thread:
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._deliver, line)
        else:
            # Queued behind what other threads handed over before, never ahead of
            # it: the audit log's entries are committed on the writer thread or on
            # the loop, and their events must arrive in seq order either way.
            loop.call_soon(self._deliver, line)

    def _deliver(self, line: bytes) -> None:
        for sub in list(self._subs):
            sub._offer(line)

    def close_all(self) -> None:
        """End every stream (daemon shutdown)."""
        for sub in list(self._subs):
            sub.close()
