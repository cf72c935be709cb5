"""The tray's approve, deny and PIN path against a real daemon.

A real daemon on a private socket (tests/integration/harness.py), an owner
whose software key (tests/softauthn.py) has a client PIN and no built-in user
verification, and a plugin waiting for approval. The tray runs its ceremony
through its ``authenticate`` hook, which signs with that key and asks for the
PIN through the tray's own :class:`PinBridge` — so the PIN dialog is the
tray's, answered here like a person would.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fido2.client import UserInteraction
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QDialog, QInputDialog

from gui.tray import ApprovalDialog, Tray
from pacd.presence.client import authenticate, register
from tests.integration.harness import DaemonProcess, Silent, plugin, spec_with_plugins
from tests.softauthn import SoftAuthenticator

PIN = "4821"

pytestmark = pytest.mark.system  # a real daemon with the real keychain


class World:
    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.key = SoftAuthenticator(uv_builtin=False, pin=PIN)
        client = daemon.client()
        client.request("POST", "/v1/owner", {"name": "Alice"})
        begin = client.request("POST", "/v1/owner/credentials/begin", {"label": "pin key"})
        credential = register(begin["publicKey"], begin["origin"], Silent(PIN), device=self.key)
        client.request("POST", "/v1/owner/credentials/complete",
                       {"credential": credential, "registration_id": begin["registration_id"]})
        begin = client.request("POST", "/v1/sessions/begin", {"level": "biometric"})
        signed = authenticate(begin["publicKey"], begin["origin"], Silent(PIN), device=self.key)
        token = client.request("POST", "/v1/sessions/complete",
                               {"session_id": begin["session_id"], "credential": signed})["token"]
        authed = self.authed = daemon.client(token)
        self.container = authed.request("POST", "/v1/containers", spec_with_plugins())["id"]

    def queue_plugin(self, version: str) -> str:
        schema = plugin("text-formatter") | {"version": version}
        queued = self.authed.request(
            "POST", f"/v1/containers/{self.container}/plugins",
            {"agent": "writer", "schema": schema})
        return str(queued["approval_id"])

    def state(self, approval_id: str) -> str:
        return str(self.daemon.client().request("GET", f"/v1/approvals/{approval_id}")["state"])

    def decisions(self, action: str, approval_id: str) -> list[str]:
        return [e["decision"] for e in self.daemon.audit()
                if e["action"] == action and e["target"] == approval_id]


@pytest.fixture
def world(real_keychain: str) -> Iterator[World]:
    with tempfile.TemporaryDirectory(prefix="pacd-gui-") as base:
        daemon = DaemonProcess(Path(base)).start()
        try:
            yield World(daemon)
        finally:
            daemon.stop(timeout=30)


def pin_hook(tray: Tray, key: SoftAuthenticator) -> Callable[..., dict[str, Any]]:
    """The ceremony with the software key, its PIN asked through the tray's PinBridge."""

    class AskTheTray(UserInteraction):
        def request_pin(self, permissions: Any, rd_id: str | None) -> str | None:
            return tray.pins.request("Security key PIN:")

    def hook(options: dict[str, Any], origin: str) -> dict[str, Any]:
        return authenticate(options, origin, AskTheTray(), device=key)

    return hook


def answer_modal(kind: type[QDialog], act: Callable[[Any], None]) -> None:
    """When a modal dialog of ``kind`` is up, ``act`` on it (as the person at the screen)."""

    def poll() -> None:
        dialog = QApplication.activeModalWidget()
        if isinstance(dialog, kind) and dialog.isVisible():
            act(dialog)
        else:
            QTimer.singleShot(20, poll)

    QTimer.singleShot(20, poll)


def type_pin(text: str | None) -> None:
    """Answer the tray's PIN dialog with ``text`` (``None``: press Cancel)."""

    def act(dialog: QInputDialog) -> None:
        if text is None:
            dialog.reject()
        else:
            dialog.setTextValue(text)
            dialog.accept()

    answer_modal(QInputDialog, act)


def make_tray(world: World) -> Tray:
    # poll_interval_ms: no timer-driven polls during the test; refresh() is explicit.
    trays: list[Tray] = []
    tray = Tray(world.daemon.client(), poll_interval_ms=3_600_000,
                authenticate=lambda options, origin: pin_hook(trays[0], world.key)(options,
                                                                                   origin))
    trays.append(tray)
    return tray


def test_tray_approves_with_key_and_pin_and_the_daemon_records_it(qtbot: Any,
                                                                  world: World) -> None:
    approval_id = world.queue_plugin("1.0.0")
    tray = make_tray(world)
    try:
        with qtbot.waitSignal(tray.state_changed, timeout=10_000):
            tray.refresh()
        assert [a["id"] for a in tray.state.pending] == [approval_id]
        # The person opens the approval, presses "Approve with key", then types the PIN.
        def approve(dialog: ApprovalDialog) -> None:
            type_pin(PIN)
            dialog.approve_button.click()

        answer_modal(ApprovalDialog, approve)
        tray.review(approval_id)
        qtbot.waitUntil(lambda: world.state(approval_id) == "approved", timeout=20_000)
        assert world.decisions("approval.plugin.install.approve", approval_id) == ["allow"]
        # The tray took the news in: it refreshed and shows nothing waiting.
        qtbot.waitUntil(lambda: tray.state.reachable and not tray.state.pending,
                        timeout=10_000)
    finally:
        tray.close()


def test_tray_deny_button_denies_and_nothing_is_signed(qtbot: Any, world: World) -> None:
    approval_id = world.queue_plugin("1.0.0")
    signed_before = world.key.counter
    tray = make_tray(world)
    try:
        answer_modal(ApprovalDialog, lambda dialog: dialog.deny_button.click())
        tray.review(approval_id)
        assert world.state(approval_id) == "denied"
        assert world.decisions("approval.plugin.install.deny", approval_id) == ["deny"]
        assert world.key.counter == signed_before  # the key was never asked
    finally:
        tray.close()


@pytest.mark.parametrize("pin", ["0000", None], ids=["wrong-pin", "pin-dialog-cancelled"])
def test_tray_wrong_or_cancelled_pin_approves_nothing(qtbot: Any, world: World,
                                                      pin: str | None) -> None:
    approval_id = world.queue_plugin("1.0.0")
    retries, counter = world.key.pin_retries, world.key.counter
    tray = make_tray(world)
    try:
        type_pin(pin)
        detail = world.daemon.client().request("GET", f"/v1/approvals/{approval_id}")
        # The tray refreshes once the ceremony is over, whatever its outcome.
        with qtbot.waitSignal(tray.state_changed, timeout=20_000):
            tray.approve(approval_id, detail)
        assert world.state(approval_id) == "pending"
        assert world.decisions("approval.plugin.install.approve", approval_id) == []
        assert world.key.counter == counter  # nothing was signed
        # A wrong PIN reached the key (one retry used); a cancelled dialog sent none.
        assert world.key.pin_retries == (retries - 1 if pin else retries)
        assert tray.state.pending and tray.state.pending[0]["id"] == approval_id
    finally:
        tray.close()
