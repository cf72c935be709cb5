"""The tray's notifications against a real daemon: an approval that expired, and an
audit log that cannot vouch for itself. (A new approval: test_tray_approval_dialog; a
container stopped behind pacd's back: test_tray_containers.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gui.approval_dialog import ApprovalDialog
from gui.tray import Tray
from pacd.audit import checkpoint_name
from pacd.config import load_config
from pacd.vault import KeyringSecretStore
from pacd.vault.keychain import namespace_for_home
from tests.gui.world import World, wait_reachable
from tests.integration.harness import DaemonProcess

pytestmark = pytest.mark.system  # a real daemon with the real keychain


@pytest.fixture
def short_ttl_world(daemon_base: Path) -> Iterator[World]:
    daemon = DaemonProcess(daemon_base, {"approval_ttl_s": 3}).start()
    try:
        yield World(daemon)
    finally:
        if daemon.alive():
            daemon.stop(timeout=30)


def test_an_approval_that_expires_is_notified_and_its_dialog_closes(
        qtbot: Any, short_ttl_world: World) -> None:
    tray, _ = short_ttl_world.tray()
    try:
        wait_reachable(qtbot, tray)
        approval_id = short_ttl_world.queue_plugin()
        qtbot.waitUntil(lambda: isinstance(tray.dialog, ApprovalDialog)
                        and tray.dialog.approval_id == approval_id, timeout=10_000)
        dialog = tray.dialog
        assert isinstance(dialog, ApprovalDialog)
        qtbot.waitUntil(lambda: ("pacd: approval expired", f"approval {approval_id} expired")
                        in tray.messages, timeout=15_000)
        assert short_ttl_world.state(approval_id) == "expired"
        qtbot.waitUntil(lambda: not dialog.isVisible(), timeout=5000)
        qtbot.waitUntil(lambda: not tray.state.pending, timeout=10_000)
    finally:
        tray.close()


def test_an_audit_log_that_cannot_vouch_for_itself_is_notified(qtbot: Any,
                                                               world: World) -> None:
    # Its checkpoint (in the keychain) deleted while the daemon was down: the log can no
    # longer prove it was not cut short, and the daemon says so to every subscriber.
    world.daemon.stop()
    config = load_config(world.daemon.env)
    KeyringSecretStore(namespace_for_home(config.home)).delete(
        checkpoint_name(config.audit_db))
    world.daemon.start()
    tray: Tray
    tray, _ = world.tray()
    try:
        qtbot.waitUntil(lambda: any(m[0] == "pacd: audit problem" for m in tray.messages),
                        timeout=15_000)
        text = next(m[1] for m in tray.messages if m[0] == "pacd: audit problem")
        assert "no checkpoint" in text
        qtbot.waitUntil(lambda: tray.state.icon_name == "pacd-attention", timeout=10_000)
    finally:
        tray.close()
