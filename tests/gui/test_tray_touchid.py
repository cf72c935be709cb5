"""Touch ID in the tray's presence dialog.

A real daemon with ``platform_presence = ["touchid"]`` on this (non-Mac)
machine: status says Touch ID is enabled but unavailable, so the tray does not
offer it; a dialog told to offer it shows "Use Touch ID", and clicking it asks
the daemon's platform-session route for a Touch ID session, which the daemon
refuses here (no Mac) — no token, one sentence, one audited refusal.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gui.ceremony import TOUCHID_SENTENCES
from gui.presence_dialog import PresenceDialog
from gui.tray import fetch_state
from tests.gui.world import World
from tests.integration.harness import DaemonProcess

pytestmark = pytest.mark.system  # a real daemon with the real keychain


@pytest.fixture
def touchid_world(daemon_base: Path) -> Iterator[World]:
    daemon = DaemonProcess(daemon_base, settings={"platform_presence": ["touchid"]}).start()
    try:
        yield World(daemon)
    finally:
        if daemon.alive():
            daemon.stop(timeout=30)


def _no_key(*_: Any) -> dict[str, Any]:
    raise AssertionError("the security key is not used when Touch ID is chosen")


def _dialog(qtbot: Any, world: World, touchid: bool) -> PresenceDialog:
    dialog = PresenceDialog(world.daemon.client(), "biometric", "Starting box", _no_key,
                            touchid=touchid)
    qtbot.addWidget(dialog)
    dialog.start()
    return dialog


def test_touchid_enabled_but_unavailable_here_is_not_offered(touchid_world: World) -> None:
    state = fetch_state(touchid_world.daemon.client())
    assert state.reachable and state.owner == "Alice"
    assert state.touchid is False and state.fingerprint is False


def test_the_dialog_offers_touch_id_only_when_told(qtbot: Any, touchid_world: World) -> None:
    without = _dialog(qtbot, touchid_world, touchid=False)
    assert not without.touchid_button.isVisible()
    without.cancel()
    offered = _dialog(qtbot, touchid_world, touchid=True)
    assert offered.touchid_button.isVisible() and offered.key_button.isVisible()
    assert not offered.fingerprint_button.isVisible()
    offered.cancel()


def test_clicking_touch_id_asks_the_daemon_for_a_touchid_session(
        qtbot: Any, touchid_world: World) -> None:
    dialog = _dialog(qtbot, touchid_world, touchid=True)
    with qtbot.waitSignal(dialog.proved, timeout=30_000) as proved:
        dialog.touchid_button.click()
    assert proved.args == [None]  # refused here: no token
    assert dialog.status.text() == TOUCHID_SENTENCES["presence_unavailable"]
    # The world's own key session has no method; the platform route's entries do.
    platform = [e for e in touchid_world.daemon.audit()
                if e["action"] == "session.create" and "method" in e["details"]]
    assert [(e["decision"], e["details"]["method"]) for e in platform] == [("deny", "touchid")]
