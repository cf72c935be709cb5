"""The approval dialog: exactly what will be signed, hard to approve by accident.

What it shows is rendered from the canonical payload (see :mod:`gui.renderers`)
and only when that payload's SHA-256 is the challenge the key would sign;
otherwise the dialog says so and offers nothing to sign. The raw JSON is one
click away.

Against click-jacking and habituation: focus starts on **Deny**; **Approve**
is enabled only once the dialog has been shown and focused for
:data:`ARM_DELAY_MS` without interruption (losing focus starts the wait over);
the window stays on top; Enter and Return never approve. **Not now**, Esc and
closing the window leave the approval pending; **Deny** ends it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from PySide6.QtCore import QEvent, Qt, QThread, QTimer, Signal, Slot
from PySide6.QtGui import QCloseEvent, QFont, QKeyEvent, QShowEvent
from PySide6.QtWidgets import (
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from gui.ceremony import (
    CEREMONY_TIMEOUT_S,
    MISMATCH,
    Authenticator,
    CeremonyWorker,
    run_on_thread,
    window_authenticator,
)
from gui.pin_panel import PinPanel
from gui.renderers import render
from gui.signals import emit
from gui.text import plain_label, set_plain
from pacd.client import Client, approval_challenge_matches

ARM_DELAY_MS = 1000
VALUE_LIMIT = 120


def relative_time(iso_time: str, now: float | None = None) -> str:
    """``in 14 min (09:32)``: local wall time plus how far away it is."""
    try:
        when = datetime.fromisoformat(iso_time.replace("Z", "+00:00"))
    except ValueError:
        return iso_time
    now_ts = now if now is not None else datetime.now(UTC).timestamp()
    delta = when.timestamp() - now_ts
    local = when.astimezone().strftime("%H:%M:%S")
    minutes = abs(delta) / 60
    span = f"{int(abs(delta))} s" if minutes < 1 else (
        f"{int(minutes)} min" if minutes < 120 else f"{int(minutes // 60)} h")
    return f"in {span} ({local})" if delta >= 0 else f"{span} ago ({local})"


def requester_text(payload: dict[str, Any]) -> str:
    """``owner:uid=1000, process 4242 (/usr/bin/python3)``: from the signed payload only
    (the approval view's ``requester_pid``/``requester_exe`` are not what the key signs)."""
    who = str(payload.get("requester", "?"))
    process = payload.get("requester_process")
    if not isinstance(process, dict):
        return who + ", process not recorded"
    who += f", process {process.get('pid', '?')}"
    exe = process.get("exe")
    return who + (f" ({exe})" if exe else " (executable unknown)")


class ApprovalDialog(QDialog):
    """One approval. ``decided(id, outcome)``: approved, denied, later or closed."""

    decided = Signal(str, str)
    #: the owner pressed Deny: the tray posts it
    deny_requested = Signal(str)

    def __init__(self, detail: dict[str, Any], client: Client | None = None,
                 authenticator: Authenticator | None = None, parent: QWidget | None = None,
                 *, arm_delay_ms: int = ARM_DELAY_MS,
                 ceremony_timeout_s: float = CEREMONY_TIMEOUT_S) -> None:
        super().__init__(parent)
        self.detail = detail
        self.client = client
        #: None: the platform's ceremony for this window (see ceremony_authenticator)
        self.authenticator = authenticator
        payload = detail.get("payload")
        self.payload: dict[str, Any] = payload if isinstance(payload, dict) else {}
        self.approval_id = str(self.payload.get("id") or detail.get("id", ""))
        self.signable = approval_challenge_matches(detail)
        self.ceremony_timeout_s = ceremony_timeout_s
        self._outcome = ""
        self._thread: QThread | None = None
        self._worker: CeremonyWorker | None = None
        self.setWindowTitle("pacd: approval requested")
        self.setWindowFlag(Qt.WindowType.WindowStaysOnTopHint, True)
        layout = QVBoxLayout(self)

        title, rows = render(self.payload) if self.signable else ("Not signable", [])
        self.title = plain_label(title)
        font = QFont(self.title.font())
        font.setBold(True)
        self.title.setFont(font)
        layout.addWidget(self.title)

        self.fields = QFormLayout()
        self.value_labels: list[QLabel] = []
        for name, value in rows:
            label = plain_label(value, limit=VALUE_LIMIT)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.value_labels.append(label)
            self.fields.addRow(plain_label(name), label)
        layout.addLayout(self.fields)

        self.requester = plain_label(f"asked by: {requester_text(self.payload)}")
        self.needs = plain_label(
            f"needs: {self.payload.get('required_level', '?')}; expires "
            f"{relative_time(str(self.payload.get('expires_at', '?')))}")
        for label in (self.requester, self.needs):
            label.setWordWrap(True)
            layout.addWidget(label)

        self.raw_toggle = QPushButton("Show raw JSON")
        self.raw_toggle.setCheckable(True)
        self.raw = QPlainTextEdit()
        self.raw.setReadOnly(True)
        self.raw.setPlainText(json.dumps(self.payload, indent=2, sort_keys=True))
        self.raw.setVisible(False)
        self.raw_toggle.toggled.connect(self.raw.setVisible)
        layout.addWidget(self.raw_toggle)
        layout.addWidget(self.raw)

        # The ceremony panel: what the key wants now, the PIN when asked, Cancel.
        self.status = plain_label(
            "Approving asks you to touch your security key." if self.signable else MISMATCH)
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.pin_row = PinPanel(self._give_pin)
        # what tests and the ceremony's focus rules reach for
        self.pin_prompt, self.pin_edit, self.pin_ok = (
            self.pin_row.prompt, self.pin_row.edit, self.pin_row.ok)
        layout.addWidget(self.pin_row)

        buttons = QHBoxLayout()
        self.deny_button = QPushButton("Deny")
        self.later_button = QPushButton("Not now")
        self.cancel_button = QPushButton("Cancel")
        self.approve_button = QPushButton("Approve with key")
        self.cancel_button.setVisible(False)
        for b in (self.deny_button, self.later_button, self.cancel_button, self.approve_button):
            b.setAutoDefault(False)
            b.setDefault(False)
            buttons.addWidget(b)
        layout.addLayout(buttons)
        self.approve_button.setEnabled(False)
        self.deny_button.clicked.connect(self._deny)
        self.later_button.clicked.connect(self.reject)
        self.cancel_button.clicked.connect(self.cancel_ceremony)
        self.approve_button.clicked.connect(self.start_ceremony)

        self.arm_timer = QTimer(self)
        self.arm_timer.setSingleShot(True)
        self.arm_timer.setInterval(arm_delay_ms)
        self.arm_timer.timeout.connect(self._arm)

    # --- arming -------------------------------------------------------------

    def _arm(self) -> None:
        if self.signable and self.isVisible() and self.isActiveWindow() and self._worker is None:
            self.approve_button.setEnabled(True)

    def _disarm(self) -> None:
        self.arm_timer.stop()
        self.approve_button.setEnabled(False)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.deny_button.setFocus(Qt.FocusReason.OtherFocusReason)
        self.raise_()
        self.activateWindow()

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.Type.ActivationChange:
            if self.isActiveWindow() and self.isVisible():
                if self._worker is None and not self.approve_button.isEnabled():
                    self.arm_timer.start()
            else:
                self._disarm()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            event.accept()  # never a default button: Enter approves nothing
            return
        super().keyPressEvent(event)  # Esc: reject(), i.e. "not now"

    # --- outcomes -----------------------------------------------------------

    def _finish(self, outcome: str) -> None:
        if self._outcome:
            return
        self._outcome = outcome
        self.cancel_ceremony()
        emit(self.decided, self.approval_id, outcome)
        super().done(0)

    def reject(self) -> None:
        self._finish("later")

    def closeEvent(self, event: QCloseEvent) -> None:
        self._finish("later")
        super().closeEvent(event)

    def _deny(self) -> None:
        emit(self.deny_requested, self.approval_id)
        self._finish("denied")

    def close_for(self, why: str) -> None:
        """The approval ended elsewhere (expired, resolved) or the daemon went away."""
        self._finish(why)

    # --- the ceremony panel ------------------------------------------------

    def ceremony_authenticator(self) -> Authenticator:
        """The one given, else this platform's, tied to this dialog's window (on the GUI
        thread: the window handle is read here)."""
        return self.authenticator or window_authenticator(int(self.winId()))

    @Slot()
    def start_ceremony(self) -> None:
        if not self.approve_button.isEnabled() or not self.signable or self.client is None:
            return
        if not approval_challenge_matches(self.detail):  # checked again, right before signing
            set_plain(self.status, MISMATCH)
            return
        self.approve_button.setEnabled(False)
        self.cancel_button.setVisible(True)
        worker = CeremonyWorker(self.client, self.detail, self.ceremony_authenticator(),
                                self.ceremony_timeout_s)
        worker.prompt.connect(self._show_prompt)
        worker.pin_needed.connect(self._ask_pin)
        worker.finished.connect(self._ceremony_finished)
        self._worker = worker
        self._thread = run_on_thread(worker)

    @Slot()
    def cancel_ceremony(self) -> None:
        if self._worker is not None:
            self._worker.cancel()

    @Slot(str)
    def _show_prompt(self, text: str) -> None:
        set_plain(self.status, text)

    @Slot(str)
    def _ask_pin(self, prompt: str) -> None:
        self.pin_row.ask(prompt)

    def _give_pin(self, pin: str) -> None:
        if self._worker is not None:
            self._worker.provide_pin(pin)
        set_plain(self.status, "Touch your security key now.")

    @Slot(str)
    def _ceremony_finished(self, error: str) -> None:
        # The worker is dropped only once its thread has ended: deleting a QObject
        # that lives on a running thread aborts the process.
        if self._thread is not None:
            self._thread.quit()
            self._thread.wait()
        self._worker = None
        self._thread = None
        self.cancel_button.setVisible(False)
        self.pin_row.setVisible(False)
        if not error:
            set_plain(self.status, "Approved.")
            self._finish("approved")
            return
        set_plain(self.status, error)
        if self.isActiveWindow():
            self.arm_timer.start()  # another try needs the same deliberate wait
