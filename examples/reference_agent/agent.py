#!/usr/bin/env python3
"""A reference pacd agent: talks HTTP/1.1 to its agent socket, standard library only.

Inside an agent container the socket is at ``/run/pacd/agent.sock`` (the path
is also in ``PACD_AGENT_SOCKET``). The socket *is* the agent's identity: there
is no token to send, the daemon knows who is calling by which socket the
request arrived on.

    python3 /agent/agent.py whoami
    python3 /agent/agent.py put personal note hello      (value "-" reads stdin)
    python3 /agent/agent.py get personal note
    python3 /agent/agent.py delete personal note
    python3 /agent/agent.py send writer '{"text": "hi"}'
    python3 /agent/agent.py inbox
    python3 /agent/agent.py serve                         (whoami, then print messages)

Every command prints one JSON document on stdout. Exit status: 0 success,
1 the daemon refused (the JSON has ``status`` and ``error``), 2 usage,
3 the socket cannot be reached.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import sys
import time
from typing import Any
from urllib.parse import quote

DEFAULT_SOCKET = "/run/pacd/agent.sock"
USAGE = __doc__.split("\n\n")[2] if __doc__ else ""


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket (the Host header is a placeholder)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AgentError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class AgentClient:
    """The agent-socket routes of API.md."""

    def __init__(self, path: str | None = None, timeout: float = 30.0) -> None:
        self.path = path or os.environ.get("PACD_AGENT_SOCKET") or DEFAULT_SOCKET
        self.timeout = timeout

    def request(self, method: str, url: str, body: bytes | None = None,
                content_type: str = "application/octet-stream",
                timeout: float | None = None) -> tuple[int, bytes, str]:
        conn = UnixHTTPConnection(self.path, timeout or self.timeout)
        try:
            headers = {"Content-Type": content_type} if body is not None else {}
            conn.request(method, url, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read(), response.getheader("Content-Type") or ""
        finally:
            conn.close()

    def _ok(self, method: str, url: str, body: bytes | None = None,
            content_type: str = "application/octet-stream",
            timeout: float | None = None) -> tuple[int, bytes]:
        status, data, ctype = self.request(method, url, body, content_type, timeout)
        if status >= 400:
            raise AgentError(status, _decode(data, ctype))
        return status, data

    @staticmethod
    def _data_url(concern: str, key: str) -> str:
        return f"/v1/data/{quote(concern, safe='')}/{quote(key, safe='')}"

    def whoami(self) -> Any:
        _, data = self._ok("GET", "/v1/whoami")
        return json.loads(data)

    def put(self, concern: str, key: str, value: bytes) -> int:
        status, _ = self._ok("PUT", self._data_url(concern, key), value)
        return status

    def get(self, concern: str, key: str) -> bytes:
        _, data = self._ok("GET", self._data_url(concern, key))
        return data

    def delete(self, concern: str, key: str) -> int:
        status, _ = self._ok("DELETE", self._data_url(concern, key))
        return status

    def send(self, agent: str, message: Any) -> Any:
        body = json.dumps(message).encode("utf-8")
        _, data = self._ok("POST", f"/v1/agents/{quote(agent, safe='')}/messages", body,
                           "application/json")
        return json.loads(data) if data else None

    def inbox(self, timeout: float = 60.0) -> Any:
        _, data = self._ok("GET", "/v1/messages", timeout=timeout)
        return json.loads(data) if data else []


def _decode(data: bytes, content_type: str) -> Any:
    if "json" in content_type:
        try:
            return json.loads(data)
        except ValueError:
            pass
    return _value(data)


def _value(data: bytes) -> dict[str, str]:
    """Bytes as JSON: text when it is UTF-8, else base64."""
    try:
        return {"value": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"value_base64": base64.b64encode(data).decode("ascii")}


def _print(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
    sys.stdout.flush()


def serve(client: AgentClient) -> int:
    """Announce who we are, then print every message that arrives, forever."""
    delay = 0.5
    while True:
        try:
            _print({"whoami": client.whoami()})
            break
        except OSError:
            time.sleep(delay)  # the daemon may still be creating the socket
            delay = min(delay * 2, 10.0)
    while True:
        try:
            messages = client.inbox() or []
            for message in messages:
                _print({"message": message})
            if not messages:
                time.sleep(0.5)  # an empty answer must not turn into a busy loop
        except (OSError, http.client.HTTPException):
            time.sleep(1.0)
        except AgentError as exc:
            _print({"status": exc.status, "error": exc.body})
            time.sleep(1.0)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stderr.write(USAGE + "\n")
        return 2 if not argv else 0
    client = AgentClient()
    command, args = argv[0], argv[1:]
    arity = {"whoami": 0, "get": 2, "delete": 2, "put": 3, "send": 2, "inbox": 0, "serve": 0}
    if command not in arity or len(args) != arity[command]:
        sys.stderr.write(USAGE + "\n")
        return 2
    try:
        if command == "whoami":
            _print(client.whoami())
        elif command == "put":
            value = sys.stdin.buffer.read() if args[2] == "-" else args[2].encode("utf-8")
            status = client.put(args[0], args[1], value)
            _print({"concern": args[0], "key": args[1], "stored": True, "status": status})
        elif command == "get":
            _print({"concern": args[0], "key": args[1], **_value(client.get(args[0], args[1]))})
        elif command == "delete":
            status = client.delete(args[0], args[1])
            _print({"concern": args[0], "key": args[1], "deleted": True, "status": status})
        elif command == "send":
            try:
                message = json.loads(args[1])
            except ValueError:
                message = {"text": args[1]}
            _print({"to": args[0], "sent": True, "response": client.send(args[0], message)})
        elif command == "inbox":
            _print({"messages": client.inbox()})
        else:
            return serve(client)
    except AgentError as exc:
        _print({"status": exc.status, "error": exc.body})
        return 1
    except (OSError, http.client.HTTPException) as exc:
        _print({"error": {"code": "socket_unreachable",
                          "message": f"{client.path}: {exc}"}})
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
