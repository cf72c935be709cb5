"""The owner transport seam: Windows gets the named pipe, everything else the Unix
socket, on both sides; and the daemon's real HTTP server, guard and audit log serve
the pipe side exactly as they serve the socket.

The pipe side runs here with a socketpair standing in for each pipe instance: the
stand-in endpoint accepts, names a scripted client SID and wraps the handle in an
asyncio transport (what ``Win32PipeEndpoint`` does with the proactor's duplex pipe
transport); the client speaks through :class:`PipeStream` over the other end.
What only Windows shows (the DACL, FILE_FLAG_FIRST_PIPE_INSTANCE, the SID lookups,
asyncio's proactor pipe transport itself) is not run here: see the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from pacd.api.owner_listener import PipeListener, UnixListener, open_listener
from pacd.api.peercred import VERIFIED_PEER, PeerCred, transport_peer
from pacd.api.route import Call, Json, Principal, Route
from pacd.api.server import OwnerServer
from pacd.audit import AuditLog
from pacd.config import Config
from pacd.errors import ConfigError
from pacd.named_pipe import PipeHTTPConnection, PipeStream, pipe_name
from pacd.transport import Kind, UnixHTTPConnection, address, connection, kind

OWNER = "S-1-5-21-1004336348-1177238915-682003330-1001"
OTHER = "S-1-5-21-1004336348-1177238915-682003330-1002"
KEY = bytes(range(32))


def _no_sid() -> str:
    raise AssertionError("a Unix-socket platform must not ask for a Windows SID")


# --- the choice -------------------------------------------------------------------


@pytest.mark.parametrize(("platform", "expected"), [
    ("win32", Kind.PIPE), ("linux", Kind.UNIX), ("darwin", Kind.UNIX), ("freebsd14", Kind.UNIX),
])
def test_only_windows_takes_the_named_pipe(platform: str, expected: Kind) -> None:
    assert kind(platform) is expected


def test_a_windows_client_dials_the_pipe_named_for_its_own_sid_not_the_socket(
        tmp_path: Path) -> None:
    conn = connection(tmp_path / "pacd.sock", 5.0, platform="win32", user_sid=lambda: OWNER)
    assert isinstance(conn, PipeHTTPConnection)
    assert conn.pipe_name == pipe_name(OWNER) == "\\\\.\\pipe\\pacd-" + OWNER
    assert conn.timeout == 5.0
    assert address(tmp_path / "pacd.sock", "win32", lambda: OWNER) == pipe_name(OWNER)


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_a_unix_client_dials_the_configured_socket(tmp_path: Path, platform: str) -> None:
    conn = connection(tmp_path / "pacd.sock", 7.0, platform=platform, user_sid=_no_sid)
    assert isinstance(conn, UnixHTTPConnection)
    assert conn._path == str(tmp_path / "pacd.sock")
    assert address(tmp_path / "pacd.sock", platform, _no_sid) == str(tmp_path / "pacd.sock")


def test_a_sid_that_would_inject_into_the_pipe_name_is_refused_by_the_client() -> None:
    with pytest.raises(ConfigError, match="not a Windows SID"):
        connection(Path("x"), 1.0, platform="win32", user_sid=lambda: "S-1-5-21-1\\..\\x")


def test_the_daemon_on_linux_binds_its_0600_socket_and_removes_it_when_closed(
        tmp_path: Path) -> None:
    config = Config(home=tmp_path / "home", socket=tmp_path / "run" / "pacd.sock")
    listener = open_listener(config, platform="linux", user_sid=_no_sid)
    try:
        assert isinstance(listener, UnixListener)
        assert listener.where == str(config.socket)
        assert stat.S_IMODE(os.stat(config.socket).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(config.socket.parent).st_mode) == 0o700
    finally:
        listener.close()
    assert not config.socket.exists()


def test_the_daemon_on_windows_claims_its_sid_pipe_and_no_socket(tmp_path: Path) -> None:
    config = Config(home=tmp_path / "home", socket=tmp_path / "run" / "pacd.sock")
    made: list[str] = []

    def endpoint(sid: str) -> SocketPairEndpoint:
        made.append(sid)
        return SocketPairEndpoint({})

    listener = open_listener(config, platform="win32", user_sid=lambda: OWNER,
                             pipe_endpoint=endpoint)
    assert isinstance(listener, PipeListener)
    assert made == [OWNER] and listener.owner_sid == OWNER
    assert listener.where == pipe_name(OWNER)
    assert not (tmp_path / "run").exists()


def test_off_windows_the_real_pipe_endpoint_refuses_instead_of_pretending(
        tmp_path: Path) -> None:
    config = Config(home=tmp_path / "home", socket=tmp_path / "run" / "pacd.sock")
    with pytest.raises(ConfigError, match="only on Windows"):
        open_listener(config, platform="win32", user_sid=lambda: OWNER)


# --- the pipe side, served for real ---------------------------------------------------


class SocketPairEndpoint:
    """Each "pipe instance" is one end of a socketpair; the test says which SID's
    process opened it (what GetNamedPipeClientProcessId + the token would say)."""

    address = pipe_name(OWNER)

    def __init__(self, sids: dict[socket.socket, str | None],
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.sids = sids
        self._pending: asyncio.Queue[socket.socket | None] = asyncio.Queue()
        self._loop = loop
        self.closed = False

    def connect(self, sid: str | None) -> socket.socket:
        """A client opens the pipe; ``sid`` None: its owner cannot be looked up."""
        client, server = socket.socketpair()
        self.sids[server] = sid
        assert self._loop is not None, "a stand-in endpoint made outside its loop"
        # clients connect from their own threads, as clients of a real pipe do
        self._loop.call_soon_threadsafe(self._pending.put_nowait, server)
        client.settimeout(30)
        return client

    async def accept(self) -> socket.socket | None:
        return await self._pending.get()

    def peer_sid(self, handle: socket.socket) -> str:
        sid = self.sids[handle]
        if sid is None:
            raise PermissionError(5, "Access is denied")  # OpenProcess on a foreign process
        return sid

    def client_pid(self, handle: socket.socket) -> int:
        return os.getpid()

    def attach(self, handle: socket.socket, protocol: asyncio.Protocol,
               extra: dict[str, object]) -> None:
        handle.setblocking(False)
        loop = asyncio.get_running_loop()
        # the selector loop's counterpart of the proactor's _make_duplex_pipe_transport
        loop._make_socket_transport(handle, protocol, extra=extra)  # type: ignore[attr-defined]

    def discard(self, handle: socket.socket) -> None:
        handle.close()

    def close(self) -> None:
        self.closed = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._pending.put_nowait, None)


def _stream_over(client: socket.socket) -> PipeStream:
    return PipeStream(client.recv, client.send, client.close,
                      cancel=lambda: client.shutdown(socket.SHUT_RDWR))


async def _status(call: Call) -> Json:
    return Json(b'{"reachable":true}')


async def _digest(call: Call) -> Json:
    body = await call.request.read()
    return Json(json.dumps({"size": len(body),
                            "sha256": hashlib.sha256(body).hexdigest()}).encode())


async def _lines(call: Call) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(call.request)
    for i in range(3):
        await response.write(json.dumps({"type": "tick", "n": i}).encode() + b"\n")
    await response.write_eof()
    return response


async def _basic(request: web.Request, route: Route) -> Principal:
    return Principal(level="basic")


ROUTES = [
    Route("GET", "/v1/status", "getStatus", "status", _status, audited=False),
    Route("POST", "/v1/digest", "postDigest", "digest a body", _digest,
          max_body_bytes=1 << 20),
    Route("GET", "/v1/lines", "getLines", "three lines", _lines, stream=True),
]


class PipeWorld:
    def __init__(self, endpoint: SocketPairEndpoint, audit: AuditLog,
                 server: OwnerServer, listener: PipeListener[socket.socket]) -> None:
        self.endpoint, self.audit, self.server, self.listener = endpoint, audit, server, listener

    def client(self, sid: str | None = OWNER) -> PipeHTTPConnection:
        conn = PipeHTTPConnection(pipe_name(OWNER), 30,
                                  opener=lambda _name: _stream_over(self.endpoint.connect(sid)))
        return conn

    def entries(self) -> list[dict[str, Any]]:
        return [{"actor": e.actor, "action": e.action, "decision": e.decision,
                 "details": e.details} for e in self.audit.entries()]


@contextlib.asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[PipeWorld]:
    """The daemon's OwnerServer with a real audit log, on a PipeListener."""
    audit = AuditLog.open(tmp_path / "audit.db", KEY, None)
    endpoint = SocketPairEndpoint({}, asyncio.get_running_loop())
    listener: PipeListener[socket.socket] = PipeListener(endpoint, OWNER,
                                                        owner_uid=os.getuid)
    server = OwnerServer(ROUTES, _basic, audit, max_connections=8, max_body_bytes=1 << 20,
                         header_timeout_s=10)
    await server.start(listener)
    try:
        yield PipeWorld(endpoint, audit, server, listener)
    finally:
        await server.stop()
        listener.close()
        await asyncio.to_thread(audit.close)
        for handle in endpoint.sids:
            handle.close()


def test_http_keeps_its_framing_over_the_pipe_for_many_requests_on_one_connection(
        tmp_path: Path) -> None:
    body = os.urandom(300_000)  # far more than one pipe buffer, in both directions' pieces

    def talk(world: PipeWorld) -> list[Any]:
        conn = world.client()
        answers: list[Any] = []
        try:
            for _ in range(2):
                conn.request("GET", "/v1/status")
                resp = conn.getresponse()
                answers.append((resp.status, json.loads(resp.read())))
            conn.request("POST", "/v1/digest", body=body,
                         headers={"Content-Type": "application/octet-stream"})
            resp = conn.getresponse()
            answers.append((resp.status, json.loads(resp.read())))
            conn.request("GET", "/v1/lines", headers={"Accept": "application/x-ndjson"})
            resp = conn.getresponse()
            answers.append(resp.status)
            answers.extend(json.loads(line) for line in iter(resp.readline, b""))
        finally:
            conn.close()
        return answers

    async def main() -> tuple[list[Any], int, list[dict[str, Any]]]:
        async with serving(tmp_path) as world:
            answers = await asyncio.to_thread(talk, world)
            return answers, len(world.endpoint.sids), await asyncio.to_thread(world.entries)

    answers, opened, entries = asyncio.run(main())
    assert answers[:2] == [(200, {"reachable": True})] * 2
    assert answers[2] == (200, {"size": len(body),
                                "sha256": hashlib.sha256(body).hexdigest()})
    assert answers[3] == 200
    assert answers[4:] == [{"type": "tick", "n": i} for i in range(3)]
    assert opened == 1  # one connection carried all of it: the pipe was opened once
    owner = f"owner:uid={os.getuid()}"
    assert [(e["actor"], e["action"], e["decision"]) for e in entries] == [
        (owner, "postDigest", "allow"), (owner, "getLines", "allow")]


def test_a_pipe_client_of_another_user_is_refused_and_audited_though_the_socket_is_ours(
        tmp_path: Path) -> None:
    """The stand-in's socketpair would tell SO_PEERCRED our own uid: the refusal shows the
    server goes by the pipe's verified peer, not by whatever socket is underneath."""

    def ask(world: PipeWorld, sid: str | None) -> tuple[int, dict[str, Any]]:
        conn = world.client(sid)
        try:
            conn.request("GET", "/v1/status")
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    async def main() -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, Any]]]:
        async with serving(tmp_path) as world:
            answers = [await asyncio.to_thread(ask, world, sid) for sid in (OTHER, None, OWNER)]
            await world.server.refusals.close()  # flush the coalesced refusal entries
            return answers, await asyncio.to_thread(world.entries)

    answers, entries = asyncio.run(main())
    for status, body in answers[:2]:
        assert status == 403
        assert body["error"]["code"] == "peer_refused"
    assert answers[2] == (200, {"reachable": True})
    refused = [e for e in entries if e["action"] == "peer_refused"]
    assert refused and all(e["decision"] == "deny" for e in refused)
    assert sum(int(e["details"].get("count", 1)) for e in refused) == 2
    assert all(e["actor"] == "peer:uid=unknown" for e in refused)


def test_closing_the_pipe_listener_stops_accepting(tmp_path: Path) -> None:
    async def main() -> bytes | None:
        async with serving(tmp_path) as world:
            await world.server.stop()
            assert world.endpoint.closed
            task = world.listener._task
            assert task is not None and task.done()  # the accept loop has ended
            client = world.endpoint.connect(OWNER)
            with client:
                client.settimeout(1)
                client.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
                try:
                    return await asyncio.to_thread(client.recv, 1)
                except TimeoutError:
                    return None  # nothing accepted it

    assert asyncio.run(main()) is None


def test_a_transport_that_verified_its_peer_is_believed_over_its_socket() -> None:
    class Transport:
        def __init__(self, extra: dict[str, object]) -> None:
            self.extra = extra

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return self.extra.get(name, default)

    a, b = socket.socketpair()
    with a, b:
        mine = PeerCred(uid=os.getuid(), pid=os.getpid(), gid=os.getgid())
        # a Unix socket: the kernel's answer
        assert transport_peer(Transport({"socket": a})) == mine
        # a verified peer (the pipe's): that, even when it says "unknown" (None)
        assert transport_peer(Transport({"socket": a, VERIFIED_PEER: None})) is None
        owner = PeerCred(uid=os.getuid(), pid=1234, gid=None)
        assert transport_peer(Transport({VERIFIED_PEER: owner})) == owner
        # anything else under that key is not a peer
        assert transport_peer(Transport({VERIFIED_PEER: {"uid": os.getuid()}})) is None
        assert transport_peer(Transport({})) is None


def test_the_pipe_streams_shutdown_ends_a_read_blocked_in_another_thread_as_end_of_stream(
        ) -> None:
    """What the tray does to end its event stream (it calls ``shutdown`` on what
    ``Client.events`` hands it). The read stands in for ReadFile: it blocks until
    CancelIoEx, then fails with ERROR_OPERATION_ABORTED; the stream reports that as
    the end of the stream, as a socket's read after ``shutdown`` does."""
    import threading

    reading = threading.Event()
    cancelled = threading.Event()

    def read(n: int) -> bytes:
        reading.set()
        if not cancelled.wait(30):
            raise AssertionError("never cancelled")
        raise OSError(22, "The I/O operation has been aborted", None, 995)

    stream = PipeStream(read, len, lambda: None, cancel=cancelled.set)
    got: list[bytes | None] = []
    reader = threading.Thread(target=lambda: got.append(stream.read(10)))
    reader.start()
    assert reading.wait(30)
    stream.shutdown(socket.SHUT_RDWR)
    reader.join(30)
    assert not reader.is_alive()
    assert got == [b""]
    # without a shutdown of ours, a failing read is an error, not a quiet end
    def denied(n: int) -> bytes:
        raise OSError(5, "Access is denied")

    failing = PipeStream(denied, len, lambda: None)
    with pytest.raises(OSError, match="Access is denied"):
        failing.read(10)


def test_the_client_the_cli_and_tray_use_dials_the_pipe_on_windows(tmp_path: Path) -> None:
    """Off Windows the pipe's SID lookup refuses: reaching it shows the client took the
    pipe branch (on Linux the same request goes to the socket and finds no daemon)."""
    from pacd.client import Client
    from pacd.errors import DaemonUnavailable

    config = Config(home=tmp_path / "home", socket=tmp_path / "run" / "pacd.sock")
    with pytest.raises(ConfigError, match="SIDs exist only on Windows"):
        Client(config, platform="win32").status()
    with pytest.raises(DaemonUnavailable, match="no daemon socket at"):
        Client(config, platform="linux").status()
