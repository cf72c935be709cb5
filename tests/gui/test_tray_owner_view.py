"""The rest of the owner's view: the audit log following live, Verify, Start at login."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from gui.tray import Tray
from pacd import autostart
from tests.gui.world import World, wait_reachable

pytestmark = pytest.mark.system  # a real daemon with the real keychain


def audit_open(qtbot: Any, tray: Tray) -> Any:
    tray.show_audit()
    view = tray.audit_view
    assert view is not None
    qtbot.waitUntil(lambda: "audit.read" in view.shown_actions(), timeout=10_000)
    return view


def test_the_audit_view_shows_a_new_entry_live_and_filters(qtbot: Any, world: World) -> None:
    tray, sent = world.tray()
    try:
        wait_reachable(qtbot, tray)
        view = audit_open(qtbot, tray)
        reads = len(sent.sent)
        approval_id = world.queue_plugin()
        qtbot.waitUntil(lambda: "approval.plugin.install.request" in view.shown_actions(),
                        timeout=10_000)
        row = view.shown_actions().index("approval.plugin.install.request")
        assert view.table.item(row, 4).text() == approval_id
        assert view.table.item(row, 1).text().startswith("owner:uid=")
        # Live: from the event, without reading the log again.
        assert not [r for r in sent.sent[reads:] if r.startswith("GET /v1/audit")]
        view.decision.setCurrentText("deny")
        assert "approval.plugin.install.request" not in view.shown_actions()
        view.decision.setCurrentText("any decision")
        view.action.setText("plugin.install")
        assert set(view.shown_actions()) == {"approval.plugin.install.request"}
        view.verify_button.click()
        qtbot.waitUntil(lambda: view.result.text().startswith("log verified: "), timeout=10_000)
    finally:
        tray.close()


def test_start_at_login_writes_and_removes_the_xdg_autostart_entry(
        qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bare_world: World) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    tray, _ = bare_world.tray()
    try:
        entry = tmp_path / "autostart" / "pacd-tray.desktop"
        login = next(a for a in tray.menu.actions() if a.text() == "Start at login")
        assert not login.isChecked() and not entry.exists()
        login.setChecked(True)
        assert autostart.enabled()
        exec_line = next(line for line in entry.read_text().splitlines()
                         if line.startswith("Exec="))
        assert shlex.split(exec_line[len("Exec="):]) == autostart.tray_command()
        login.setChecked(False)
        assert not entry.exists()
    finally:
        tray.close()


def test_the_menu_lists_each_container_with_its_agents_and_their_state(
        qtbot: Any, world: World) -> None:
    tray, _ = world.tray()
    try:
        qtbot.waitUntil(lambda: bool(tray.state.containers), timeout=10_000)
        containers = next(a for a in tray.menu.actions() if a.text().startswith("Containers"))
        assert containers.text() == "Containers (1)"
        menu = containers.menu()
        studio = menu.actions()[0]
        state = tray.state.containers[0]["state"]
        assert studio.text() == f"studio — {state}"
        lines = [a.text() for a in studio.menu().actions()]
        assert any(line.startswith("agent writer: ") for line in lines), lines
    finally:
        tray.close()
