"""The ceremony panel inside the approval dialog: touch prompt, PIN, Cancel, timeout.

A real daemon and a software key (tests/softauthn.py) that waits for a touch
that never comes (``presence="manual"``), so Cancel and the timeout meet a
ceremony that is really in progress on the worker thread.
"""

from __future__ import annotations

from typing import Any

import pytest

from gui.approval_dialog import ApprovalDialog
from gui.ceremony import SENTENCES, pin_prompt
from tests.gui.world import PIN, World
from tests.softauthn import PIN_RETRIES

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
    # The tries left are the key's own count (getPinRetries), not a constant.
    assert dialog.pin_prompt.text() == pin_prompt("security key", PIN_RETRIES)
    dialog.pin_edit.setText("0000")
    dialog.pin_ok.click()
    qtbot.waitUntil(lambda: dialog.status.text() == SENTENCES["pin_invalid"], timeout=10_000)
    assert dialog.isVisible()
    assert world.state(approval_id) == "pending"
    # The next try needs the same deliberate wait, then works.
    qtbot.waitUntil(dialog.approve_button.isEnabled, timeout=5000)
    dialog.approve_button.click()
    qtbot.waitUntil(dialog.pin_row.isVisible, timeout=10_000)
    assert "7 tries left" in dialog.pin_prompt.text()
    assert dialog.pin_prompt.text() == pin_prompt("security key", PIN_RETRIES - 1)
    dialog.pin_edit.setText(PIN)
    dialog.pin_ok.click()
    qtbot.waitUntil(lambda: world.state(approval_id) == "approved", timeout=20_000)
    qtbot.waitUntil(lambda: not dialog.isVisible(), timeout=10_000)


def test_a_key_one_wrong_pin_from_blocking_says_so(qtbot: Any, world: World) -> None:
    approval_id = world.queue_plugin()
    world.key.pin_retries = 1
    dialog = dialog_for(qtbot, world, approval_id)
    dialog.approve_button.click()
    qtbot.waitUntil(dialog.pin_row.isVisible, timeout=10_000)
    assert "1 try left: one more wrong PIN blocks the key" in dialog.pin_prompt.text()
    dialog.cancel_button.click()
    qtbot.waitUntil(lambda: dialog.status.text() == SENTENCES["cancelled"], timeout=10_000)


def test_a_blocked_pin_has_its_own_sentence_and_no_pin_is_asked(qtbot: Any,
                                                                world: World) -> None:
    approval_id = world.queue_plugin()
    world.key.pin_retries = 0  # blocked by earlier wrong PINs
    dialog = dialog_for(qtbot, world, approval_id)
    dialog.approve_button.click()
    qtbot.waitUntil(lambda: dialog.status.text() == SENTENCES["pin_blocked"], timeout=10_000)
    assert not dialog.pin_row.isVisible()
    assert "must be reset" in dialog.status.text()
    assert world.state(approval_id) == "pending"
    assert world.decisions("approval.plugin.install.approve", approval_id) == []



def test_a_dialog_deleted_while_its_ceremony_runs_does_not_take_the_tray_down(
        qtbot: Any, world: World) -> None:
    # The daemon went away mid-ceremony: the tray closes the dialog and drops it while
    # the worker is still inside the key's call (one that does not heed Cancel).
    import threading

    import shiboken6

    from gui import ceremony

    approval_id = world.queue_plugin()
    inside, release = threading.Event(), threading.Event()

    def stubborn(*_: Any) -> dict[str, Any]:
        inside.set()
        release.wait(30)
        raise TimeoutError("the key never answered")

    detail = world.daemon.client().request("GET", f"/v1/approvals/{approval_id}")
    dialog = ApprovalDialog(detail, world.daemon.client(), stubborn, arm_delay_ms=50)
    dialog.show()
    qtbot.waitUntil(dialog.approve_button.isEnabled, timeout=5000)
    dialog.approve_button.click()
    qtbot.waitUntil(inside.is_set, timeout=10_000)
    dialog.close_for("daemon lost")
    shiboken6.delete(dialog)  # what dropping the last reference does, now
    release.set()
    qtbot.waitUntil(lambda: not ceremony._RUNNING, timeout=10_000)
    assert world.state(approval_id) == "pending"


def test_on_windows_the_ceremony_is_the_webauthn_api_parented_to_the_dialog_window(
        qtbot: Any, world: World) -> None:
    # The OS boundary: Windows' WebAuthn API (python-fido2's WindowsClient) is stood in
    # for by python-fido2's CTAP client over the software key, with the PIN that
    # Windows' own prompt would ask for. Everything on pacd's side is real.
    from fido2.client import Fido2Client

    from gui.ceremony import device_authenticate, window_authenticator
    from tests.integration.harness import Silent

    made: list[int | None] = []

    class WindowsWebAuthn:
        def __init__(self, collector: Any, handle: int | None = None) -> None:
            made.append(handle)
            self.inner = Fido2Client(world.key, collector, user_interaction=Silent(PIN))

        def get_assertion(self, options: Any, event: Any = None) -> Any:
            return self.inner.get_assertion(options, event=event)

    approval_id = world.queue_plugin()
    detail = world.daemon.client().request("GET", f"/v1/approvals/{approval_id}")
    dialog = ApprovalDialog(detail, world.daemon.client(), None, arm_delay_ms=50)
    qtbot.addWidget(dialog)
    assert dialog.ceremony_authenticator() is device_authenticate  # not Windows here
    window = int(dialog.winId())
    dialog.authenticator = window_authenticator(window, platform="win32",
                                                windows_client=WindowsWebAuthn)
    dialog.show()
    qtbot.waitUntil(dialog.approve_button.isEnabled, timeout=5000)
    dialog.approve_button.click()
    qtbot.waitUntil(lambda: world.state(approval_id) == "approved", timeout=20_000)
    qtbot.waitUntil(lambda: not dialog.isVisible(), timeout=10_000)
    assert made == [window] and window != 0
    assert not dialog.pin_row.isVisible()  # Windows asks for the PIN itself


def test_a_pin_blocked_for_good_and_one_blocked_until_replugged_have_their_own_sentences(
        ) -> None:
    from gui.ceremony import failure_sentence
    from pacd.errors import PinBlocked

    forever = failure_sentence(PinBlocked("the security key's PIN is blocked after too many "
                                          "wrong tries; it must be reset"))
    for_now = failure_sentence(PinBlocked("too many wrong PINs in a row: unplug and replug "
                                          "the security key, then try again"))
    assert forever == SENTENCES["pin_blocked"] and "reset" in forever
    assert for_now == SENTENCES["pin_auth_blocked"] and "plug it back in" in for_now
