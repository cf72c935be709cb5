"""Proving presence for something the owner asked the tray to do (start a container).

The action needs a session at some level (the daemon said so: ``required_level``
on its 401/403); this dialog runs that session's ceremony off the GUI thread —
touch prompt, PIN with the tries left, Cancel, timeout — and hands the token to
whoever asked. Nothing is signed but the session challenge the daemon issued.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QThread, QTimer, Signal, Slot
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import QDialog, QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from gui.ceremony import (
    CEREMONY_TIMEOUT_S,
    Authenticator,
    CeremonyWorker,
    FingerprintSessionWorker,
    SessionWorker,
    TouchIdSessionWorker,
    run_on_thread,
    window_authenticator,
)
from gui.pin_panel import PinPanel
from gui.signals import emit
from gui.text import plain_label, set_plain
from pacd.client import Client


class PresenceDialog(QDialog):
    """``proved(token)``: the session's token dict, or None (cancelled, failed)."""

    proved = Signal(object)

    def __init__(self, client: Client, level: str, what: str,
                 authenticator: Authenticator | None,
                 parent: QWidget | None = None, *, fingerprint: bool = False,
                 touchid: bool = False,
                 ceremony_timeout_s: float = CEREMONY_TIMEOUT_S) -> None:
        super().__init__(parent)
        self.setWindowTitle("pacd: confirm it is you")
        self.setWindowFlag(Qt.WindowType.WindowStaysOnTopHint, True)
        self.level = level
        self.client = client
        self.fingerprint = fingerprint
        self.touchid = touchid
        # None: the platform's ceremony for this window, its handle read now on the
        # GUI thread (the worker calls the authenticator on its own thread)
        key = authenticator or window_authenticator(int(self.winId()))
        self._worker: CeremonyWorker | None = SessionWorker(client, level, key,
                                                            ceremony_timeout_s)
        self._thread: QThread | None = None
        self._sent = False
        layout = QVBoxLayout(self)
        self.what = plain_label(f"{what} needs presence ({level}).")
        self.what.setWordWrap(True)
        layout.addWidget(self.what)
        self.status = plain_label("Preparing the security key…")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.pin_row = PinPanel(self._give_pin)
        # what tests and the ceremony's focus rules reach for
        self.pin_prompt, self.pin_edit, self.pin_ok = (
            self.pin_row.prompt, self.pin_row.edit, self.pin_row.ok)
        layout.addWidget(self.pin_row)
        # Offered when the daemon says the owner enabled it (status presence_methods);
        # then nothing starts until the owner picks one.
        self.choice = QWidget()
        choices = QHBoxLayout(self.choice)
        self.key_button = QPushButton("Use security key")
        self.fingerprint_button = QPushButton("Use fingerprint reader")
        self.touchid_button = QPushButton("Use Touch ID")
        for b in (self.key_button, self.fingerprint_button, self.touchid_button):
            b.setAutoDefault(False)
            choices.addWidget(b)
        self.key_button.clicked.connect(self._run)
        self.fingerprint_button.clicked.connect(self._use_fingerprint)
        self.touchid_button.clicked.connect(self._use_touchid)
        self.fingerprint_button.setVisible(fingerprint)
        self.touchid_button.setVisible(touchid)
        self.choice.setVisible(fingerprint or touchid)
        layout.addWidget(self.choice)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setAutoDefault(False)
        self.cancel_button.clicked.connect(self.cancel)
        layout.addWidget(self.cancel_button)
        self._connect(self._worker)

    def _connect(self, worker: CeremonyWorker) -> None:
        worker.prompt.connect(self._show_prompt)
        worker.pin_needed.connect(self._ask_pin)
        worker.finished.connect(self._finished)

    def start(self) -> None:
        self.show()
        if self.fingerprint or self.touchid:
            other = "the fingerprint reader" if self.fingerprint else "Touch ID"
            set_plain(self.status, f"Confirm with your security key or {other}.")
        else:
            QTimer.singleShot(0, self._run)

    @Slot()
    def _run(self) -> None:
        if self._worker is not None and self._thread is None:
            self.choice.setVisible(False)
            self._thread = run_on_thread(self._worker)

    @Slot()
    def _use_fingerprint(self) -> None:
        if self._thread is not None:
            return
        self._worker = FingerprintSessionWorker(self.client, self.level)
        self._connect(self._worker)
        self._run()

    @Slot()
    def _use_touchid(self) -> None:
        if self._thread is not None:
            return
        self._worker = TouchIdSessionWorker(self.client, self.level)
        self._connect(self._worker)
        self._run()

    @Slot()
    def cancel(self) -> None:
        if self._worker is not None and self._thread is not None:
            self._worker.cancel()
        else:
            self._send(None)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.cancel()
        super().closeEvent(event)

    def reject(self) -> None:  # Esc
        self.cancel()

    @Slot(str)
    def _show_prompt(self, text: str) -> None:
        set_plain(self.status, text)

    @Slot(str)
    def _ask_pin(self, prompt: str) -> None:
        self.pin_row.ask(prompt)

    def _give_pin(self, pin: str) -> None:
        if self._worker is not None:
            self._worker.provide_pin(pin)

    @Slot(str)
    def _finished(self, error: str) -> None:
        worker = self._worker
        token = None
        if isinstance(worker, SessionWorker | FingerprintSessionWorker) and not error:
            token = worker.token
        self._worker = None
        self.pin_row.setVisible(False)
        if error:
            set_plain(self.status, error)
        self._send(token)

    def _send(self, token: dict[str, Any] | None) -> None:
        if self._sent:
            return
        self._sent = True
        emit(self.proved, token)
        if token is not None:
            self.done(0)
        # On failure the sentence stays on screen until the owner closes the window.
