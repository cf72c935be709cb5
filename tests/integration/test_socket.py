"""The owner socket itself: permissions, one daemon per socket, limits, activation."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from pacd.errors import ConfigError, DaemonUnavailable, Unauthorized
from tests.integration.harness import ROOT, DaemonProcess, EventCollector, held_connection


def _raw(path: object, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, return everything the daemon answers until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in chunks[0]:
                # keep-alive answer: stop once the body is complete
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")]
                if length and len(body) >= length[0]:
                    break
        return b"".join(chunks)


def _error(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(body)["error"]


def test_socket_and_directory_are_private(daemon: DaemonProcess) -> None:
    assert stat.S_IMODE(os.stat(daemon.socket.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(daemon.socket).st_mode)


def test_loose_socket_directory_refused(make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon(start=False)
    d.socket.parent.mkdir(mode=0o755)
    os.chmod(d.socket.parent, 0o755)
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) == ConfigError.exit_code == 12
    assert "chmod 700" in d.log()
    assert not d.socket.exists()


def test_second_daemon_on_same_socket_refused(daemon: DaemonProcess,
                                              make_daemon: Callable[..., DaemonProcess]) -> None:
    other = make_daemon("other", start=False)
    other.env["PACD_SOCKET"] = str(daemon.socket)
    other.start(wait=False)
    assert other.proc is not None
    assert other.proc.wait(30) == 5
    assert "already running" in other.log()
    assert daemon.client().status()["version"]


def test_two_daemons_side_by_side(daemon: DaemonProcess,
                                  make_daemon: Callable[..., DaemonProcess]) -> None:
    other = make_daemon("other")
    daemon.client().request("POST", "/v1/owner", {"name": "one"})
    other.client().request("POST", "/v1/owner", {"name": "two"})
    assert daemon.client().status()["owner"]["name"] == "one"
    assert other.client().status()["owner"]["name"] == "two"


def test_stale_socket_replaced_after_kill(daemon: DaemonProcess) -> None:
    daemon.client().request("POST", "/v1/owner", {"name": "Alice"})
    daemon.kill()
    assert daemon.socket.exists()  # left behind by the dead daemon
    with pytest.raises(DaemonUnavailable) as down:
        daemon.client().status()
    assert "pacd daemon" in down.value.message and "systemctl --user start pacd" in \
        down.value.message
    daemon.start()
    assert daemon.client().status()["owner"]["name"] == "Alice"


def test_browser_headers_refused_and_audited(daemon: DaemonProcess) -> None:
    for header in (b"Origin: http://evil.example", b"Referer: http://evil.example/page"):
        answer = _raw(daemon.socket, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n" + header +
                      b"\r\nConnection: close\r\n\r\n")
        status, err = _error(answer)
        assert (status, err["code"]) == (403, "forbidden")
    refused = [e for e in daemon.audit() if e["action"] == "browser_refused"]
    assert len(refused) == 2 and all(e["decision"] == "deny" for e in refused)


def test_errors_have_the_common_shape(daemon: DaemonProcess) -> None:
    status, err = _error(_raw(daemon.socket, b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\n"
                                             b"Connection: close\r\n\r\n"))
    assert (status, err["code"]) == (404, "not_found")
    status, err = _error(_raw(daemon.socket, b"PUT /v1/status HTTP/1.1\r\nHost: x\r\n"
                                             b"Content-Length: 0\r\nConnection: close\r\n\r\n"))
    assert (status, err["code"]) == (405, "method_not_allowed")
    body = b"{not json"
    status, err = _error(_raw(daemon.socket, b"POST /v1/owner HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                              + body))
    assert (status, err["code"]) == (400, "invalid_request")
    body = json.dumps({"name": 5, "extra": True}).encode()
    status, err = _error(_raw(daemon.socket, b"POST /v1/owner HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                              + body))
    assert (status, err["code"]) == (422, "invalid_request")
    assert err["errors"] == ["body.extra: unknown field", "body.name: expected string"]


def test_deeply_nested_json_is_a_bad_request(daemon: DaemonProcess) -> None:
    # Nesting deeper than the JSON parser's stack: a client error, not a 500. (Within
    # the 64 KiB that a route reachable without a token reads.)
    for body in (b"[" * 60_000, b"[" * 30_000 + b"]" * 30_000, b'{"a":' * 12_000):
        status, err = _error(_raw(daemon.socket, b"POST /v1/owner HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                                  % len(body) + body))
        assert (status, err["code"]) == (400, "invalid_request"), err
        assert "nested too deeply" in str(err["message"])
    assert daemon.client().status()["owner"] is None


def test_body_size_cap(make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon(settings={"max_body_bytes": 1024})
    body = json.dumps({"name": "x" * 4096}).encode()
    status, err = _error(_raw(d.socket, b"POST /v1/owner HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                              + body))
    assert (status, err["code"]) == (413, "payload_too_large")
    assert d.client().status()["owner"] is None


def test_connection_limit_answers_busy(make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon(settings={"max_connections": 2, "header_timeout_s": 5.0})
    holders = [held_connection(d.socket) for _ in range(2)]
    status, err = _error(_raw(d.socket, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert (status, err["code"]) == (503, "busy")
    for s in holders:
        s.close()
    # Once the holders are gone the daemon serves again (it notices the close itself).
    deadline = time.monotonic() + 5
    while True:
        answer = _raw(d.socket, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n")
        if answer.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_slow_client_is_dropped_without_an_answer(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    # docs/API.md: a client whose request head is too slow is dropped without an answer
    # (a slow body, below, is answered 408).
    d = make_daemon(settings={"header_timeout_s": 1.0})
    request = b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n"
    started = time.monotonic()
    answered = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(d.socket))
        # One byte, then up to 0.3 s for anything the daemon says: the whole head
        # would take over 10 s, far beyond the 1 s allowed.
        s.settimeout(0.3)
        dropped = False
        for byte in request[:-1]:
            try:
                s.sendall(bytes([byte]))
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
                break
            if chunk == b"":
                dropped = True
                break
            answered += chunk
    took = time.monotonic() - started
    assert answered == b"", answered[:200]
    assert dropped, "a client sending one byte at a time was never dropped"
    assert 0.9 <= took < 5.0, took  # dropped by the head timeout, not at once
    assert d.client().status()["version"]


def test_slow_body_is_answered_408_and_closed(make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon(settings={"header_timeout_s": 1.0})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(d.socket))
        s.settimeout(5)
        s.sendall(b"POST /v1/owner HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        started = time.monotonic()
        chunks = []
        while chunk := s.recv(65536):  # the daemon closes after its answer
            chunks.append(chunk)
    assert time.monotonic() - started < 4.0
    status, err = _error(b"".join(chunks))
    assert (status, err["code"]) == (408, "request_timeout")
    assert d.client().status()["owner"] is None
    timed_out = [e for e in d.audit() if e["action"] == "owner.create"]
    assert [(e["decision"], e["details"]["code"]) for e in timed_out] == [
        ("deny", "request_timeout")]


@pytest.mark.parametrize("junk", [
    b"\x00\xff" * 100 + b"\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /v1/status HTTP/1.1\r\n" + b"X: " + b"a" * 20000 + b"\r\n\r\n",
], ids=["binary", "bad-version", "huge-header"])
def test_garbage_is_answered_400_without_echo(daemon: DaemonProcess, junk: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(daemon.socket))
        s.sendall(junk)
        answer = b""
        while chunk := s.recv(65536):  # the daemon closes after its answer
            answer += chunk
    assert answer, "the connection was closed without an answer"
    status, err = _error(answer)
    assert (status, err) == (400, {"code": "invalid_request",
                                   "message": "malformed HTTP request"})
    assert b"\xff" not in answer and b"aaaa" not in answer  # input is not echoed
    assert daemon.client().status()["version"]


def _answer(s: socket.socket) -> bytes:
    """One complete answer read from ``s``; b"" if the daemon closed the connection."""
    answer = b""
    while True:
        head, sep, body = answer.partition(b"\r\n\r\n")
        length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length")]
        if sep and length and len(body) >= length[0]:
            return answer
        chunk = s.recv(65536)
        if not chunk:
            return b""
        answer += chunk


def test_a_request_refused_before_its_body_arrived_keeps_its_connection(
        daemon: DaemonProcess) -> None:
    # A client sends its head and its body in separate writes (http.client does); a
    # refusal (401 here) can go out between the two. Closing the connection then
    # broke the client's second write (EPIPE) on a connection answered keep-alive.
    body = b'{"name": "x"}'
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(daemon.socket))
        s.sendall(b"POST /v1/containers HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        refused = _answer(s)
        status, err = _error(refused)
        assert (status, err["code"]) == (401, "unauthorized")
        assert b"connection: close" not in refused.lower()
        s.sendall(body)  # the rest of the refused request: read and discarded
        s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _answer(s).startswith(b"HTTP/1.1 200"), "the connection was closed under the client"
    refusals = [e for e in daemon.audit() if e["action"] == "container.create"]
    assert [(e["decision"], e["details"]["code"]) for e in refusals] == [
        ("deny", "unauthorized")]


def test_a_refused_request_with_a_large_body_still_to_come_is_closed_unread(
        daemon: DaemonProcess) -> None:
    # Discarding the rest of a refused body is bounded: one larger than a tokenless
    # route would read (64 KiB) is not read at all; the answer says the connection ends.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(daemon.socket))
        s.sendall(b"POST /v1/containers HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                  % (64 * 1024 + 1))
        started = time.monotonic()
        refused = _answer(s)
        status, err = _error(refused)
        assert (status, err["code"]) == (401, "unauthorized")
        assert b"connection: close" in refused.lower()
        assert s.recv(65536) == b""  # closed at once, not after waiting for the body
        assert time.monotonic() - started < 5.0


def test_sigterm_is_graceful(daemon: DaemonProcess) -> None:
    events = EventCollector(daemon.client())
    daemon.client().request("POST", "/v1/owner", {"name": "Alice"})
    assert daemon.stop() == 0
    events.wait_for("daemon.stopping")
    events.thread.join(10)
    assert not events.thread.is_alive(), "the event stream did not end at shutdown"
    assert not daemon.socket.exists()
    daemon.start()
    assert daemon.client().request("POST", "/v1/audit/verify")["ok"] is True
    actions = [e["action"] for e in daemon.audit()]
    assert actions.count("daemon.stop") == 1 and "owner.create" in actions


def test_keychain_unavailable_refuses_to_start(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon(start=False, env={"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"})
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) == 8
    assert "keychain" in d.log().lower()
    assert not d.socket.exists()


def test_systemd_socket_activation_and_notify(make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon(start=False)
    d.socket.parent.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(str(d.socket))
    finally:
        os.umask(old)
    listener.listen(16)
    notify_path = d.base / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    env = {**d.env, "LISTEN_FDS": "1", "NOTIFY_SOCKET": str(notify_path)}
    # Like systemd: the socket as fd 3 and LISTEN_PID naming the daemon's own pid.
    launcher = (
        "import os, sys\n"
        f"os.dup2({listener.fileno()}, 3)\n"
        "os.environ['LISTEN_PID'] = str(os.getpid())\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'pacd', 'daemon'])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", launcher], env=env, cwd=ROOT,
                            pass_fds=(listener.fileno(),), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        ready = notify.recv(64)
        listener.close()  # only the daemon holds it now
        version = d.client().status()["version"]
    finally:
        # Cleanup only (no assert here, so a failure above is the one reported).
        listener.close()
        proc.terminate()
        exit_code = proc.wait(30)
        notify.close()
    assert ready == b"READY=1"
    assert version
    assert exit_code == 0  # a clean shutdown on SIGTERM


def test_the_client_reads_a_refusal_answered_while_it_still_sends_a_large_body(
        daemon: DaemonProcess) -> None:
    # Far more than the daemon reads of a refused body (64 KiB) and than the socket
    # buffers hold: the daemon answers 401 and closes while the client still writes,
    # whose next write then breaks (EPIPE). The answer is on the socket all the same.
    with pytest.raises(Unauthorized):
        daemon.client().request("POST", "/v1/containers",
                                {"name": "x", "pad": "p" * (8 * 1024 * 1024)})
    refusals = [e for e in daemon.audit() if e["action"] == "container.create"]
    assert [(e["decision"], e["details"]["code"]) for e in refusals] == [
        ("deny", "unauthorized")]
