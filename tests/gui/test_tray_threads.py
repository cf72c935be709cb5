"""What the tray's worker threads may and may not do to Qt objects."""

import ast
import gc
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Slot
from PySide6.QtWidgets import QDialog, QHBoxLayout, QLabel, QVBoxLayout

from gui.follower import EventFollower
from gui.signals import emit
from pacd.client import Client

GUI = Path(__file__).resolve().parents[2] / "gui"
CONVERTED = {"dict", "list", "tuple", "set", "qvariantmap", "qvariantlist"}


def unreachable_client(tmp_path: Path) -> Client:
    """A client of a daemon that is not there: these tests never send a request."""
    return Client(socket_path=tmp_path / "no.sock", token="t")


class EventSink(QObject):
    """Receives the follower's events on the GUI thread."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    @Slot(object)
    def take(self, event: dict[str, Any]) -> None:
        self.events.append(event)


def test_events_sent_from_the_follower_thread_do_not_free_true_or_none(
        qtbot: Any, tmp_path: Path) -> None:
    # A dict-typed signal dropped a reference to each True and None an event held:
    # 200 events took 200 from True, and a long-running tray segfaulted in on_event.
    follower = EventFollower(unreachable_client(tmp_path))
    sink = EventSink()
    follower.received.connect(sink.take)
    count = 200

    def event(n: int) -> dict[str, Any]:
        return {"type": "container.state", "n": n, "running": True, "agent_state": None,
                "ports": [{"open": True, "host": None}]}

    before = sys.getrefcount(True), sys.getrefcount(None)

    def send() -> None:
        for n in range(count):
            emit(follower.received, event(n))
    sender = threading.Thread(target=send)
    sender.start()
    sender.join()
    qtbot.waitUntil(lambda: len(sink.events) == count, timeout=10_000)

    assert sink.events == [event(n) for n in range(count)]
    sink.events.clear()
    after = sys.getrefcount(True), sys.getrefcount(None)
    assert after[0] >= before[0] - 20, (before, after)
    assert after[1] >= before[1] - 20, (before, after)


def _type_name(node: ast.expr) -> str:
    """``dict`` for ``dict``, ``dict[str, Any]``, ``typing.Dict`` or ``"QVariantMap"``."""
    if isinstance(node, ast.Subscript):
        return _type_name(node.value)
    if isinstance(node, ast.Attribute):
        return node.attr.lower()
    if isinstance(node, ast.Name):
        return node.id.lower()
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.lower()
    return ""


def test_no_gui_signal_or_slot_is_declared_with_a_container_type() -> None:
    # Signal(dict) / Signal(list) go through QVariant conversion, which loses
    # references (see above); data crosses threads as ``object`` or as text.
    offenders = []
    for path in sorted(GUI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("Signal", "Slot")
                    and {_type_name(a) for a in node.args} & CONVERTED):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


class CyclicDialog(QDialog):
    """A dialog shaped like the approval dialog (nested layouts) that refers to itself."""

    def __init__(self) -> None:
        super().__init__()
        outer = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("a label in a nested layout"))
        outer.addLayout(row)
        self.myself = self


def test_a_dialog_dropped_in_a_cycle_is_destroyed_on_the_gui_thread(qtbot: Any) -> None:
    # The tray's workers allocate (HTTP answers) and so ran the cyclic collector; a
    # dialog collected there was destroyed off the GUI thread and PySide6 then deleted
    # its layout's children twice (a segfault in runDeletionInMainThread).
    deaths: list[str] = []
    dialog = CyclicDialog()
    weakref.finalize(dialog, lambda: deaths.append(threading.current_thread().name))
    del dialog

    def churn() -> None:
        # Enough container objects that the automatic collector is due many times over.
        for _ in range(20):
            junk = [[] for _ in range(gc.get_threshold()[0] * 2)]
            del junk
    worker = threading.Thread(target=churn, name="pacd-tray-worker")
    worker.start()
    worker.join()

    assert deaths == []  # the worker collected nothing
    # Objects that live on (the tray's own state) make a collection due; the GUI
    # thread's timer then runs it.
    alive = [[] for _ in range(gc.get_threshold()[0] * 2)]
    qtbot.waitUntil(lambda: deaths != [], timeout=10_000)
    assert deaths == [threading.main_thread().name]
    del alive


def test_events_queued_before_close_are_dropped_after_it(qtbot: Any, tmp_path: Path) -> None:
    # The follower may have emitted an event just before close(); delivered after it,
    # it found the worker pool shut down ("cannot schedule new futures") and the menu
    # deleted. Seen as an exception in the Qt event loop failing an unrelated test.
    from gui.tray import Tray

    tray = Tray(unreachable_client(tmp_path), follow=False)
    tray.close()
    tray.on_event({"type": "approval.created", "id": "a1", "summary": "s"})
    tray.on_event({"type": "container.state", "name": "box", "agent": "x",
                   "agent_state": "exited"})
    tray.on_lost("daemon_unavailable", "gone")
    tray.refresh()
    assert tray.messages == []
    assert tray.queue == []
