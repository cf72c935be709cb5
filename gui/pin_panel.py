"""The PIN row of a presence ceremony, shared by the approval and presence dialogs.

Shown when the key asks for its PIN (with the tries left in the prompt), hidden
again once the PIN is given. Enter in the field gives the PIN and nothing else:
it never reaches a dialog's default button.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtWidgets import QHBoxLayout, QLineEdit, QPushButton, QWidget

from gui.text import plain_label, set_plain


class PinPanel(QWidget):
    def __init__(self, give: Callable[[str], None], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._give_to = give
        row = QHBoxLayout(self)
        self.prompt = plain_label("")
        self.edit = QLineEdit()
        self.edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.ok = QPushButton("Use PIN")
        for widget in (self.prompt, self.edit, self.ok):
            row.addWidget(widget)
        self.setVisible(False)
        self.ok.clicked.connect(self._give)
        self.edit.returnPressed.connect(self._give)

    def ask(self, prompt: str) -> None:
        set_plain(self.prompt, prompt)
        self.edit.clear()
        self.setVisible(True)
        self.edit.setFocus()

    def _give(self) -> None:
        pin = self.edit.text()
        # The PIN does not stay in the widget once it is on its way.
        self.edit.clear()
        self.setVisible(False)
        self._give_to(pin)
