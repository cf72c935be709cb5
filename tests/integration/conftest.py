"""Fixtures for the integration tests: real daemons on private sockets."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import DaemonProcess


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="pacd-it-") as d:
        yield Path(d)


@pytest.fixture
def make_daemon(real_keychain: str, short_tmp: Path) -> Iterator[Callable[..., DaemonProcess]]:
    made: list[DaemonProcess] = []

    def make(name: str = "d", settings: dict[str, Any] | None = None,
             env: dict[str, str] | None = None, start: bool = True) -> DaemonProcess:
        base = short_tmp / name
        base.mkdir()
        daemon = DaemonProcess(base, settings, env)
        made.append(daemon)
        return daemon.start() if start else daemon

    yield make
    for daemon in made:
        if daemon.alive():
            with contextlib.suppress(Exception):
                daemon.stop(timeout=20)
        if daemon.alive():
            daemon.kill()


@pytest.fixture
def daemon(make_daemon: Callable[..., DaemonProcess]) -> DaemonProcess:
    return make_daemon()
