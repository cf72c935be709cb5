"""Run the real daemon as a subprocess on a private socket and talk to it.

Each :class:`DaemonProcess` has its own ``PACD_HOME``, ``PACD_SOCKET`` and
config file, so any number run side by side. Presence ceremonies run
in-process with the software CTAP2 authenticator through pacd's real client
ceremony code, and their JSON goes over the socket like any client's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fido2.client import UserInteraction

from pacd.client import Client
from pacd.config import load_config
from pacd.errors import DaemonUnavailable
from pacd.presence.client import authenticate, register
from tests.softauthn import SoftAuthenticator

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


class Silent(UserInteraction):
    def __init__(self, pin: str | None = None) -> None:
        self.pin = pin

    def prompt_up(self) -> None:
        pass

    def request_pin(self, permissions: Any, rd_id: str | None) -> str | None:
        return self.pin

    def request_uv(self, permissions: Any, rd_id: str | None) -> bool:
        return True


class DaemonProcess:
    def __init__(self, base: Path, settings: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.base = base
        self.home = base / "home"
        self.socket = base / "run" / "pacd.sock"
        self.config_path = base / "config.toml"
        lines = [f"{k} = {json.dumps(v)}" for k, v in (settings or {}).items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        self.env = {
            **os.environ,
            "PACD_HOME": str(self.home),
            "PACD_SOCKET": str(self.socket),
            "PACD_CONFIG": str(self.config_path),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.env.pop("PACD_TOKEN", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = base / "daemon.log"

    # --- process ----------------------------------------------------------

    def start(self, wait: bool = True, extra_args: list[str] | None = None,
              **popen: Any) -> DaemonProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pacd", "daemon", *(extra_args or [])],
            env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, **popen)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.client().status()
                return
            except DaemonUnavailable:
                time.sleep(0.05)
        raise TimeoutError(f"daemon not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        return rc

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- clients ------------------------------------------------------------

    def client(self, token: str | None = None) -> Client:
        config = load_config(self.env)
        return Client(config, token=token, use_token_cache=False, timeout=30)

    def cli(self, *args: str, input_: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pacd", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout, input=input_,
                              check=False)

    def audit(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.client().request("GET", f"/v1/audit?after={after}&limit=1000")
            entries += page["entries"]
            if len(page["entries"]) < 1000:
                return entries
            after = entries[-1]["seq"]


class Owner:
    """The human side: a software key and the tokens its ceremonies earned."""

    def __init__(self, daemon: DaemonProcess, device: SoftAuthenticator | None = None) -> None:
        self.daemon = daemon
        self.device = device or SoftAuthenticator()
        self.token: str | None = None

    def init(self, name: str = "Alice") -> dict[str, Any]:
        result: dict[str, Any] = self.daemon.client().request("POST", "/v1/owner",
                                                              {"name": name})
        return result

    def enroll(self, label: str = "soft key",
               device: SoftAuthenticator | None = None) -> dict[str, Any]:
        """Register a key: the first is enrolled (CredentialView); any later one
        comes back as a queued ``credential.add`` approval (ApprovalAccepted)."""
        c = self.daemon.client(self.token)
        begin = c.request("POST", "/v1/owner/credentials/begin", {"label": label})
        credential = register(begin["publicKey"], begin["origin"], Silent(),
                              device=device or self.device)
        done: dict[str, Any] = c.request("POST", "/v1/owner/credentials/complete", {
            "credential": credential, "registration_id": begin["registration_id"]})
        return done

    def add_key(self, label: str, device: SoftAuthenticator) -> dict[str, Any]:
        """Enrol a further key the only way there is: a biometric session to begin,
        then the ``credential.add`` approval signed with this owner's enrolled key."""
        if self.token is None:
            self.session("biometric")
        queued = self.enroll(label, device)
        return self.approve(str(queued["approval_id"]))

    def approve(self, approval_id: str) -> dict[str, Any]:
        done: dict[str, Any] = self.daemon.client().request(
            "POST", f"/v1/approvals/{approval_id}/approve",
            {"credential": self.sign_approval(approval_id)})
        return done

    def session(self, level: str = "biometric") -> str:
        c = self.daemon.client()
        begin = c.request("POST", "/v1/sessions/begin", {"level": level})
        credential = authenticate(begin["publicKey"], begin["origin"], Silent(),
                                  device=self.device)
        token = c.request("POST", "/v1/sessions/complete",
                          {"session_id": begin["session_id"], "credential": credential})
        self.token = str(token["token"])
        return self.token

    def sign_approval(self, approval_id: str) -> dict[str, Any]:
        detail = self.daemon.client().request("GET", f"/v1/approvals/{approval_id}")
        return authenticate(detail["publicKey"], detail["origin"], Silent(), device=self.device)

    def authed(self) -> Client:
        return self.daemon.client(self.token)


def spec_with_plugins() -> dict[str, Any]:
    """The API.md example spec with a custom policy that allows plugins."""
    spec: dict[str, Any] = json.loads((EXAMPLES / "specs" / "home.json").read_text())
    spec["name"] = "studio"
    spec["policy"] = {"allow_plugins": True}
    return spec


def plugin(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / "plugins" / f"{name}.json").read_text())
    return data


class EventCollector:
    """Reads ``GET /v1/events`` on a thread and keeps every event."""

    def __init__(self, client: Client) -> None:
        self.events: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._client = client
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(10), "event stream did not start"

    def _run(self) -> None:
        for event in self._iter():
            self.events.append(event)
            if event["type"] == "subscribed":
                self._ready.set()

    def _iter(self) -> Iterator[dict[str, Any]]:
        try:
            yield from self._client.events(timeout=120)
        except (OSError, DaemonUnavailable):
            return

    def wait_for(self, type_: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events):
                if event["type"] == type_ and all(event.get(k) == v for k, v in match.items()):
                    return event
            time.sleep(0.02)
        raise AssertionError(f"no {type_} event {match}; got {[e['type'] for e in self.events]}")


def held_connection(path: object) -> socket.socket:
    """A keep-alive connection the daemon has accepted and counted: one request answered."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer or not _answer_complete(answer):
        chunk = s.recv(65536)
        assert chunk, "the daemon closed a connection within the limit"
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
    return s


def _answer_complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
              if line.lower().startswith(b"content-length")]
    return bool(length) and len(body) >= length[0]
