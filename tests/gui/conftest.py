import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Qt renders offscreen in tests: no display server needed.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from gui.collector import GuiThreadCollector
from tests.gui.world import World
from tests.integration.harness import DaemonProcess


@pytest.fixture
def daemon_base(real_keychain: str) -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="pacd-gui-") as base:
        yield Path(base)


@pytest.fixture
def world(daemon_base: Path) -> Iterator[World]:
    daemon = DaemonProcess(daemon_base).start()
    try:
        yield World(daemon)
    finally:
        if daemon.alive():
            daemon.stop(timeout=30)


@pytest.fixture
def bare_world(daemon_base: Path) -> Iterator[World]:
    """A daemon with no owner yet."""
    daemon = DaemonProcess(daemon_base).start()
    try:
        yield World(daemon, owner=False)
    finally:
        if daemon.alive():
            daemon.stop(timeout=30)


@pytest.fixture(autouse=True)
def gui_thread_collection(qapp: Any) -> Iterator[None]:
    """Cycles are collected on the GUI thread during tray tests, as in the tray itself
    (gui.tray.main); at the end of each test everything left is collected here."""
    collector = GuiThreadCollector()
    collector.start()
    try:
        yield
    finally:
        collector.stop()
