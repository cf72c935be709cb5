"""The audit log in the tray: recent entries, filters, live updates, "Verify log".

Opening the view reads the last :data:`RECENT` entries once (``GET /v1/audit``,
itself an entry); after that new entries arrive as ``audit.appended`` events
and are added from the event alone, so following the log sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from gui.text import plain_label, set_plain, visible
from pacd.client import Client
from pacd.errors import PacdError

RECENT = 200
COLUMNS = ("seq", "actor", "action", "decision", "target")
#: runs ``work`` off the GUI thread, then ``then(result)`` on it
Background = Callable[[Callable[[], Any], Callable[[Any], None]], None]


def load_recent(client: Client) -> list[dict[str, Any]] | PacdError:
    try:
        head = int(client.status().get("audit", {}).get("head_seq", 0))
        page = client.request("GET", f"/v1/audit?after={max(0, head - RECENT)}&limit={RECENT}")
    except PacdError as exc:
        return exc
    return list(page.get("entries", []))


def verify(client: Client) -> str:
    try:
        result = client.request("POST", "/v1/audit/verify", {})
    except PacdError as exc:
        return f"could not verify: {exc.message}"
    if result.get("ok"):
        return f"log verified: {result.get('entries')} entries, chain intact"
    return (f"log NOT intact: first bad entry {result.get('first_bad_seq')}: "
            f"{result.get('problem') or '?'}")


class AuditView(QWidget):
    def __init__(self, client: Client, background: Background) -> None:
        super().__init__()
        self.client = client
        self.background = background
        self.setWindowTitle("pacd: audit log")
        self.entries: list[dict[str, Any]] = []
        layout = QVBoxLayout(self)
        filters = QHBoxLayout()
        self.decision = QComboBox()
        self.decision.addItems(["any decision", "allow", "deny", "info"])
        self.actor = QLineEdit()
        self.actor.setPlaceholderText("actor")
        self.container = QLineEdit()
        self.container.setPlaceholderText("container / target")
        self.action = QLineEdit()
        self.action.setPlaceholderText("action")
        for w in (self.decision, self.actor, self.container, self.action):
            filters.addWidget(w)
        self.decision.currentIndexChanged.connect(self._refilter)
        for edit in (self.actor, self.container, self.action):
            edit.textChanged.connect(self._refilter)
        layout.addLayout(filters)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        layout.addWidget(self.table)
        bottom = QHBoxLayout()
        self.verify_button = QPushButton("Verify log")
        self.verify_button.clicked.connect(self.verify)
        self.result = plain_label("")
        bottom.addWidget(self.verify_button)
        bottom.addWidget(self.result, 1)
        layout.addLayout(bottom)

    def load(self) -> None:
        self.background(lambda: load_recent(self.client), self._loaded)

    def _loaded(self, entries: list[dict[str, Any]] | PacdError) -> None:
        if isinstance(entries, PacdError):
            set_plain(self.result, f"could not read the log: {entries.message}")
            return
        known = {e.get("seq") for e in self.entries}
        self.entries = [e for e in entries if e.get("seq") not in known] + self.entries
        self.entries.sort(key=lambda e: int(e.get("seq", 0)))
        self._refilter()

    def append(self, event: dict[str, Any]) -> None:
        """An ``audit.appended`` event: one more row, no request."""
        if any(e.get("seq") == event.get("seq") for e in self.entries[-50:]):
            return
        self.entries.append({k: event.get(k) for k in COLUMNS})
        del self.entries[:-RECENT * 5]
        if self._matches(self.entries[-1]):
            self._add_row(self.entries[-1])

    def verify(self) -> None:
        set_plain(self.result, "verifying…")
        self.background(lambda: verify(self.client), lambda text: set_plain(self.result, text))

    def _matches(self, entry: dict[str, Any]) -> bool:
        decision = self.decision.currentText()
        if decision != "any decision" and entry.get("decision") != decision:
            return False
        return all(needle.text() in str(entry.get(key, "")) for needle, key in (
            (self.actor, "actor"), (self.container, "target"), (self.action, "action")))

    def _refilter(self) -> None:
        self.table.setRowCount(0)
        for entry in self.entries:
            if self._matches(entry):
                self._add_row(entry)

    def _add_row(self, entry: dict[str, Any]) -> None:
        row = self.table.rowCount()
        self.table.insertRow(row)
        for col, key in enumerate(COLUMNS):
            # QTableWidgetItem shows plain text; control characters are escaped.
            self.table.setItem(row, col, QTableWidgetItem(visible(str(entry.get(key, "")))))

    def shown_actions(self) -> list[str]:
        items = (self.table.item(r, 2) for r in range(self.table.rowCount()))
        return [item.text() for item in items if item is not None]
