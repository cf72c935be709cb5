"""Daemon-supplied text, shown as exactly what it is.

Qt guesses that a string containing tags is rich text, so a plugin named
``</b><font color=white>…`` could hide or restyle part of the very prompt the
owner approves from. Every widget here shows plain text. Control and
bidirectional-override characters (``\\u202e`` turns the rest of a line around)
are replaced by their visible escapes, so what the owner reads is what the
payload holds; long values are cut with the full text in the tool tip.
"""

from __future__ import annotations

import unicodedata

from PySide6.QtCore import Qt
from PySide6.QtGui import Qt as QtGuiNamespace
from PySide6.QtWidgets import QLabel, QMessageBox, QWidget

#: values longer than this are elided in place; the tool tip has them whole
ELIDE_AT = 160
#: format characters that change how the text around them is drawn
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                  "\u2066\u2067\u2068\u2069\u200b\u200c\u200d\u2060\ufeff")


def visible(text: str) -> str:
    """``text`` with every control, bidi and invisible format character escaped (``\\u202e``)."""
    out: list[str] = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch in _BIDI or category in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def elide(text: str, limit: int = ELIDE_AT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plain_tooltip(text: str) -> str:
    """Tool tips guess rich text too: hand them the plain text already escaped."""
    return str(QtGuiNamespace.convertFromPlainText(text))


def plain_label(text: str, *, limit: int | None = None) -> QLabel:
    """A label that shows ``text`` literally, escaped; elided past ``limit`` (full on hover)."""
    label = QLabel()
    label.setTextFormat(Qt.TextFormat.PlainText)
    set_plain(label, text, limit=limit)
    return label


def set_plain(label: QLabel, text: str, *, limit: int | None = None) -> None:
    shown = visible(text)
    if limit is not None and len(shown) > limit:
        label.setText(elide(shown, limit))
        label.setToolTip(plain_tooltip(shown))
    else:
        label.setText(shown)
        label.setToolTip("")


def plain_message_box(text: str, parent: QWidget | None = None) -> QMessageBox:
    """A warning box that shows ``text`` literally (QMessageBox.warning would guess)."""
    box = QMessageBox(QMessageBox.Icon.Warning, "pacd", "", QMessageBox.StandardButton.Ok,
                      parent)
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setText(visible(text))
    return box


def menu_text(text: str) -> str:
    """A menu entry shows ``&`` as a shortcut marker unless it is doubled."""
    return visible(text).replace("&", "&&")
