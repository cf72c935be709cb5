"""The pacd tray: daemon status, pending approvals, approve with your key.

The tray is only a client: it reads ``/v1/status`` and ``/v1/approvals`` over
the owner socket and runs the presence ceremony locally, like the CLI. When the
daemon is down it shows a grey icon and keeps retrying; nothing is ever
approved by default — closing a dialog, a timeout or an error is a "no".

Every string the daemon supplies (summaries, plugin and owner names, error
messages) is shown as plain text: Qt would otherwise guess that a string with
tags is rich text, and a plugin named ``</b><font color=white>…`` could hide
or restyle part of the very prompt the owner approves from.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QFont, QIcon
from PySide6.QtGui import Qt as QtGuiNamespace
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QSystemTrayIcon,
    QVBoxLayout,
    QWidget,
)

from pacd.client import Client, approval_challenge_matches
from pacd.errors import PacdError

ICONS = Path(__file__).resolve().parent / "icons"
POLL_INTERVAL_MS = 2000
#: why an approval is not offered for signing
MISMATCH = ("the challenge the daemon asks you to sign is not the digest of the payload it "
            "shows; not signed")


@dataclass
class TrayState:
    """What the tray shows; rebuilt from each poll."""

    reachable: bool = False
    error: str = ""
    owner: str | None = None
    version: str = ""
    approvals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pending(self) -> list[dict[str, Any]]:
        return [a for a in self.approvals if a.get("state") == "pending"]

    @property
    def icon_name(self) -> str:
        if not self.reachable:
            return "pacd-offline"
        return "pacd-attention" if self.pending else "pacd"

    @property
    def headline(self) -> str:
        if not self.reachable:
            return "pacd: daemon not reachable (retrying)"
        who = self.owner or "no owner yet (run: pacd init)"
        count = len(self.pending)
        waiting = f", {count} approval{'s' if count != 1 else ''} waiting" if count else ""
        return f"pacd {self.version}: {who}{waiting}"


def poll(client: Client) -> TrayState:
    """One round trip to the daemon; never raises."""
    try:
        status = client.status()
        approvals = client.request("GET", "/v1/approvals").get("approvals", [])
    except PacdError as exc:
        return TrayState(reachable=False, error=exc.message)
    owner = status.get("owner")
    return TrayState(
        reachable=True,
        owner=owner.get("name") if isinstance(owner, dict) else None,
        version=str(status.get("version", "")),
        approvals=list(approvals),
    )


class PinBridge(QObject):
    """Lets the ceremony thread ask the GUI thread for a PIN and wait for it."""

    asked = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__()
        self._parent = parent
        self._answer: str | None = None
        self._done = threading.Event()
        self.asked.connect(self._ask)

    @Slot(str)
    def _ask(self, prompt: str) -> None:
        text, ok = QInputDialog.getText(
            self._parent, "pacd", prompt, QLineEdit.EchoMode.Password
        )
        self._answer = text if ok and text else None
        self._done.set()

    def request(self, prompt: str) -> str | None:
        self._done.clear()
        self.asked.emit(prompt)
        self._done.wait()
        return self._answer


def plain_label(text: str) -> QLabel:
    """A label that shows ``text`` literally, whatever tags it contains."""
    label = QLabel()
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setText(text)
    return label


def plain_message_box(text: str, parent: QWidget | None = None) -> QMessageBox:
    """A warning box that shows ``text`` literally (QMessageBox.warning would guess)."""
    box = QMessageBox(QMessageBox.Icon.Warning, "pacd", "", QMessageBox.StandardButton.Ok,
                      parent)
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setText(text)
    return box


def _warn(text: str) -> None:
    plain_message_box(text).exec()


def plain_tooltip(text: str) -> str:
    """Tool tips guess rich text too: hand them the plain text already escaped."""
    return str(QtGuiNamespace.convertFromPlainText(text))


def menu_text(text: str) -> str:
    """A menu entry shows ``&`` as a shortcut marker unless it is doubled."""
    return text.replace("&", "&&")


class ApprovalDialog(QDialog):
    """Shows exactly what will be signed, then approves with a key touch or denies."""

    def __init__(self, detail: dict[str, Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("pacd: approval requested")
        layout = QVBoxLayout(self)
        # Plain text, bold by font rather than by markup: see the module docstring.
        self.summary = plain_label(str(detail.get("summary", detail.get("kind", "approval"))))
        font = QFont(self.summary.font())
        font.setBold(True)
        self.summary.setFont(font)
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        self.needs = plain_label(f"needs: {detail.get('required_level', '?')}, "
                                 f"expires {detail.get('expires_at', '?')}")
        self.needs.setWordWrap(True)
        layout.addWidget(self.needs)
        payload = QPlainTextEdit()
        payload.setReadOnly(True)
        payload.setPlainText(json.dumps(detail.get("payload", {}), indent=2, sort_keys=True))
        layout.addWidget(payload)
        self.status = plain_label("Approving asks you to touch your security key.")
        layout.addWidget(self.status)
        self.buttons = QDialogButtonBox()
        self.approve_button = self.buttons.addButton(
            "Approve with key", QDialogButtonBox.ButtonRole.AcceptRole
        )
        self.deny_button = self.buttons.addButton("Deny", QDialogButtonBox.ButtonRole.RejectRole)
        layout.addWidget(self.buttons)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)


class Tray(QObject):
    """Owns the tray icon, the menu and the polling loop."""

    state_changed = Signal(object)
    _polled = Signal(object)
    _ceremony_done = Signal(str, str)

    def __init__(
        self,
        client: Client,
        poll_interval_ms: int = POLL_INTERVAL_MS,
        authenticate: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self.state = TrayState()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pacd-tray")
        self._inflight: Future[TrayState] | None = None
        self._authenticate = authenticate
        self.icon = QSystemTrayIcon(self._icon("pacd-offline"))
        self.menu = QMenu()
        self.icon.setContextMenu(self.menu)
        self.pins = PinBridge()
        self._polled.connect(self._apply)
        self._ceremony_done.connect(self._after_ceremony)
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.refresh)
        self.timer.start(poll_interval_ms)
        self._rebuild_menu()

    @staticmethod
    def _icon(name: str) -> QIcon:
        return QIcon(str(ICONS / f"{name}.svg"))

    # --- polling ------------------------------------------------------------

    @Slot()
    def refresh(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            return  # the previous poll is still waiting on the daemon
        self._inflight = self._pool.submit(poll, self.client)
        self._inflight.add_done_callback(lambda f: self._polled.emit(f.result()))

    @Slot(object)
    def _apply(self, state: TrayState) -> None:
        self.state = state
        self.icon.setIcon(self._icon(state.icon_name))
        self.icon.setToolTip(plain_tooltip(state.headline))
        self._rebuild_menu()
        self.state_changed.emit(state)

    def _rebuild_menu(self) -> None:
        self.menu.clear()
        head = QAction(menu_text(self.state.headline), self.menu)
        head.setEnabled(False)
        self.menu.addAction(head)
        self.menu.addSeparator()
        pending = self.state.pending
        approvals = self.menu.addMenu(f"Approvals ({len(pending)})")
        approvals.setEnabled(self.state.reachable and bool(pending))
        for item in pending:
            action = QAction(menu_text(str(item.get("summary", item.get("id")))), approvals)
            approval_id = str(item.get("id"))
            action.triggered.connect(lambda _=False, a=approval_id: self.review(a))
            approvals.addAction(action)
        self.menu.addSeparator()
        quit_action = QAction("Quit tray", self.menu)
        quit_action.triggered.connect(QApplication.quit)
        self.menu.addAction(quit_action)

    # --- approvals ----------------------------------------------------------

    def review(self, approval_id: str) -> None:
        try:
            detail = self.client.request("GET", f"/v1/approvals/{approval_id}")
        except PacdError as exc:
            _warn(exc.message)
            return
        if not approval_challenge_matches(detail):
            # What the key would sign is not what the dialog would show: no dialog.
            _warn(MISMATCH)
            return
        dialog = ApprovalDialog(detail)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self.approve(approval_id, detail)
        else:
            self.deny(approval_id)

    def deny(self, approval_id: str) -> None:
        try:
            self.client.request("POST", f"/v1/approvals/{approval_id}/deny", {})
        except PacdError as exc:
            _warn(exc.message)
        self.refresh()

    def approve(self, approval_id: str, detail: dict[str, Any]) -> None:
        """Run the key ceremony off the GUI thread, then post the assertion."""
        self.icon.showMessage("pacd", "Touch your security key to approve.")

        def ceremony() -> None:
            if not approval_challenge_matches(detail):
                self._ceremony_done.emit(approval_id, MISMATCH)
                return
            try:
                credential = self._run_ceremony(detail)
                self.client.request(
                    "POST", f"/v1/approvals/{approval_id}/approve", {"credential": credential}
                )
            except PacdError as exc:
                self._ceremony_done.emit(approval_id, exc.message)
                return
            self._ceremony_done.emit(approval_id, "")

        self._pool.submit(ceremony)

    def _run_ceremony(self, detail: dict[str, Any]) -> dict[str, Any]:
        if self._authenticate is not None:
            return self._authenticate(detail["publicKey"], detail["origin"])
        from fido2.client import UserInteraction

        from pacd.presence.client import authenticate

        pins = self.pins

        class Interaction(UserInteraction):
            def prompt_up(self) -> None:
                pass

            def request_pin(self, permissions: Any, rd_id: str | None) -> str | None:
                return pins.request("Security key PIN:")

            def request_uv(self, permissions: Any, rd_id: str | None) -> bool:
                return True

        return authenticate(detail["publicKey"], detail["origin"], Interaction())

    @Slot(str, str)
    def _after_ceremony(self, approval_id: str, error: str) -> None:
        if error:
            self.icon.showMessage(
                "pacd", f"Not approved: {error}", QSystemTrayIcon.MessageIcon.Warning
            )
        else:
            self.icon.showMessage("pacd", f"Approved {approval_id}.")
        self.refresh()

    def close(self) -> None:
        self.timer.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.icon.hide()


def main() -> int:
    app = QApplication(sys.argv)
    app.setQuitOnLastWindowClosed(False)
    if not QSystemTrayIcon.isSystemTrayAvailable():
        print("pacd-tray: no system tray on this desktop; use the pacd CLI", file=sys.stderr)
        return 1
    tray = Tray(Client())
    tray.icon.show()
    tray.refresh()
    code = app.exec()
    tray.close()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
