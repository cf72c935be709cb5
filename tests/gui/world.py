"""A real daemon with an owner whose software key (tests/softauthn.py) has a PIN."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from fido2.client import UserInteraction

from gui.ceremony import Authenticator
from gui.tray import Tray
from pacd.client import Client
from pacd.presence.client import authenticate, register
from tests.integration.harness import DaemonProcess, Silent, plugin, spec_with_plugins
from tests.softauthn import SoftAuthenticator

PIN = "4821"


class CountingClient(Client):
    """The tray's own client, counting what it sends (``GET /v1/status`` is not audited)."""

    def __init__(self, base: Client) -> None:
        super().__init__(base.config, socket_path=base.socket_path, timeout=base.timeout,
                         use_token_cache=False)
        self.sent: list[str] = []

    def request(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        self.sent.append(f"{method} {path}")
        return super().request(method, path, body, auth=auth)


class HeldClient(CountingClient):
    """Answers of requests whose ``METHOD path`` starts with one of ``holding`` are held
    back (after the daemon answered) until :meth:`release`: a slow tray under load."""

    def __init__(self, base: Client, holding: tuple[str, ...]) -> None:
        super().__init__(base)
        self.holding = holding
        self.held = 0
        self._release = threading.Event()

    def release(self) -> None:
        self._release.set()

    def request(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        answer = super().request(method, path, body, auth=auth)
        if f"{method} {path}".startswith(self.holding) and not self._release.is_set():
            self.held += 1
            self._release.wait(60)
        return answer


class World:
    def __init__(self, daemon: DaemonProcess, *, owner: bool = True) -> None:
        self.daemon = daemon
        self.key = SoftAuthenticator(uv_builtin=False, pin=PIN)
        if owner:
            self._enrol()

    def _enrol(self) -> None:
        client = self.daemon.client()
        client.request("POST", "/v1/owner", {"name": "Alice"})
        begin = client.request("POST", "/v1/owner/credentials/begin", {"label": "pin key"})
        credential = register(begin["publicKey"], begin["origin"], Silent(PIN), device=self.key)
        client.request("POST", "/v1/owner/credentials/complete",
                       {"credential": credential, "registration_id": begin["registration_id"]})
        begin = client.request("POST", "/v1/sessions/begin", {"level": "biometric"})
        signed = authenticate(begin["publicKey"], begin["origin"], Silent(PIN), device=self.key)
        token = client.request("POST", "/v1/sessions/complete",
                               {"session_id": begin["session_id"], "credential": signed})["token"]
        self.authed = self.daemon.client(token)
        self.container = self.authed.request("POST", "/v1/containers",
                                             spec_with_plugins())["id"]

    def queue_plugin(self, version: str = "1.0.0", name: str | None = None) -> str:
        schema = plugin("text-formatter") | {"version": version}
        if name is not None:
            schema["name"] = name
        queued = self.authed.request(
            "POST", f"/v1/containers/{self.container}/plugins",
            {"agent": "writer", "schema": schema})
        return str(queued["approval_id"])

    def state(self, approval_id: str) -> str:
        return str(self.daemon.client().request("GET", f"/v1/approvals/{approval_id}")["state"])

    def decisions(self, action: str, approval_id: str) -> list[str]:
        return [e["decision"] for e in self.daemon.audit()
                if e["action"] == action and e["target"] == approval_id]

    def authenticator(self, pin: str | None = PIN) -> Authenticator:
        """The ceremony with the software key; its PIN is typed into the dialog's panel
        unless ``pin`` is given here."""

        def run(options: Mapping[str, Any], origin: str, interaction: UserInteraction,
                cancel: threading.Event, timeout_s: float) -> dict[str, Any]:
            return authenticate(options, origin, interaction, device=self.key,
                                cancel=cancel, timeout_s=timeout_s)

        return run

    def tray(self, authenticator: Authenticator | None = None, arm_delay_ms: int = 1000,
             client: CountingClient | None = None) -> tuple[Tray, CountingClient]:
        client = client or CountingClient(self.daemon.client())
        return Tray(client, authenticator or self.authenticator(),
                    arm_delay_ms=arm_delay_ms), client


def wait_reachable(qtbot: Any, tray: Tray, reachable: bool = True,
                   timeout: int = 30_000) -> None:
    qtbot.waitUntil(lambda: tray.state.reachable is reachable, timeout=timeout)

