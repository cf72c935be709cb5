"""The event bus: fan-out, bounded buffers, overflow, shutdown, thread hand-off."""

from __future__ import annotations

import asyncio
import json
import threading

from pacd.events import EventBus


async def _drain(sub: object) -> list[dict[str, object]]:
    lines = []
    while True:
        try:
            line = await sub.get(0.05)  # type: ignore[attr-defined]
        except EOFError:
            return lines
        if line is None:
            return lines
        lines.append(json.loads(line))


def test_every_subscriber_gets_every_event() -> None:
    async def run() -> None:
        bus = EventBus()
        a, b = bus.subscribe(), bus.subscribe()
        bus.publish("approval.created", id="x")
        bus.publish("approval.resolved", id="x", state="denied")
        for sub in (a, b):
            got = await _drain(sub)
            assert [e["type"] for e in got] == ["approval.created", "approval.resolved"]
            assert got[1]["state"] == "denied" and "time" in got[1]

    asyncio.run(run())


def test_slow_subscriber_is_dropped_with_overflow_marker() -> None:
    async def run() -> None:
        bus = EventBus(buffer=3)
        slow, fast = bus.subscribe(), bus.subscribe()
        for i in range(3):
            bus.publish("audit.appended", seq=i)
            assert [e["seq"] for e in await _drain(fast)] == [i]
        bus.publish("audit.appended", seq=99)  # the slow one's buffer is full
        got = await _drain(slow)
        assert [e["type"] for e in got] == ["audit.appended"] * 3 + ["overflow"]
        assert slow.closed and bus.subscriber_count == 1
        bus.publish("audit.appended", seq=100)
        assert [e["seq"] for e in await _drain(fast)] == [99, 100]

    asyncio.run(run())


def test_close_all_ends_streams_after_buffered_events() -> None:
    async def run() -> None:
        bus = EventBus()
        sub = bus.subscribe()
        bus.publish("daemon.stopping")
        bus.close_all()
        assert await sub.get(1) is not None
        try:
            await sub.get(1)
        except EOFError:
            return
        raise AssertionError("stream did not end")

    asyncio.run(run())


def test_publish_from_another_thread() -> None:
    async def run() -> None:
        bus = EventBus()
        bus.bind(asyncio.get_running_loop())
        sub = bus.subscribe()
        worker = threading.Thread(target=bus.publish, args=("container.state",),
                                  kwargs={"state": "running"})
        worker.start()
        worker.join()
        line = await sub.get(2)
        assert line is not None and json.loads(line)["state"] == "running"

    asyncio.run(run())


def test_an_event_nobody_subscribed_to_does_not_wake_the_loop() -> None:
    """The audit writer publishes one event per entry from its thread: with no
    subscriber that must not cost the loop a wake-up per request."""
    async def run() -> None:
        loop = asyncio.get_running_loop()
        wakeups: list[object] = []
        handoff = loop.call_soon_threadsafe

        def counted(callback: object, *args: object) -> object:
            wakeups.append(callback)
            return handoff(callback, *args)  # type: ignore[arg-type]

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        bus = EventBus()
        bus.bind(loop)

        def publish_from_a_thread() -> None:
            worker = threading.Thread(target=bus.publish, args=("audit.appended",),
                                      kwargs={"seq": 1})
            worker.start()
            worker.join()

        publish_from_a_thread()
        assert wakeups == []
        sub = bus.subscribe()
        publish_from_a_thread()
        assert len(wakeups) == 1
        line = await sub.get(2)
        assert line is not None and json.loads(line)["seq"] == 1

    asyncio.run(run())


def test_events_arrive_in_the_order_they_were_published_from_any_thread() -> None:
    """The audit log commits on its writer thread or on the loop: an entry committed
    on the loop must not overtake an earlier one whose event another thread handed
    over and that waits in the loop's queue."""
    async def run() -> None:
        bus = EventBus()
        bus.bind(asyncio.get_running_loop())
        sub = bus.subscribe()
        worker = threading.Thread(target=bus.publish, args=("audit.appended",),
                                  kwargs={"seq": 1})
        worker.start()
        worker.join()  # handed to the loop, not yet delivered
        bus.publish("audit.appended", seq=2)  # on the loop's own thread
        seqs = []
        while len(seqs) < 2:
            line = await sub.get(2)
            assert line is not None
            seqs.append(json.loads(line)["seq"])
        assert seqs == [1, 2]

    asyncio.run(run())
