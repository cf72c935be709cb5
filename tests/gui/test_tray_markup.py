"""Daemon-supplied strings are shown literally: a plugin name cannot restyle a prompt.

A plugin named ``</b><font color=white>…`` would, as rich text, end the bold
summary and paint the rest of the approval prompt white on white. Every label
and message box showing daemon text is plain text, so the owner sees the tags.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QTextDocument

from gui.text import plain_label, plain_message_box, plain_tooltip

HOSTILE = "</b><font color=white>Formatter 1.0 (reads nothing)</font><b>"


def test_tray_labels_show_markup_and_controls_literally(qtbot: Any) -> None:
    label = plain_label(f"install plugin {HOSTILE}\u202e\x1b[2J")
    qtbot.addWidget(label)
    assert label.textFormat() == Qt.TextFormat.PlainText
    assert label.text() == f"install plugin {HOSTILE}\\u202e\\x1b[2J"
    # Drawn as rich text (as a prompt that wraps it in <b>…</b> would be), the same
    # text would hide its tags and restyle the rest: the label draws them instead.
    as_rich = QTextDocument()
    as_rich.setHtml(label.text())
    assert "<font color=white>" not in as_rich.toPlainText()


def test_tray_error_boxes_and_tooltips_show_markup_literally(qtbot: Any) -> None:
    box = plain_message_box(f"plugin {HOSTILE} was refused")
    qtbot.addWidget(box)
    assert box.textFormat() == Qt.TextFormat.PlainText
    assert box.text() == f"plugin {HOSTILE} was refused"
    # A tooltip is rendered as HTML by Qt: the escaped text renders to the tags.
    rendered = QTextDocument()
    rendered.setHtml(plain_tooltip(f"pacd 0.1: {HOSTILE}"))
    assert rendered.toPlainText() == f"pacd 0.1: {HOSTILE}"
