"""Containers from the tray against a real daemon and real Podman: start and stop from
the menu, with the presence ceremony when the daemon asks for it, and the notification
when an agent stops behind pacd's back."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from fido2.client import UserInteraction
from PySide6.QtGui import QAction

from gui.presence_dialog import PresenceDialog
from gui.tray import Tray
from pacd.presence.client import authenticate
from tests.fprintd_mock import FprintdMock, bus, fprintd
from tests.gui.world import CountingClient, wait_reachable
from tests.podman_env import (
    busybox_image,
    podman_cleanup,
    podman_runtime,
    podman_service,
    python_image,
    run_label,
)
from tests.system.agents_env import Deployment, agent_spec, make_deployment, make_spec, short_base

__all__ = ["bus", "busybox_image", "fprintd", "make_deployment", "podman_cleanup", "podman_runtime",
           "podman_service", "python_image", "run_label", "short_base"]

pytestmark = [pytest.mark.system, pytest.mark.podman]


def menu_action(tray: Tray, container: str, title: str) -> QAction:
    containers = next(a for a in tray.menu.actions() if a.text().startswith("Containers"))
    sub = next(a for a in containers.menu().actions() if a.text().startswith(container + " "))
    return next(a for a in sub.menu().actions() if a.text() == title)


def test_start_and_stop_from_the_menu_with_a_ceremony_and_an_unexpected_stop_notified(
        qtbot: Any, make_deployment: Callable[..., Deployment], busybox_image: str) -> None:
    d = make_deployment()
    cid = str(d.create(make_spec("box", [agent_spec("alpha", busybox_image)], []))["id"])
    touches: list[str] = []

    def key(options: Mapping[str, Any], origin: str, interaction: UserInteraction,
            cancel: threading.Event, timeout_s: float) -> dict[str, Any]:
        touches.append(origin)
        return authenticate(options, origin, interaction, device=d.owner.device,
                            cancel=cancel, timeout_s=timeout_s)

    tray = Tray(CountingClient(d.daemon.client()), key)  # no session of its own yet
    done: list[tuple[str, str, str]] = []
    tray.action_done.connect(lambda *args: done.append(args))
    try:
        wait_reachable(qtbot, tray)
        qtbot.waitUntil(lambda: bool(tray.state.containers), timeout=10_000)
        assert not menu_action(tray, "box", "Stop").isEnabled()
        menu_action(tray, "box", "Start").trigger()
        # Starting needs an enhanced session: the tray asks for the key.
        qtbot.waitUntil(lambda: isinstance(tray.presence_dialog, PresenceDialog),
                        timeout=10_000)
        assert tray.presence_dialog is not None
        assert "Start container box needs presence (enhanced)" in \
            tray.presence_dialog.what.text()
        qtbot.waitUntil(lambda: done == [(cid, "start", "")], timeout=60_000)
        assert len(touches) == 1
        assert d.agent_states(cid) == {"alpha": "running"}
        qtbot.waitUntil(lambda: menu_action(tray, "box", "Stop").isEnabled(), timeout=10_000)
        assert not [m for m in tray.messages if "unexpectedly" in m[0]]
        # Killed behind pacd's back: the owner hears of it.
        d.runtime.kill(d.podman_name(cid, "alpha"))
        qtbot.waitUntil(lambda: any("unexpectedly" in m[0] for m in tray.messages),
                        timeout=30_000)
        title, text = next(m for m in tray.messages if "unexpectedly" in m[0])
        assert title == "pacd: container stopped unexpectedly"
        assert text.startswith("agent alpha of container box is ")
        # Started again from the menu: the session the tray earned covers it, no key.
        qtbot.waitUntil(lambda: menu_action(tray, "box", "Start").isEnabled(),
                        timeout=10_000)
        menu_action(tray, "box", "Start").trigger()
        qtbot.waitUntil(lambda: len(done) == 2, timeout=60_000)
        assert done[1] == (cid, "start", "") and len(touches) == 1
        # Stopped from the menu: expected, so no notification.
        notes = len(tray.messages)
        qtbot.waitUntil(lambda: menu_action(tray, "box", "Stop").isEnabled(), timeout=10_000)
        menu_action(tray, "box", "Stop").trigger()
        qtbot.waitUntil(lambda: len(done) == 3, timeout=60_000)
        assert done[2] == (cid, "stop", "")
        qtbot.waitUntil(lambda: tray.state.containers[0]["state"] == "stopped",
                        timeout=10_000)
        assert not [m for m in tray.messages[notes:] if "unexpectedly" in m[0]]
    finally:
        tray.close()


def test_a_cancelled_ceremony_starts_nothing(
        qtbot: Any, make_deployment: Callable[..., Deployment], busybox_image: str) -> None:
    d = make_deployment()
    cid = str(d.create(make_spec("box", [agent_spec("alpha", busybox_image)], []))["id"])
    d.owner.device.presence = "manual"  # the key waits for a touch that does not come

    def key(options: Mapping[str, Any], origin: str, interaction: UserInteraction,
            cancel: threading.Event, timeout_s: float) -> dict[str, Any]:
        return authenticate(options, origin, interaction, device=d.owner.device,
                            cancel=cancel, timeout_s=timeout_s)

    tray = Tray(CountingClient(d.daemon.client()), key)
    done: list[tuple[str, str, str]] = []
    tray.action_done.connect(lambda *args: done.append(args))
    try:
        wait_reachable(qtbot, tray)
        qtbot.waitUntil(lambda: bool(tray.state.containers), timeout=10_000)
        menu_action(tray, "box", "Start").trigger()
        qtbot.waitUntil(lambda: tray.presence_dialog is not None
                        and "Touch your" in tray.presence_dialog.status.text(),
                        timeout=10_000)
        assert tray.presence_dialog is not None
        tray.presence_dialog.cancel_button.click()
        qtbot.waitUntil(lambda: done == [(cid, "start", "cancelled")], timeout=10_000)
        assert d.agent_states(cid) == {"alpha": "missing"}
    finally:
        tray.close()


def test_the_fingerprint_reader_is_offered_when_the_daemon_enables_it_and_starts_it(
        qtbot: Any, make_deployment: Callable[..., Deployment], busybox_image: str,
        fprintd: FprintdMock) -> None:
    # The daemon talks real D-Bus to the fprintd mock (only fprintd and the reader are
    # simulated); the owner enabled it for sessions, so status says so and the tray
    # offers it next to the key.
    d = make_deployment(settings={"platform_presence": ["fprintd"],
                                  "platform_presence_timeout_s": 5.0,
                                  "fprintd_bus_address": fprintd.bus_address})
    cid = str(d.create(make_spec("box", [agent_spec("alpha", busybox_image)], []))["id"])

    def key(*_: Any) -> dict[str, Any]:
        raise AssertionError("the key is not used when the finger is")

    tray = Tray(CountingClient(d.daemon.client()), key)
    done: list[tuple[str, str, str]] = []
    tray.action_done.connect(lambda *args: done.append(args))
    try:
        wait_reachable(qtbot, tray)
        qtbot.waitUntil(lambda: bool(tray.state.containers), timeout=10_000)
        assert tray.state.fingerprint
        menu_action(tray, "box", "Start").trigger()
        qtbot.waitUntil(lambda: tray.presence_dialog is not None
                        and tray.presence_dialog.isVisible(), timeout=10_000)
        dialog = tray.presence_dialog
        assert dialog is not None and dialog.fingerprint_button.isVisible()
        dialog.fingerprint_button.click()
        qtbot.waitUntil(lambda: done == [(cid, "start", "")], timeout=60_000)
        assert "VerifyStart:any" in fprintd.calls
        assert d.agent_states(cid) == {"alpha": "running"}
        sessions = [e for e in d.daemon.audit() if e["action"] == "session.create"
                    and e["decision"] == "allow"]
        assert sessions[-1]["details"]["method"] == "fprintd"
    finally:
        tray.close()


def test_the_fingerprint_reader_is_not_offered_unless_enabled(
        qtbot: Any, make_deployment: Callable[..., Deployment], fprintd: FprintdMock) -> None:
    d = make_deployment(settings={"fprintd_bus_address": fprintd.bus_address})
    tray = Tray(CountingClient(d.daemon.client()))
    try:
        wait_reachable(qtbot, tray)
        status = d.daemon.client().status()
        reader = next(p for p in status["presence_methods"] if p["name"] == "fprintd")
        assert reader["available"] is True and "not enabled for sessions" in reader["detail"]
        assert not tray.state.fingerprint
    finally:
        tray.close()
