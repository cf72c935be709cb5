"""The pacd tray: daemon status, approvals as they arrive, approve with your key.

The tray is only a client of the owner socket. It follows ``GET /v1/events``
(:mod:`gui.follower`) and fetches ``/v1/status`` and ``/v1/approvals`` only
when an event says something changed, so an idle tray sends no requests and
adds nothing to the audit log. Its own reads are audit entries too, whose
``audit.appended`` events must not trigger reads again: only events that
report a change of state do.

When the daemon is down the icon is grey with a "Start daemon" action; a daemon
that refuses because its audit log cannot be written or trusted is shown as
exactly that. Nothing is ever approved by default — closing a dialog, a
timeout or an error is a "not now" or a "no".
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shiboken6
from PySide6.QtCore import QObject, QRect, Qt, Signal, Slot
from PySide6.QtGui import QAction, QColor, QFont, QIcon, QPainter
from PySide6.QtWidgets import QApplication, QMenu, QSystemTrayIcon

from gui.approval_dialog import ApprovalDialog
from gui.audit_view import AuditView
from gui.ceremony import Authenticator, wait_for_ceremonies
from gui.collector import GuiThreadCollector
from gui.daemon_start import Spawn, start_daemon
from gui.follower import EventFollower
from gui.instance import SingleInstance
from gui.presence_dialog import PresenceDialog
from gui.signals import emit
from gui.text import menu_text, plain_message_box, plain_tooltip, visible
from pacd import autostart
from pacd.client import Client
from pacd.errors import PacdError
from pacd.presence.report import enabled_for_sessions

ICONS = Path(__file__).resolve().parent / "icons"
#: events after which the tray's picture of the daemon may be out of date
STATE_EVENTS = frozenset({"approval.created", "approval.resolved", "approval.expired",
                          "container.state", "container.orphan", "audit.untrusted",
                          "audit.trusted", "audit.checkpoint_error"})
#: audit actions (of ``audit.appended``) that change what the tray shows
STATE_ACTIONS = ("owner.create", "credential.", "container.create", "container.delete")
AUDIT_PROBLEMS = ("audit_unavailable", "audit_untrusted")
#: refusals a session at the ``required_level`` they name would cure
SESSION_ERRORS = ("unauthorized", "token_expired", "token_revoked", "presence_required")


@dataclass
class TrayState:
    """What the tray shows; rebuilt after each change the daemon reports."""

    reachable: bool = False
    error: str = ""
    #: ``audit_unavailable``/``audit_untrusted`` when the daemon answers but refuses
    problem: str = ""
    owner: str | None = None
    version: str = ""
    approvals: list[dict[str, Any]] = field(default_factory=list)
    containers: list[dict[str, Any]] = field(default_factory=list)
    demo_enrolled: int = 0
    #: the daemon offers fingerprint (fprintd) sessions: the owner enabled it, a reader works
    fingerprint: bool = False
    #: the daemon offers Touch ID sessions: the owner enabled it, this Mac can use it
    touchid: bool = False

    @property
    def pending(self) -> list[dict[str, Any]]:
        return [a for a in self.approvals if a.get("state") == "pending"]

    @property
    def icon_name(self) -> str:
        if not self.reachable:
            return "pacd-offline"
        if self.problem:
            return "pacd-attention"
        return "pacd-waiting" if self.pending else "pacd"

    @property
    def headline(self) -> str:
        if not self.reachable:
            return "pacd: daemon not running"
        if self.problem == "audit_untrusted":
            return f"pacd: audit log not trusted — {self.error}"
        if self.problem == "audit_unavailable":
            return f"pacd: audit log unavailable — {self.error}"
        who = self.owner or "no owner yet (run: pacd init)"
        count = len(self.pending)
        waiting = f", {count} approval{'s' if count != 1 else ''} waiting" if count else ""
        return f"pacd {self.version}: {who}{waiting}"


def fetch_state(client: Client) -> TrayState:
    """The daemon's status and approvals; never raises."""
    try:
        status = client.status()
        approvals = client.request("GET", "/v1/approvals").get("approvals", [])
        containers = client.request("GET", "/v1/containers").get("containers", [])
    except PacdError as exc:
        if exc.code in AUDIT_PROBLEMS:
            return TrayState(reachable=True, problem=exc.code, error=exc.message)
        return TrayState(reachable=exc.code != "daemon_unavailable", error=exc.message,
                         problem=exc.code if exc.code != "daemon_unavailable" else "")
    owner = status.get("owner")
    audit = status.get("audit")
    problem, error = "", ""
    if isinstance(audit, dict) and not audit.get("trusted", True):
        problem, error = "audit_untrusted", _audit_reason(audit)
    demo = status.get("demo_authenticator")
    return TrayState(
        reachable=True,
        problem=problem,
        error=error,
        owner=owner.get("name") if isinstance(owner, dict) else None,
        version=str(status.get("version", "")),
        approvals=list(approvals),
        containers=list(containers),
        demo_enrolled=int(demo.get("enrolled", 0)) if isinstance(demo, dict) else 0,
        fingerprint=_offered(status, "fprintd"),
        touchid=_offered(status, "touchid"),
    )


def _offered(status: dict[str, Any], method: str) -> bool:
    """Whether status says the owner enabled ``method`` for sessions and it works here."""
    return any(isinstance(p, dict) and p.get("name") == method
               and p.get("available") is True
               and enabled_for_sessions(str(p.get("detail", "")))
               for p in status.get("presence_methods") or [])


def _audit_reason(audit: dict[str, Any]) -> str:
    untrusted = audit.get("untrusted")
    if isinstance(untrusted, dict):
        return f"{untrusted.get('found', '?')} at entry {untrusted.get('first_bad_seq', '?')}"
    failing = audit.get("checkpoint_error")
    if isinstance(failing, dict):
        return f"checkpoint writes failing: {failing.get('message', '?')}"
    return "see pacd status"


class Tray(QObject):
    """Owns the tray icon, its menu, the event follower and the approval dialogs."""

    state_changed = Signal(object)
    #: an approval dialog is on screen (its approval id)
    dialog_shown = Signal(str)
    #: a container action ended: (container id, verb, "" or the error code)
    action_done = Signal(str, str, str)
    #: a callable to run on the GUI thread (results of background requests)
    _gui = Signal(object)

    def __init__(self, client: Client, authenticator: Authenticator | None = None, *,
                 arm_delay_ms: int = 1000, follow: bool = True,
                 spawn: Spawn | None = None) -> None:
        super().__init__()
        self.client = client
        #: how "Start daemon" runs its command (None: detached, see gui.daemon_start)
        self.spawn = spawn
        self.state = TrayState()
        self.authenticator = authenticator
        self.arm_delay_ms = arm_delay_ms
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pacd-tray")
        self._refreshing = False
        self._stale = False
        #: counts daemon losses: a refresh or detail fetch begun before the last loss
        #: answers for a daemon that is gone, and its result is dropped
        self._epoch = 0
        #: set by close(): results still on their way are dropped, its widgets are gone
        self._closed = False
        self._seen: set[str] = set()
        self.queue: list[str] = []
        self.dialog: ApprovalDialog | None = None
        self.messages: list[tuple[str, str]] = []
        self.audit_view: AuditView | None = None
        self.presence_dialog: PresenceDialog | None = None
        #: the session a ceremony in the tray earned (for container actions)
        self.session_token: str | None = None
        self.icon = QSystemTrayIcon(self._icon("pacd-offline"))
        self.menu = QMenu()
        self.icon.setContextMenu(self.menu)
        self._gui.connect(lambda fn: fn())
        self.follower = EventFollower(client)
        self.follower.connected.connect(self.refresh)
        self.follower.received.connect(self.on_event)
        self.follower.lost.connect(self.on_lost)
        self._rebuild_menu()
        if follow:
            self.follower.start()

    @staticmethod
    def _icon(name: str, count: int = 0) -> QIcon:
        icon = QIcon(str(ICONS / f"{name}.svg"))
        if not count:
            return icon
        # The waiting icon carries its count in the badge the SVG leaves for it.
        pixmap = icon.pixmap(64, 64)
        painter = QPainter(pixmap)
        font = QFont(painter.font())
        font.setBold(True)
        font.setPixelSize(18)
        painter.setFont(font)
        painter.setPen(QColor("#ffffff"))
        painter.drawText(QRect(34, 34, 28, 28), Qt.AlignmentFlag.AlignCenter,
                         str(count) if count < 10 else "9+")
        painter.end()
        return QIcon(pixmap)

    def notify(self, title: str, text: str,
               icon: QSystemTrayIcon.MessageIcon = QSystemTrayIcon.MessageIcon.Information
               ) -> None:
        self.messages.append((title, text))
        self.icon.showMessage(title, visible(text), icon)

    def _background(self, work: Callable[[], Any], then: Callable[[Any], None], *,
                    current: bool = False) -> None:
        """Run ``work`` off the GUI thread, then ``then(result)`` on it. ``current``: only
        if the daemon has not been lost meanwhile (see :meth:`on_lost`)."""
        if self._closed:
            return  # an event queued before close() arrived after it: nothing to fetch for
        epoch = self._epoch

        def deliver(result: Any) -> None:
            if self._closed:
                return
            if not current or epoch == self._epoch:
                then(result)

        def run() -> None:
            result = work()
            emit(self._gui, lambda: deliver(result))
        self._pool.submit(run)

    # --- following the daemon ----------------------------------------------

    @Slot(object)
    def on_event(self, event: dict[str, Any]) -> None:
        if self._closed:
            return  # queued before close(); its widgets are gone
        kind = str(event.get("type", ""))
        if kind == "approval.created":
            approval_id = str(event.get("id", ""))
            self.notify("pacd: approval requested", str(event.get("summary", "")))
            self.enqueue(approval_id)
        elif kind in ("approval.resolved", "approval.expired"):
            approval_id = str(event.get("id", ""))
            if approval_id in self.queue:
                self.queue.remove(approval_id)
            if self.dialog is not None and self.dialog.approval_id == approval_id:
                self.dialog.close_for(event.get("state", "expired") if kind ==
                                      "approval.resolved" else "expired")
            if kind == "approval.expired":
                self.notify("pacd: approval expired", f"approval {approval_id} expired")
        elif kind == "container.state" and event.get("agent_state") not in (None, "running"):
            # Only the daemon's Podman watcher names an agent: a change pacd did not
            # make (a start or stop the owner asked for carries no agent_state).
            self.notify("pacd: container stopped unexpectedly",
                        f"agent {event.get('agent')} of container {event.get('name')} is "
                        f"{event.get('agent_state')} (not stopped by pacd)",
                        QSystemTrayIcon.MessageIcon.Warning)
        elif kind in ("audit.untrusted", "audit.checkpoint_error"):
            self.notify("pacd: audit problem", str(event.get("message") or
                                                   event.get("found") or kind),
                        QSystemTrayIcon.MessageIcon.Critical)
        elif kind == "audit.appended":
            if self.audit_view is not None:
                self.audit_view.append(event)
            action = str(event.get("action", ""))
            if action.startswith(STATE_ACTIONS):
                self.refresh()
            return
        if kind in STATE_EVENTS:
            self.refresh()

    @Slot(str, str)
    def on_lost(self, code: str, message: str) -> None:
        if self._closed:
            return
        if code in AUDIT_PROBLEMS:
            self._apply(TrayState(reachable=True, problem=code, error=message))
            return
        # Whatever is on its way from the daemon that is gone is stale: a refresh
        # finishing now would mark a dead daemon reachable, a detail fetch would
        # open a dialog after the loss (both seen under load). Drop them.
        self._epoch += 1
        self._refreshing = self._stale = False
        unanswered = set(self.queue)
        self.queue.clear()  # before the dialog closes: it must not open the next one
        if isinstance(self.dialog, ApprovalDialog):
            unanswered.add(self.dialog.approval_id)
            self.dialog.close_for("daemon lost")
        self.dialog = None  # also the placeholder of a detail fetch in flight
        # Not decided by the owner: offered again once the daemon is back.
        self._seen -= unanswered
        self._apply(TrayState(reachable=False, error=message))

    @Slot()
    def refresh(self) -> None:
        """Fetch status and approvals once; a refresh asked for meanwhile runs after it."""
        if self._refreshing:
            self._stale = True
            return
        self._refreshing = True
        self._background(lambda: fetch_state(self.client), self._refreshed, current=True)

    def _refreshed(self, state: TrayState) -> None:
        self._refreshing = False
        self._apply(state)
        for item in state.pending:
            self.enqueue(str(item.get("id")))
        if self._stale:
            self._stale = False
            self.refresh()

    def _apply(self, state: TrayState) -> None:
        self.state = state
        self.icon.setIcon(self._icon(state.icon_name, len(state.pending)
                                     if state.icon_name == "pacd-waiting" else 0))
        self.icon.setToolTip(plain_tooltip(state.headline))
        self._rebuild_menu()
        emit(self.state_changed, state)

    # --- the menu -----------------------------------------------------------

    def _rebuild_menu(self) -> None:
        self.menu.clear()
        head = QAction(menu_text(self.state.headline), self.menu)
        head.setEnabled(False)
        self.menu.addAction(head)
        if self.state.demo_enrolled:
            demo = QAction("demo key — not secure", self.menu)
            demo.setEnabled(False)
            self.menu.addAction(demo)
        self.menu.addSeparator()
        if not self.state.reachable:
            start = QAction("Start daemon", self.menu)
            start.triggered.connect(self.start_daemon)
            self.menu.addAction(start)
        pending = self.state.pending
        approvals = self.menu.addMenu(f"Approvals ({len(pending)})")
        approvals.setEnabled(self.state.reachable and bool(pending))
        for item in pending:
            action = QAction(menu_text(str(item.get("summary", item.get("id")))), approvals)
            approval_id = str(item.get("id"))
            action.triggered.connect(lambda _=False, a=approval_id: self.review(a))
            approvals.addAction(action)
        self._containers_menu()
        self.menu.addSeparator()
        audit = QAction("Audit log…", self.menu)
        audit.setEnabled(self.state.reachable)
        audit.triggered.connect(self.show_audit)
        self.menu.addAction(audit)
        login = QAction("Start at login", self.menu)
        login.setCheckable(True)
        login.setChecked(autostart.enabled())
        login.toggled.connect(autostart.set_enabled)
        self.menu.addAction(login)
        self.menu.addSeparator()
        quit_action = QAction("Quit tray", self.menu)
        quit_action.triggered.connect(QApplication.quit)
        self.menu.addAction(quit_action)

    def _containers_menu(self) -> None:
        """Each container with its agents and plugins and their states (read-only)."""
        containers = self.state.containers
        menu = self.menu.addMenu(f"Containers ({len(containers)})")
        menu.setEnabled(self.state.reachable and bool(containers))
        for container in containers:
            sub = menu.addMenu(menu_text(f"{container.get('name')} — {container.get('state')}"))
            lines = [f"agent {a.get('name')}: {a.get('state')}"
                     for a in container.get("agents") or [] if isinstance(a, dict)]
            lines += [f"plugin {p.get('name')} {p.get('version')} ({p.get('agent')}): "
                      f"{p.get('state')}"
                      for p in container.get("plugins") or [] if isinstance(p, dict)]
            for line in lines or ["no agents"]:
                entry = QAction(menu_text(line), sub)
                entry.setEnabled(False)
                sub.addAction(entry)
            sub.addSeparator()
            cid, name = str(container.get("id")), str(container.get("name"))
            state = str(container.get("state"))
            for verb, title, usable in (("start", "Start", state != "running"),
                                        ("stop", "Stop", state in ("running", "partial"))):
                action = QAction(title, sub)
                action.setEnabled(usable)
                action.triggered.connect(
                    lambda _=False, c=cid, n=name, v=verb: self.container_action(c, n, v))
                sub.addAction(action)

    # --- container actions -----------------------------------------------------

    def _action_client(self) -> Client:
        """The tray's client, carrying the session a ceremony in the tray earned, if any."""
        if self.session_token is None:
            return self.client
        return Client(self.client.config, socket_path=self.client.socket_path,
                      token=self.session_token, timeout=self.client.timeout,
                      use_token_cache=False)

    def container_action(self, container_id: str, name: str, verb: str, *,
                         retried: bool = False) -> None:
        """Start or stop a container; when the daemon asks for presence, prove it in a
        :class:`PresenceDialog` and try once more."""
        client = self._action_client()

        def post() -> dict[str, Any] | PacdError:
            try:
                answer: dict[str, Any] = client.request(
                    "POST", f"/v1/containers/{container_id}/{verb}")
            except PacdError as exc:
                return exc
            return answer

        def after(result: dict[str, Any] | PacdError) -> None:
            if not isinstance(result, PacdError):
                emit(self.action_done, container_id, verb, "")
                return
            level = result.extra.get("required_level")
            if result.code in SESSION_ERRORS and isinstance(level, str) and not retried:
                self._prove(level, f"{verb.capitalize()} container {name}",
                            lambda: self.container_action(container_id, name, verb,
                                                          retried=True),
                            lambda: emit(self.action_done, container_id, verb, "cancelled"))
                return
            self.notify(f"pacd: could not {verb} {name}", result.message,
                        QSystemTrayIcon.MessageIcon.Warning)
            emit(self.action_done, container_id, verb, result.code)

        self._background(post, after)

    def _prove(self, level: str, what: str, then: Callable[[], None],
               otherwise: Callable[[], None]) -> None:
        dialog = PresenceDialog(self.client, level, what,
                                self.authenticator,
                                fingerprint=self.state.fingerprint,
                                touchid=self.state.touchid)
        self.presence_dialog = dialog

        def proved(token: dict[str, Any] | None) -> None:
            if token is None:
                otherwise()
                return
            self.session_token = str(token["token"])
            self.client.save_token(token)  # the CLI's cache too, where the tray uses it
            then()

        dialog.proved.connect(proved)
        dialog.start()

    @Slot()
    def show_audit(self) -> None:
        if self.audit_view is None:
            self.audit_view = AuditView(self.client, self._background)
            self.audit_view.load()
        self.audit_view.show()
        self.audit_view.raise_()

    @Slot()
    def start_daemon(self) -> None:
        try:
            start_daemon(spawn=self.spawn)
        except OSError as exc:
            plain_message_box(f"could not start the daemon: {exc}").exec()
            return
        self.follower.retry_now()

    # --- approvals ----------------------------------------------------------

    def enqueue(self, approval_id: str) -> None:
        """Queue an approval's dialog (once); dialogs come one after another."""
        if not approval_id or approval_id in self._seen:
            return
        self._seen.add(approval_id)
        self.queue.append(approval_id)
        self._next()

    def review(self, approval_id: str) -> None:
        """Open (again) an approval the owner picked from the menu."""
        if self.dialog is not None and self.dialog.approval_id == approval_id:
            self.dialog.raise_()
            return
        if approval_id in self.queue:
            self.queue.remove(approval_id)
        self.queue.insert(0, approval_id)
        self._seen.add(approval_id)
        self._next()

    def _next(self) -> None:
        if self.dialog is not None or not self.queue:
            return
        approval_id = self.queue[0]

        def fetch() -> dict[str, Any] | PacdError:
            try:
                detail: dict[str, Any] = self.client.request("GET",
                                                             f"/v1/approvals/{approval_id}")
            except PacdError as exc:
                return exc
            return detail

        self.dialog = _PENDING  # one fetch at a time
        self._background(fetch, lambda d: self._show(approval_id, d), current=True)

    def _show(self, approval_id: str, detail: dict[str, Any] | PacdError) -> None:
        self.dialog = None
        if approval_id in self.queue:
            self.queue.remove(approval_id)
        else:
            self._next()  # resolved while its detail was on its way
            return
        if isinstance(detail, PacdError) or detail.get("state") != "pending":
            self._next()
            return
        dialog = ApprovalDialog(detail, self.client, self.authenticator,
                                arm_delay_ms=self.arm_delay_ms)
        dialog.deny_requested.connect(self.deny)
        dialog.decided.connect(self._decided)
        self.dialog = dialog
        dialog.show()
        emit(self.dialog_shown, approval_id)

    @Slot(str, str)
    def _decided(self, approval_id: str, outcome: str) -> None:
        self.dialog = None
        if outcome == "later":
            # Still pending: it stays in the menu; the menu entry opens it again.
            pass
        self._next()

    @Slot(str)
    def deny(self, approval_id: str) -> None:
        def post() -> PacdError | None:
            try:
                self.client.request("POST", f"/v1/approvals/{approval_id}/deny", {})
            except PacdError as exc:
                return exc
            return None

        def after(error: PacdError | None) -> None:
            if error is not None:
                self.notify("pacd: deny failed", error.message,
                            QSystemTrayIcon.MessageIcon.Warning)

        self._background(post, after)

    def close(self) -> None:
        self._closed = True
        self.follower.stop()
        dialog = self.dialog  # close_for() reports back through _decided, which forgets it
        if isinstance(dialog, ApprovalDialog):
            dialog.close_for("tray closed")  # also cancels a ceremony in progress
        if self.presence_dialog is not None:
            self.presence_dialog.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.icon.hide()
        # A request still running on a worker may hold the last reference to this
        # tray: its widgets and its icon are destroyed here, on the GUI thread, not
        # wherever the tray's wrapper happens to be freed (see gui.collector).
        # The stubs type the menu as QMenu; Qt takes a null one (no menu).
        self.icon.setContextMenu(None)  # type: ignore[arg-type]
        for qt_object in (dialog, self.presence_dialog, self.audit_view, self.menu,
                          self.icon):
            if isinstance(qt_object, QObject) and shiboken6.isValid(qt_object):
                shiboken6.delete(qt_object)
        self.dialog = self.presence_dialog = self.audit_view = None


#: stands in for the dialog while its detail is fetched, so only one is fetched at a time
_PENDING: Any = object()


def main() -> int:
    app = QApplication(sys.argv)
    app.setQuitOnLastWindowClosed(False)
    client = Client()
    instance = SingleInstance(client.socket_path.parent / "tray.sock")
    if not instance.claim():
        print("pacd-tray: already running; asked it to show itself", file=sys.stderr)
        return 0
    if not QSystemTrayIcon.isSystemTrayAvailable():
        print("pacd-tray: no system tray on this desktop; use the pacd CLI", file=sys.stderr)
        return 1
    collector = GuiThreadCollector()
    collector.start()
    tray = Tray(client)
    instance.raise_requested.connect(lambda: tray.icon.contextMenu().popup(
        tray.icon.geometry().center()))
    tray.icon.show()
    code = app.exec()
    tray.close()
    if not wait_for_ceremonies():
        print("pacd-tray: a cancelled key ceremony had not ended 5 s after quitting",
              file=sys.stderr)
    collector.stop()
    instance.release()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
