"""The one client of the owner socket, shared by the CLI, the tray and scripts.

Synchronous HTTP/1.1 over the owner socket (``http.client`` over a Unix
socket; on Windows over the owner named pipe, see :mod:`pacd.transport`).
Error bodies come back as the matching :mod:`pacd.errors` class, so callers
handle ``PresenceRequired`` or ``NotFound`` exactly as the daemon raised them.

Session tokens: after a presence ceremony the token is cached in
``<socket dir>/client-token.json`` (mode 0600, inside the daemon's private
0700 socket directory under the runtime dir), so consecutive CLI commands
reuse one session until it expires. ``PACD_TOKEN`` in the environment takes
precedence (for scripts that obtained a token themselves).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import http.client
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pacd import transport
from pacd.config import Config, load_config
from pacd.core.canonical import digest
from pacd.errors import (
    ConfigError,
    DaemonUnavailable,
    InvalidRequest,
    PacdError,
    PresenceRequired,
    error_for_code,
)
from pacd.private_file import refuse_unless_ours, write_private

TOKEN_FILE = "client-token.json"
START_HINT = "start it with `pacd daemon` (foreground) or `systemctl --user start pacd`"


def _error_from(status: int, data: Any) -> PacdError:
    body = data.get("error") if isinstance(data, dict) else None
    if not isinstance(body, dict):
        return PacdError(f"the daemon answered HTTP {status} without an error body")
    code = str(body.get("code", "internal_error"))
    message = str(body.get("message", f"HTTP {status}"))
    extra = {k: v for k, v in body.items() if k not in ("code", "message")}
    cls = error_for_code(code)
    exc: PacdError
    try:
        if issubclass(cls, PresenceRequired):
            exc = cls(message, required_level=str(extra.pop("required_level", "")), **extra)
        elif issubclass(cls, InvalidRequest):
            errors = extra.pop("errors", None)
            exc = cls(message, **extra)
            if isinstance(errors, list):
                # As the daemon sent it: already capped, with its own "and N more".
                exc.errors = [str(e) for e in errors]
                exc.extra["errors"] = exc.errors
        else:
            exc = cls(message, **extra)
    except TypeError:  # a class with a fixed signature (e.g. IntegrityError)
        exc = cls(message)
    return exc


def stream_error(line: dict[str, Any]) -> PacdError:
    """The error a stream's ``{"type": "error", "error": {code, message}}`` line reports,
    as its PacdError class (so it has the same exit code as a refused request)."""
    return _error_from(200, {"error": line.get("error")})


def _b64url_decode(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError("expected base64url text")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def approval_challenge_matches(detail: Any) -> bool:
    """Whether the request options of an approval sign exactly the payload it shows.

    An approval's challenge is the SHA-256 of the canonical JSON of its payload
    (see :mod:`pacd.approvals`). The key signs ``publicKey.challenge`` while the
    owner reads ``payload``: before signing, a client checks that both that
    challenge and the advertised ``challenge`` are the payload's digest, so
    what is signed is what was shown. Anything missing or malformed is a no.
    """
    try:
        expected = digest(detail["payload"])
        options = detail["publicKey"]
        signed = _b64url_decode(options["challenge"])
        advertised = _b64url_decode(detail["challenge"])
    except (KeyError, TypeError, ValueError, binascii.Error):
        return False
    return hmac.compare_digest(signed, expected) and hmac.compare_digest(advertised, expected)


def _parse_time(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


class _Unsent(Exception):
    """The request could not be sent and the daemon left no answer to read."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _send(conn: http.client.HTTPConnection, method: str, path: str, data: bytes | None,
          headers: dict[str, str]) -> None:
    """Send one request, also when the daemon refuses it before taking all of its body.

    The daemon answers a refusal (no token, too large) at once and reads at most
    64 KiB of a body it refused: past that it closes the connection, and the rest
    of the body meets a broken pipe here. Its answer was sent before the close
    and is waiting on the socket, so it is read instead of reporting a daemon
    that is not there.
    """
    try:
        conn.request(method, path, body=data, headers=headers)
    except (BrokenPipeError, ConnectionResetError) as exc:
        if conn.sock is None:
            raise _Unsent(exc) from None
        # The head went out (http.client counts the request as sent): getresponse
        # reads what the daemon answered, or fails as a closed connection would.


class Client:
    def __init__(self, config: Config | None = None, *, socket_path: Path | None = None,
                 token: str | None = None, timeout: float = 60.0,
                 use_token_cache: bool = True, platform: str = sys.platform) -> None:
        self.config = config or load_config()
        #: which owner transport this client dials (``pacd.transport.kind``)
        self.platform = platform
        self.socket_path = Path(socket_path or self.config.socket)
        self.timeout = timeout
        self._explicit_token = token or os.environ.get("PACD_TOKEN") or None
        self.use_token_cache = use_token_cache

    # --- token cache ----------------------------------------------------------

    @property
    def token_path(self) -> Path:
        return self.socket_path.parent / TOKEN_FILE

    def cached_token(self) -> dict[str, Any] | None:
        if not self.use_token_cache:
            return None
        try:
            st = os.lstat(self.token_path)
            # not ours or open to others: do not trust it (on Windows: owner SID and DACL)
            refuse_unless_ours(self.token_path, st, "token cache", "", open_bits=0o077,
                               mode=0o600, platform=self.platform)
            data = json.loads(self.token_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, ConfigError):
            return None
        if not isinstance(data, dict):
            return None
        if _parse_time(str(data.get("expires_at", ""))) <= time.time():
            return None
        return data

    def save_token(self, token: dict[str, Any]) -> None:
        if not self.use_token_cache:
            return
        # Through an exclusive temporary file: nothing that already sits in the
        # directory (a planted file or symlink) can receive the token.
        body = {k: token[k] for k in ("token", "level", "expires_at")}
        write_private(self.token_path, json.dumps(body).encode())

    def forget_token(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.token_path.unlink()

    def token(self) -> str | None:
        if self._explicit_token:
            return self._explicit_token
        cached = self.cached_token()
        return str(cached["token"]) if cached else None

    # --- requests -------------------------------------------------------------

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        # the Unix socket, or on Windows the owner pipe (pacd.transport chooses)
        return transport.connection(self.socket_path, timeout, self.platform)

    def _unavailable(self, exc: OSError) -> DaemonUnavailable:
        if transport.kind(self.platform) is transport.Kind.PIPE:
            why = f"cannot open the owner pipe: {exc}"
        elif isinstance(exc, FileNotFoundError) or not self.socket_path.exists():
            why = f"no daemon socket at {self.socket_path}"
        elif isinstance(exc, ConnectionRefusedError):
            why = f"nothing is listening on {self.socket_path} (a stale socket)"
        elif isinstance(exc, PermissionError):
            why = f"permission denied on {self.socket_path}"
        else:
            why = f"cannot reach {self.socket_path}: {exc}"
        return DaemonUnavailable(f"the pacd daemon is not reachable ({why}); {START_HINT}")

    def request(self, method: str, path: str, body: Any = None, *,
                auth: bool = True) -> Any:
        """Send one request; returns the decoded JSON body or raises a PacdError."""
        headers = {"Accept": "application/json"}
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        token = self.token() if auth else None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn = self._connection(self.timeout)
        try:
            try:
                _send(conn, method, path, data, headers)
                resp = conn.getresponse()
                raw = resp.read()
            except _Unsent as exc:
                raise self._unavailable(exc.cause) from None
            except OSError as exc:
                raise self._unavailable(exc) from None
            except http.client.HTTPException as exc:
                raise DaemonUnavailable(f"the daemon closed the connection: {exc!r}") from None
        finally:
            conn.close()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            raise PacdError(f"the daemon answered HTTP {resp.status} with non-JSON") from None
        if resp.status >= 400:
            error = _error_from(resp.status, parsed)
            if error.code in ("token_expired", "token_revoked") and not self._explicit_token:
                self.forget_token()
            raise error
        return parsed

    def events(self, timeout: float | None = None,
               opened: Callable[[socket.socket], None] | None = None
               ) -> Iterator[dict[str, Any]]:
        """Yield events from ``GET /v1/events`` until the daemon ends the stream.

        ``opened(sock)`` is called with the connected socket, so another thread
        can end a stream that waits without a timeout (``sock.shutdown``).
        """
        conn = self._connection(timeout)
        try:
            try:
                conn.connect()
                if opened is not None and conn.sock is not None:
                    # a socket, or on Windows a PipeStream: both have shutdown()
                    opened(conn.sock)
                conn.request("GET", "/v1/events", headers={"Accept": "application/x-ndjson"})
                resp = conn.getresponse()
            except OSError as exc:
                raise self._unavailable(exc) from None
            if resp.status >= 400:
                raw = resp.read()
                raise _error_from(resp.status, json.loads(raw) if raw else None)
            while True:
                line = resp.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()

    def stream(self, method: str, path: str, body: Any = None, *,
               timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Send one request whose answer is JSON lines (e.g. an image build).

        The request is made now, so a refusal raises here as its PacdError;
        the returned iterator yields each line's object as it arrives and
        closes the connection when exhausted or closed. ``timeout`` bounds
        the wait for each line (None: as long as the daemon keeps the stream
        open).
        """
        headers = {"Accept": "application/x-ndjson"}
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        token = self.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn = self._connection(timeout)
        try:
            try:
                _send(conn, method, path, data, headers)
                resp = conn.getresponse()
            except _Unsent as exc:
                raise self._unavailable(exc.cause) from None
            except OSError as exc:
                raise self._unavailable(exc) from None
            except http.client.HTTPException as exc:
                raise DaemonUnavailable(f"the daemon closed the connection: {exc!r}") from None
            if resp.status >= 400:
                raw = resp.read()
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:
                    parsed = None
                error = _error_from(resp.status, parsed)
                if error.code in ("token_expired", "token_revoked") and not self._explicit_token:
                    self.forget_token()
                raise error
        except BaseException:
            conn.close()
            raise
        return self._lines(conn, resp)

    def _lines(self, conn: http.client.HTTPConnection,
               resp: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
        try:
            while True:
                try:
                    line = resp.readline()
                except OSError as exc:
                    raise DaemonUnavailable(
                        f"the daemon stream broke off: {exc!r}") from None
                except http.client.HTTPException as exc:
                    raise DaemonUnavailable(
                        f"the daemon closed the connection: {exc!r}") from None
                if not line:
                    return
                if line.strip():
                    try:
                        item = json.loads(line)
                    except ValueError:
                        raise PacdError("the daemon sent a stream line that is not JSON"
                                        ) from None
                    if isinstance(item, dict):
                        yield item
        finally:
            conn.close()

    # --- convenience ----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/v1/status", auth=False)
        return result

    def complete_session(self, session_id: str, credential: dict[str, Any]) -> dict[str, Any]:
        token: dict[str, Any] = self.request(
            "POST", "/v1/sessions/complete",
            {"session_id": session_id, "credential": credential}, auth=False)
        self.save_token(token)
        return token

    def credentials(self) -> list[dict[str, Any]]:
        """The enrolled presence credentials (``GET /v1/owner/credentials``)."""
        listed: dict[str, Any] = self.request("GET", "/v1/owner/credentials")
        return list(listed["credentials"])

    def remove_credential(self, credential_id: str) -> dict[str, Any]:
        """Queue a key's removal; it happens once an enrolled key approves it."""
        queued: dict[str, Any] = self.request(
            "DELETE", f"/v1/owner/credentials/{quote(credential_id, safe='')}")
        return queued
