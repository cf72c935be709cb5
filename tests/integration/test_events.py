"""The event stream under load: many subscribers, one that never reads."""

from __future__ import annotations

import socket
import threading
import time

from pacd.errors import PacdError
from tests.integration.harness import DaemonProcess, EventCollector


def test_slow_subscriber_cannot_stall_the_daemon(daemon: DaemonProcess) -> None:
    readers = [EventCollector(daemon.client()) for _ in range(3)]
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(str(daemon.socket))
    stuck.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read

    # Every refused request is an audit entry, hence an audit.appended event.
    errors: list[BaseException] = []

    def burst() -> None:
        client = daemon.client()
        for _ in range(400):
            try:
                client.request("POST", "/v1/containers", {"name": "x"})
            except PacdError as exc:
                if exc.code != "unauthorized":
                    errors.append(exc)

    workers = [threading.Thread(target=burst) for _ in range(4)]
    started = time.monotonic()
    for w in workers:
        w.start()
    slowest = 0.0
    while any(w.is_alive() for w in workers):
        t0 = time.monotonic()
        daemon.client().status()
        slowest = max(slowest, time.monotonic() - t0)
        time.sleep(0.05)
    assert not errors
    assert slowest < 2.0, f"status took {slowest:.2f} s during the burst"
    assert time.monotonic() - started < 120

    # The reading subscribers saw every event; the stuck one was cut off.
    for reader in readers:
        reader.wait_for("audit.appended", timeout=20)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum(
                e["type"] == "audit.appended" for e in reader.events) < 1600:
            time.sleep(0.1)
        assert sum(e["type"] == "audit.appended" for e in reader.events) >= 1600
        assert not any(e["type"] == "overflow" for e in reader.events)
    stuck.settimeout(30)
    received = b""
    while True:
        chunk = stuck.recv(65536)
        if not chunk:
            break
        received += chunk
    stuck.close()
    assert b"audit.appended" in received
    assert received.count(b'"audit.appended"') < 1600, "the stuck subscriber was never dropped"
    assert daemon.alive()
