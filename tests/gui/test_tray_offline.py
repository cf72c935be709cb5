"""The tray against no daemon at all: grey, retrying, nothing to approve."""

from __future__ import annotations

from pathlib import Path

from gui.tray import Tray, TrayState, poll
from pacd.client import Client


def test_poll_without_daemon_reports_unreachable(tmp_path: Path) -> None:
    state = poll(Client(socket_path=tmp_path / "missing.sock", use_token_cache=False))
    assert state.reachable is False
    assert "not reachable" in state.error
    assert state.icon_name == "pacd-offline"
    assert state.headline == "pacd: daemon not reachable (retrying)"


def test_tray_menu_greys_out_approvals_when_daemon_down(qtbot, tmp_path: Path) -> None:
    tray = Tray(Client(socket_path=tmp_path / "missing.sock", use_token_cache=False),
                poll_interval_ms=50)
    try:
        with qtbot.waitSignal(tray.state_changed, timeout=5000) as blocker:
            tray.refresh()
        state = blocker.args[0]
        assert isinstance(state, TrayState) and not state.reachable
        titles = [a.text() for a in tray.menu.actions()]
        assert titles[0] == "pacd: daemon not reachable (retrying)"
        approvals = next(a for a in tray.menu.actions() if a.text().startswith("Approvals"))
        assert approvals.text() == "Approvals (0)"
        assert not approvals.isEnabled()
    finally:
        tray.close()


def test_state_headline_counts_pending() -> None:
    state = TrayState(reachable=True, owner="Ada", version="0.1.0",
                      approvals=[{"id": "a", "state": "pending"},
                                 {"id": "b", "state": "denied"},
                                 {"id": "c", "state": "pending"}])
    assert state.headline == "pacd 0.1.0: Ada, 2 approvals waiting"
    assert state.icon_name == "pacd-attention"
