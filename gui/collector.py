"""Reference cycles are collected on the GUI thread, and only there.

Python's cyclic garbage collector runs in whichever thread allocates when a
generation is due; in the tray that is mostly a worker thread reading an HTTP
answer from the daemon. A dialog that had become garbage inside a reference
cycle was then destroyed there, and PySide6 destroys a widget's C++ side in the
thread that frees its wrapper: it deferred the layout's children to the GUI
thread and deleted them there a second time (a segfault in
``BindingManager::runDeletionInMainThread``, seen in the tray's tests).

While a :class:`GuiThreadCollector` runs, the automatic collector is off and a
timer on the GUI thread collects whatever generation the allocation counts say
is due, with the interpreter's thresholds (CPython also defers a full
collection until enough long-lived objects are pending; here one simply runs
when generation 1 has been collected often enough: a few more full collections
in a process whose heap is small). Objects freed by their reference count are
not affected: code that lets a widget go does so on the GUI thread
(see ``Tray.close``).
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer, Slot

#: how often the GUI thread looks at the allocation counts
INTERVAL_MS = 250


class GuiThreadCollector(QObject):
    """Make and start it on the GUI thread; :meth:`stop` puts the collector back."""

    def __init__(self, interval_ms: int = INTERVAL_MS) -> None:
        super().__init__()
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.collect_due)
        self._was_enabled = gc.isenabled()

    def start(self) -> None:
        if self._timer.isActive():
            return  # started twice: the state to restore is the one seen the first time
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._timer.start()

    def stop(self) -> None:
        """Collect everything now, on this thread, and hand collection back to Python."""
        self._timer.stop()
        gc.collect()
        if self._was_enabled:
            gc.enable()

    @Slot()
    def collect_due(self) -> None:
        counts = gc.get_count()
        thresholds = gc.get_threshold()
        for generation in (2, 1, 0):
            if thresholds[generation] and counts[generation] > thresholds[generation]:
                gc.collect(generation)
                return
