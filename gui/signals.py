"""Emitting Qt signals from Python without losing a reference to ``True``.

PySide6 6.12's ``SignalInstance.emit`` returns ``True`` without taking a
reference to it, so every emit from Python drops ``True``'s reference count by
one; a tray that runs long enough (or a test session) then aborts with "Fatal
Python error: bool_dealloc". :func:`emit` gives back the reference emit took,
once, if and only if this PySide6 is measured to have the bug.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

from PySide6.QtCore import QObject, Signal, SignalInstance


class _Probe(QObject):
    fired = Signal()


def _emit_drops_a_reference() -> bool:
    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(8):
        probe.fired.emit()
    return sys.getrefcount(True) < before


_COMPENSATE = _emit_drops_a_reference()


def emit(signal: SignalInstance, *args: Any) -> None:
    result: Any = signal.emit(*args)  # type: ignore[func-returns-value]
    if _COMPENSATE and result is True:
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(result))
