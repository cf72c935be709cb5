"""The approval dialog against a real daemon: what it shows, and how hard it is to misclick.

Approvals are queued through the API (a plugin submission); the tray learns of
them from the event stream and opens a dialog. The software key
(tests/softauthn.py) has a PIN, typed into the dialog's own PIN field.
"""

from __future__ import annotations

import base64
import copy
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QWidget

from gui.approval_dialog import ApprovalDialog
from gui.ceremony import MISMATCH
from gui.tray import Tray
from pacd.core.canonical import digest
from tests.gui.world import PIN, HeldClient, World, wait_reachable
from tests.integration.harness import DaemonProcess
from tests.podman_env import podman_service

__all__ = ["podman_service"]

pytestmark = pytest.mark.system  # a real daemon with the real keychain

#: the dialog must be up this soon after the API accepted the request (bench: p95 ≤ 100 ms)
SHOWN_WITHIN_S = 1.0


def open_dialog(qtbot: Any, tray: Tray, approval_id: str) -> ApprovalDialog:
    qtbot.waitUntil(lambda: isinstance(tray.dialog, ApprovalDialog)
                    and tray.dialog.approval_id == approval_id
                    and tray.dialog.isVisible(), timeout=10_000)
    dialog = tray.dialog
    assert isinstance(dialog, ApprovalDialog)
    return dialog


def armed(qtbot: Any, dialog: ApprovalDialog) -> None:
    qtbot.waitUntil(dialog.approve_button.isEnabled, timeout=5000)


@pytest.fixture
def tray(qtbot: Any, world: World) -> Any:
    made, _ = world.tray()
    wait_reachable(qtbot, made)
    yield made
    made.close()


def test_an_approval_asked_through_the_api_appears_as_a_dialog_at_once(
        qtbot: Any, world: World, tray: Tray) -> None:
    with qtbot.waitSignal(tray.dialog_shown, timeout=10_000) as shown:
        asked = time.monotonic()
        approval_id = world.queue_plugin()
    qtbot.waitUntil(lambda: tray.dialog is not None and tray.dialog.isVisible(), timeout=5000)
    assert time.monotonic() - asked < SHOWN_WITHIN_S
    assert shown.args == [approval_id]
    assert ("pacd: approval requested", "install plugin Text Formatter 1.0.0 for agent writer "
            "in container studio") in tray.messages  # the notification
    dialog = open_dialog(qtbot, tray, approval_id)
    # Rendered from the payload, field by field.
    rows = [label.text() for label in dialog.value_labels]
    assert "Text Formatter" in rows and "1.0.0" in rows and "writer" in rows
    assert any(r.startswith("POST /format (60/min, burst 10") for r in rows)
    assert "readOnly" in rows
    assert dialog.title.text() == "Install a plugin?"
    # Who asked: the uid, and the submitting process (this test) as the kernel named it,
    # from the signed payload; the API lists the same.
    me = f"process {os.getpid()} ({os.readlink('/proc/self/exe')})"
    assert dialog.requester.text() == f"asked by: owner:uid={os.getuid()}, {me}"
    listed = world.daemon.client().request("GET", "/v1/approvals")["approvals"]
    mine = next(a for a in listed if a["id"] == approval_id)
    assert (mine["requester_pid"], mine["requester_exe"]) == (
        os.getpid(), os.readlink("/proc/self/exe"))
    assert "needs: biometric; expires in " in dialog.needs.text()
    # The raw JSON is one click away.
    assert not dialog.raw.isVisible()
    dialog.raw_toggle.click()
    assert dialog.raw.isVisible() and '"Text Formatter"' in dialog.raw.toPlainText()


def test_approve_is_dead_before_a_second_of_focus_and_enter_never_approves(
        qtbot: Any, world: World, tray: Tray) -> None:
    approval_id = world.queue_plugin()
    dialog = open_dialog(qtbot, tray, approval_id)
    qtbot.waitUntil(dialog.isActiveWindow, timeout=5000)
    shown = time.monotonic()
    assert dialog.focusWidget() is dialog.deny_button
    assert dialog.windowFlags() & Qt.WindowType.WindowStaysOnTopHint
    qtbot.mouseClick(dialog.approve_button, Qt.MouseButton.LeftButton)
    qtbot.keyClick(dialog, Qt.Key.Key_Return)
    assert not dialog.approve_button.isEnabled()
    qtbot.waitUntil(lambda: time.monotonic() - shown >= 0.8, timeout=5000)
    assert not dialog.approve_button.isEnabled()  # still dead 0.8 s after focus
    armed(qtbot, dialog)
    # Armed, and still Enter (on the dialog, on the focused Deny) neither approves nor denies.
    qtbot.keyClick(dialog, Qt.Key.Key_Return)
    qtbot.keyClick(dialog.deny_button, Qt.Key.Key_Enter)
    assert dialog._worker is None and dialog.isVisible()
    assert world.state(approval_id) == "pending"
    # Focus leaving starts the wait over.
    other = QWidget()
    qtbot.addWidget(other)
    other.show()
    other.activateWindow()
    qtbot.waitUntil(lambda: not dialog.isActiveWindow(), timeout=5000)
    assert not dialog.approve_button.isEnabled()
    dialog.activateWindow()
    qtbot.waitUntil(dialog.isActiveWindow, timeout=5000)
    assert not dialog.approve_button.isEnabled()
    armed(qtbot, dialog)


def test_approving_with_the_key_and_its_pin_completes_the_approval(
        qtbot: Any, world: World, tray: Tray) -> None:
    approval_id = world.queue_plugin()
    dialog = open_dialog(qtbot, tray, approval_id)
    armed(qtbot, dialog)
    dialog.approve_button.click()
    qtbot.waitUntil(dialog.pin_row.isVisible, timeout=10_000)
    assert "PIN" in dialog.pin_prompt.text()
    dialog.pin_edit.setText(PIN)
    dialog.pin_ok.click()
    qtbot.waitUntil(lambda: world.state(approval_id) == "approved", timeout=20_000)
    assert world.decisions("approval.plugin.install.approve", approval_id) == ["allow"]
    qtbot.waitUntil(lambda: not dialog.isVisible(), timeout=10_000)
    qtbot.waitUntil(lambda: tray.state.reachable and not tray.state.pending, timeout=10_000)


def test_not_now_leaves_it_pending_and_deny_ends_it(qtbot: Any, world: World,
                                                    tray: Tray) -> None:
    first = world.queue_plugin("1.0.0")
    second = world.queue_plugin("1.0.1")
    dialog = open_dialog(qtbot, tray, first)
    assert tray.queue == [second]  # the next waits its turn
    qtbot.keyClick(dialog, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: not dialog.isVisible(), timeout=5000)
    assert world.state(first) == "pending"
    assert world.decisions("approval.plugin.install.deny", first) == []
    after = open_dialog(qtbot, tray, second)
    after.deny_button.click()
    qtbot.waitUntil(lambda: world.state(second) == "denied", timeout=10_000)
    assert world.decisions("approval.plugin.install.deny", second) == ["deny"]
    assert world.state(first) == "pending"
    # "Not now" keeps it in the menu, from where it opens again.
    qtbot.waitUntil(lambda: [a["id"] for a in tray.state.pending] == [first], timeout=10_000)
    tray.review(first)
    open_dialog(qtbot, tray, first)


def test_a_payload_that_is_not_what_the_key_would_sign_cannot_be_approved(
        qtbot: Any, world: World) -> None:
    approval_id = world.queue_plugin()
    detail = world.daemon.client().request("GET", f"/v1/approvals/{approval_id}")
    detail["payload"]["body"]["schema"]["required_capabilities"] = []  # looks harmless
    dialog = ApprovalDialog(detail, world.daemon.client(), world.authenticator(),
                            arm_delay_ms=50)
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitUntil(dialog.isActiveWindow, timeout=5000)
    qtbot.wait(300)  # waits-on: external clock — far past the 50 ms arming delay
    assert not dialog.signable
    assert not dialog.approve_button.isEnabled()
    assert dialog.status.text() == MISMATCH
    assert dialog.value_labels == []  # nothing is rendered as if it were the request
    dialog.start_ceremony()
    assert dialog._worker is None
    assert world.state(approval_id) == "pending"


HOSTILE = "</b><font color=white>Formatter\u202egnp.exe"


def reseal(detail: dict[str, Any]) -> dict[str, Any]:
    """The detail with its challenge recomputed for its (edited) payload."""
    challenge = base64.urlsafe_b64encode(digest(detail["payload"])).rstrip(b"=").decode()
    detail["challenge"] = challenge
    detail["publicKey"]["challenge"] = challenge
    return detail


def test_markup_and_bidi_overrides_in_a_plugin_name_are_shown_literally(
        qtbot: Any, world: World) -> None:
    approval_id = world.queue_plugin()
    detail = copy.deepcopy(world.daemon.client().request("GET", f"/v1/approvals/{approval_id}"))
    detail["payload"]["body"]["schema"]["name"] = HOSTILE
    dialog = ApprovalDialog(reseal(detail), world.daemon.client(), world.authenticator())
    qtbot.addWidget(dialog)
    assert dialog.signable
    shown = dialog.value_labels[0]
    assert shown.textFormat() == Qt.TextFormat.PlainText
    assert shown.text() == "</b><font color=white>Formatter\\u202egnp.exe"
    long_name = "x" * 500
    detail["payload"]["body"]["schema"]["name"] = long_name
    long_dialog = ApprovalDialog(reseal(detail), world.daemon.client(), world.authenticator())
    qtbot.addWidget(long_dialog)
    cut = long_dialog.value_labels[0]
    assert len(cut.text()) < 200 and cut.text().endswith("…")
    assert long_name in cut.toolTip()


def test_expiry_and_daemon_loss_close_the_dialog(qtbot: Any, world: World,
                                                 tray: Tray) -> None:
    approval_id = world.queue_plugin()
    dialog = open_dialog(qtbot, tray, approval_id)
    world.daemon.stop()
    qtbot.waitUntil(lambda: not dialog.isVisible(), timeout=10_000)
    assert tray.dialog is None
    assert not tray.state.reachable
    # Closed by the loss, not decided by the owner: offered again once the daemon is back.
    world.daemon.start()
    tray.follower.retry_now()
    again = open_dialog(qtbot, tray, approval_id)
    assert again is not dialog


@pytest.fixture
def podman_world(daemon_base: Path, podman_service: str) -> Iterator[World]:
    """A daemon that reaches Podman, so its containers can be deleted."""
    daemon = DaemonProcess(daemon_base, env={"PACD_PODMAN_URL": podman_service}).start()
    try:
        yield World(daemon)
    finally:
        if daemon.alive():
            daemon.stop(timeout=30)


def test_deleting_its_container_ends_the_dialog_and_the_tray_offers_nothing_to_sign(
        qtbot: Any, podman_world: World) -> None:
    world = podman_world
    tray, _ = world.tray()
    try:
        wait_reachable(qtbot, tray)
        approval_id = world.queue_plugin()
        dialog = open_dialog(qtbot, tray, approval_id)
        qtbot.waitUntil(lambda: [a["id"] for a in tray.state.pending] == [approval_id],
                        timeout=10_000)
        world.authed.request("DELETE", f"/v1/containers/{world.container}")
        qtbot.waitUntil(lambda: not dialog.isVisible(), timeout=10_000)
        qtbot.waitUntil(lambda: tray.state.reachable and not tray.state.pending,
                        timeout=10_000)
        assert tray.dialog is None
        assert approval_id not in tray.queue
        assert world.state(approval_id) == "expired"
    finally:
        tray.close()


def test_answers_read_before_the_daemon_went_away_do_not_reopen_a_dialog_or_revive_it(
        qtbot: Any, world: World) -> None:
    # Under load the detail fetch and the refresh an approval.created starts can be
    # answered by the daemon and still be on their way when it goes: they describe a
    # daemon that is gone, and must neither open a dialog nor mark it reachable.
    from PySide6.QtWidgets import QApplication

    held = HeldClient(world.daemon.client(), ())
    tray, _ = world.tray(client=held)
    try:
        wait_reachable(qtbot, tray)
        qtbot.waitUntil(lambda: not tray._refreshing, timeout=10_000)
        held.holding = ("GET /v1/approvals/", "GET /v1/containers")
        world.queue_plugin()
        qtbot.waitUntil(lambda: held.held == 2, timeout=10_000)  # both answered, held back
        world.daemon.stop()
        qtbot.waitUntil(lambda: not tray.state.reachable, timeout=10_000)
        held.release()
        tray._pool.shutdown(wait=True)  # their results are now posted to the GUI thread
        QApplication.processEvents()
        assert tray.dialog is None
        assert not tray.state.reachable
        assert tray.state.icon_name == "pacd-offline"
    finally:
        held.release()
        tray.close()


def test_closing_the_tray_destroys_its_dialogs_on_the_gui_thread(
        qtbot: Any, world: World) -> None:
    # A worker still running a request may hold the last reference to a closed tray;
    # its widgets must already be gone then, destroyed here (see gui.collector).
    import shiboken6

    made, _ = world.tray()
    wait_reachable(qtbot, made)
    dialog = open_dialog(qtbot, made, world.queue_plugin())
    made.show_audit()
    view = made.audit_view
    assert view is not None
    made.close()
    assert not shiboken6.isValid(dialog)
    assert not shiboken6.isValid(view)
    assert not shiboken6.isValid(made.menu)
    assert made.dialog is None and made.audit_view is None


def test_a_result_arriving_after_close_is_dropped(qtbot: Any, world: World) -> None:
    # The worker's answer is posted to the GUI thread after close(): applying it would
    # touch the widgets close() destroyed.
    from PySide6.QtWidgets import QApplication

    held = HeldClient(world.daemon.client(), ())
    made, _ = world.tray(client=held)
    try:
        wait_reachable(qtbot, made)
        qtbot.waitUntil(lambda: not made._refreshing, timeout=10_000)
        held.holding = ("GET /v1/containers",)
        made.refresh()
        qtbot.waitUntil(lambda: held.held == 1, timeout=10_000)  # answered, held back
        made.close()
    finally:
        held.release()
    made._pool.shutdown(wait=True)  # its result is now posted to the GUI thread
    QApplication.processEvents()
    assert made._refreshing  # the result was dropped: _refreshed never ran
