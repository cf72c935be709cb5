"""Qt signals that carry daemon data from a worker thread to the GUI thread."""

import ast
import sys
import threading
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Slot

from gui.follower import EventFollower
from gui.signals import emit
from pacd.client import Client

GUI = Path(__file__).resolve().parents[2] / "gui"
CONVERTED = {"dict", "list", "tuple", "set"}


class Collector(QObject):
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
    follower = EventFollower(Client(socket_path=tmp_path / "no.sock", token="t"))
    collector = Collector()
    follower.received.connect(collector.take)
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
    qtbot.waitUntil(lambda: len(collector.events) == count, timeout=10_000)

    assert collector.events == [event(n) for n in range(count)]
    collector.events.clear()
    after = sys.getrefcount(True), sys.getrefcount(None)
    assert after[0] >= before[0] - 20, (before, after)
    assert after[1] >= before[1] - 20, (before, after)


def test_no_gui_signal_is_declared_with_a_container_type() -> None:
    # Signal(dict) / Signal(list) go through QVariant conversion, which loses
    # references (see above); data crosses threads as ``object`` or as text.
    offenders = []
    for path in sorted(GUI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "Signal"):
                names = {a.id for a in node.args if isinstance(a, ast.Name)}
                if names & CONVERTED:
                    offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
