"""The ceremony panel inside the approval dialog: touch prompt, PIN, Cancel, timeout.

A real daemon and a software key (tests/softauthn.py) that waits for a touch
that never comes (``presence="manual"``), so Cancel and the timeout meet a
ceremony that is really in progress on the worker thread.
"""

from __future__ import annotations

from typing import Any

import pytest

from gui.approval_dialog import ApprovalDialog
from gui.ceremony import SENTENCES
from tests.gui.world import World

pytestmark = pytest.mark.system  # a real daemon with the real keychain


def dialog_for(qtbot: Any, world: World, approval_id: str, **kw: Any) -> ApprovalDialog:
    detail = world.daemon.client().request("GET", f"/v1/approvals/{approval_id}")
    dialog = ApprovalDialog(detail, world.daemon.client(), world.authenticator(),
                            arm_delay_ms=50, **kw)
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitUntil(dialog.approve_button.isEnabled, timeout=5000)
    return dialog


def test_cancel_ends_a_ceremony_waiting_for_a_touch_and_nothing_is_approved(
        qtbot: Any, world: World) -> None:
    approval_id = world.queue_plugin()
    world.key.presence = "manual"  # the key waits for a touch that does not come
    dialog = dialog_for(qtbot, world, approval_id)
    dialog.approve_button.click()
    qtbot.waitUntil(dialog.pin_row.isVisible, timeout=10_000)
    dialog.pin_edit.setText("4821")
    dialog.pin_ok.click()
    qtbot.waitUntil(lambda: "Touch your" in dialog.status.text(), timeout=10_000)
    assert dialog.cancel_button.isVisible()
    dialog.cancel_button.click()
    qtbot.waitUntil(lambda: dialog.status.text() == SENTENCES["cancelled"], timeout=10_000)
    assert not dialog.cancel_button.isVisible()
    assert world.state(approval_id) == "pending"
    assert world.decisions("approval.plugin.install.approve", approval_id) == []


def test_an_untouched_key_times_out_with_a_sentence_and_nothing_is_approved(
        qtbot: Any, world: World) -> None:
    approval_id = world.queue_plugin()
    world.key.presence = "manual"
    dialog = dialog_for(qtbot, world, approval_id, ceremony_timeout_s=1.0)
    dialog.approve_button.click()
    qtbot.waitUntil(dialog.pin_row.isVisible, timeout=10_000)
    dialog.pin_edit.setText("4821")
    dialog.pin_ok.click()
    qtbot.waitUntil(lambda: dialog.status.text() == SENTENCES["timeout"], timeout=15_000)
    assert world.state(approval_id) == "pending"


def test_a_wrong_pin_is_one_sentence_and_the_dialog_stays_for_another_try(
        qtbot: Any, world: World) -> None:
    approval_id = world.queue_plugin()
    dialog = dialog_for(qtbot, world, approval_id)
    dialog.approve_button.click()
    qtbot.waitUntil(dialog.pin_row.isVisible, timeout=10_000)
    dialog.pin_edit.setText("0000")
    dialog.pin_ok.click()
    qtbot.waitUntil(lambda: dialog.status.text() == SENTENCES["pin_invalid"], timeout=10_000)
    assert dialog.isVisible()
    assert world.state(approval_id) == "pending"
    # The next try needs the same deliberate wait, then works.
    qtbot.waitUntil(dialog.approve_button.isEnabled, timeout=5000)
