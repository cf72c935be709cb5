"""The tray follows the daemon's events: quiet when idle, grey when the daemon is gone.

Real daemon on a private socket; the tray's client counts what it sends
(``GET /v1/status`` is not audited) and the daemon's audit log counts the rest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gui.daemon_start import start_command
from gui.instance import SingleInstance
from gui.tray import Tray, fetch_state
from pacd.client import Client
from tests.gui.world import CountingClient, World, wait_reachable
from tests.integration.harness import ROOT

pytestmark = pytest.mark.system  # a real daemon with the real keychain

IDLE_S = 60


def owner_entries_after(world: World, seq: int) -> list[dict[str, Any]]:
    return [e for e in world.daemon.audit()
            if e["seq"] > seq and e["actor"].startswith("owner:")]


def test_an_idle_tray_sends_no_requests_and_adds_no_audit_entries(qtbot: Any,
                                                                   world: World) -> None:
    tray, sent = world.tray()
    try:
        wait_reachable(qtbot, tray)
        qtbot.waitUntil(lambda: not tray._refreshing, timeout=10_000)
        start_seq = world.daemon.audit()[-1]["seq"]  # this read is the last entry
        requests_before = len(sent.sent)
        deadline = time.monotonic() + IDLE_S
        while time.monotonic() < deadline:
            qtbot.wait(1000)  # waits-on: external clock — the promise is a minute of idling
        new = owner_entries_after(world, start_seq)
        # The only owner entry is this test's own read of the log.
        assert [e["action"] for e in new] == ["audit.read"], new
        assert sent.sent[requests_before:] == []
        assert tray.state.reachable
    finally:
        tray.close()


def test_tray_shows_the_daemon_down_offers_to_start_it_and_recovers(qtbot: Any,
                                                                    bare_world: World) -> None:
    daemon = bare_world.daemon
    tray, _ = bare_world.tray()
    try:
        wait_reachable(qtbot, tray)
        assert "Start daemon" not in [a.text() for a in tray.menu.actions()]
        daemon.stop()
        wait_reachable(qtbot, tray, False)
        assert tray.state.icon_name == "pacd-offline"
        assert tray.state.headline == "pacd: daemon not running"
        titles = [a.text() for a in tray.menu.actions()]
        assert titles[0] == "pacd: daemon not running"
        assert "Start daemon" in titles
        approvals = next(a for a in tray.menu.actions() if a.text().startswith("Approvals"))
        assert not approvals.isEnabled()
        daemon.start()
        tray.follower.retry_now()
        wait_reachable(qtbot, tray)
        assert tray.state.icon_name == "pacd"
        assert "Start daemon" not in [a.text() for a in tray.menu.actions()]
    finally:
        tray.close()


def test_start_daemon_in_the_menu_runs_the_bundled_command_and_the_tray_recovers(
        qtbot: Any, bare_world: World) -> None:
    # No systemd user unit here: "Start daemon" runs the bundled ``pacd daemon``. The
    # spawn at the OS boundary runs exactly the tray's command, in the test daemon's
    # environment (its socket and home), so the daemon that answers is the one started.
    daemon = bare_world.daemon
    launched: list[list[str]] = []

    def spawn(argv: Sequence[str]) -> object:
        launched.append(list(argv))
        with open(daemon.log_path, "ab") as log:
            daemon.proc = subprocess.Popen(list(argv), env=daemon.env, cwd=ROOT,
                                           stdout=log, stderr=subprocess.STDOUT)
        return daemon.proc

    tray = Tray(CountingClient(daemon.client()), spawn=spawn)
    try:
        wait_reachable(qtbot, tray)
        daemon.stop()
        wait_reachable(qtbot, tray, False)
        start = next(a for a in tray.menu.actions() if a.text() == "Start daemon")
        start.trigger()
        assert launched == [start_command()] == [[sys.executable, "-m", "pacd", "daemon"]]
        wait_reachable(qtbot, tray)  # nobody but the tray asks the daemon again
        assert daemon.alive()
        assert tray.state.icon_name == "pacd"
        assert "Start daemon" not in [a.text() for a in tray.menu.actions()]
    finally:
        tray.close()


def test_the_start_command_is_the_service_manager_s_where_pacd_is_a_service(
        tmp_path: Path) -> None:
    assert start_command("linux", tmp_path) == [sys.executable, "-m", "pacd", "daemon"]
    unit = tmp_path / ".config/systemd/user/pacd.service"
    unit.parent.mkdir(parents=True)
    unit.touch()
    assert start_command("linux", tmp_path) == ["systemctl", "--user", "start",
                                                "pacd.service"]
    agent = tmp_path / "Library/LaunchAgents/org.pacd.daemon.plist"
    agent.parent.mkdir(parents=True)
    agent.touch()
    assert start_command("darwin", tmp_path) == [
        "launchctl", "kickstart", f"gui/{os.getuid()}/org.pacd.daemon"]


def test_state_without_a_daemon_is_offline_not_an_error(tmp_path: Path) -> None:
    state = fetch_state(Client(socket_path=tmp_path / "missing.sock", use_token_cache=False))
    assert state.reachable is False
    assert state.problem == ""
    assert "not reachable" in state.error
    assert state.icon_name == "pacd-offline"


def test_a_second_tray_raises_the_first_instead_of_starting(qtbot: Any,
                                                             tmp_path: Path) -> None:
    first = SingleInstance(tmp_path / "tray.sock")
    assert first.claim()
    try:
        with qtbot.waitSignal(first.raise_requested, timeout=5000):
            assert SingleInstance(tmp_path / "tray.sock").claim() is False
    finally:
        first.release()
    # Once the first has gone, a new start is the first again.
    again = SingleInstance(tmp_path / "tray.sock")
    assert again.claim()
    again.release()


def test_waiting_icon_carries_the_count_of_approvals(qtbot: Any) -> None:
    from gui.tray import Tray

    plain = Tray._icon("pacd-waiting").pixmap(64, 64).toImage()
    three = Tray._icon("pacd-waiting", 3).pixmap(64, 64).toImage()
    assert not plain.isNull() and not three.isNull()
    assert plain != three  # the digit is drawn into the badge
    assert Tray._icon("pacd-waiting", 3).pixmap(64, 64).toImage() == three


def test_emitting_tray_signals_does_not_drain_the_reference_to_true() -> None:
    # PySide6 6.12's emit drops a reference to True per call; enough of them and
    # the tray aborts ("bool_dealloc"). The tray emits only through gui.signals.emit.
    import sys

    from PySide6.QtCore import QObject, Signal

    from gui.signals import emit

    class Emitter(QObject):
        fired = Signal(str)

    emitter = Emitter()
    before = sys.getrefcount(True)
    for _ in range(500):
        emit(emitter.fired, "x")
    assert sys.getrefcount(True) >= before


def test_an_audit_refusal_is_shown_as_such_not_as_a_missing_daemon(
        qtbot: Any, bare_world: World) -> None:
    tray, _ = bare_world.tray()
    try:
        wait_reachable(qtbot, tray)
        # What the follower reports when the daemon answers 503 audit_untrusted.
        tray.on_lost("audit_untrusted", "the audit checkpoint does not match the log")
        assert tray.state.reachable
        assert tray.state.icon_name == "pacd-attention"
        head = tray.menu.actions()[0].text()
        assert head == ("pacd: audit log not trusted — the audit checkpoint does not match "
                        "the log")
        assert "Start daemon" not in [a.text() for a in tray.menu.actions()]
    finally:
        tray.close()
