"""The Text Formatter: a complete pacd plugin in one standard-library Python file.

pacd runs a plugin as its own hardened container (read-only root, uid 1000,
no capabilities, no network) and mounts a private directory at
/run/pacd-plugin. The plugin serves HTTP/1.1 on a Unix socket it creates
there, /run/pacd-plugin/plugin.sock (also in PACD_PLUGIN_SOCKET), and answers
the endpoints of its PluginAPISchema — here the seed's one, POST /format:

    request:  {"text": "  hello   world ", "style": "title"}
    response: {"text": "Hello World", "style": "title", "caller": "<container>/<agent>"}

Styles: collapse (the default: runs of white space become one space, ends
trimmed), upper, lower, title. An optional "delay" (seconds, at most 60)
holds the answer back that long, to see how callers fare with a slow plugin.
GET /health answers {"ok": true}.

The plugin's own socket to pacd is /run/pacd-plugin/pacd.sock
(PACD_DAEMON_SOCKET): GET /v1/whoami, and the data routes of the agent socket
for the concerns of the agent it was approved for, within its maxDataAccess.
From inside the container:

    python3 /plugin/plugin.py whoami
    python3 /plugin/plugin.py get CONCERN KEY
    python3 /plugin/plugin.py put CONCERN KEY VALUE

each prints {"status": HTTP status, "body": the answer (JSON or text)}.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import signal
import socketserver
import sys
import time
from typing import Any

SOCKET = os.environ.get("PACD_PLUGIN_SOCKET", "/run/pacd-plugin/plugin.sock")
DAEMON = os.environ.get("PACD_DAEMON_SOCKET", "/run/pacd-plugin/pacd.sock")
MAX_BODY = 64 * 1024
STYLES = {
    "collapse": lambda t: " ".join(t.split()),
    "upper": lambda t: " ".join(t.split()).upper(),
    "lower": lambda t: " ".join(t.split()).lower(),
    "title": lambda t: " ".join(w.capitalize() for w in t.split()),
}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def address_string(self) -> str:
        return "plugin"

    def _reply(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        self._reply(status, {"error": {"code": code, "message": message}})

    def do_GET(self) -> None:
        if self.path == "/health":
            self._reply(200, {"ok": True})
        else:
            self._error(404, "not_found", f"no endpoint GET {self.path}")

    def do_POST(self) -> None:
        if self.path != "/format":
            self._error(404, "not_found", f"no endpoint POST {self.path}")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._error(413, "too_large", f"the body may be at most {MAX_BODY} bytes")
            self.close_connection = True
            return
        try:
            doc = json.loads(self.rfile.read(length) or b"{}")
            text, style = doc["text"], doc.get("style", "collapse")
            delay = doc.get("delay", 0)
            if not isinstance(text, str) or style not in STYLES:
                raise ValueError
            if not isinstance(delay, int | float) or not 0 <= delay <= 60:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            self._error(400, "invalid_request",
                        'expected {"text": STRING, "style": ' + "|".join(STYLES)
                        + ', "delay"?: SECONDS}')
            return
        if delay:
            time.sleep(delay)
        # Who is calling, as pacd says (never the agent itself): "<container>/<agent>".
        self._reply(200, {"text": STYLES[style](text), "style": style,
                          "caller": self.headers.get("X-Pacd-Agent", "")})


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("pacd", timeout=30)
        self._path = path

    def connect(self) -> None:
        import socket

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def ask_pacd(args: list[str]) -> int:
    """One call on the plugin's own socket to pacd; prints {"status", "body"}."""
    if args[:1] == ["whoami"] and len(args) == 1:
        method, url, body = "GET", "/v1/whoami", None
    elif args[:1] == ["get"] and len(args) == 3:
        method, url, body = "GET", f"/v1/data/{args[1]}/{args[2]}", None
    elif args[:1] == ["put"] and len(args) == 4:
        method, url, body = "PUT", f"/v1/data/{args[1]}/{args[2]}", args[3].encode()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    conn = _UnixHTTP(DAEMON)
    conn.request(method, url, body=body)
    reply = conn.getresponse()
    raw = reply.read().decode("utf-8", "replace")
    try:
        shown: Any = json.loads(raw)
    except ValueError:
        shown = raw
    print(json.dumps({"status": reply.status, "body": shown}))
    return 0 if reply.status < 300 else 1


def main() -> int:
    if len(sys.argv) > 1:
        return ask_pacd(sys.argv[1:])
    if os.path.lexists(SOCKET):
        os.unlink(SOCKET)  # left by this plugin's previous run
    server = Server(SOCKET, Handler)
    # The daemon runs as another uid: connecting needs write permission on the socket.
    os.chmod(SOCKET, 0o666)  # noqa: S103 - the directory is private to this plugin
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    finally:
        os.unlink(SOCKET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
