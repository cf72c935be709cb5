"""Agent sockets end to end: the real daemon, real Podman containers, the reference agent.

Each agent container reaches the daemon only through its own socket mounted at
/run/pacd/agent.sock; what an agent may read, write and whom it may message is
decided by the container's policy, and every decision is in the audit log.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pidns_connector import NamespaceConnector
from tests.system.agents_env import (
    AgentSocket,
    Deployment,
    agent_request,
    agent_spec,
    make_deployment,
    make_spec,
    short_base,
    wait_until,
)

__all__ = ["make_deployment", "short_base"]

pytestmark = [pytest.mark.system, pytest.mark.podman]


@pytest.fixture
def home(make_deployment: Callable[..., Deployment], python_image: str,
         busybox_image: str) -> Iterator[tuple[Deployment, str]]:
    """writer (reference agent, readWrite, managed → reader), reader (readOnly, strict),
    outsider (readWrite, connected to no concern); all started."""
    d = make_deployment()
    spec = make_spec("home", [
        agent_spec("writer", python_image, connections=("reader",)),
        agent_spec("reader", busybox_image, data_access="readOnly", isolation="strict"),
        agent_spec("outsider", busybox_image, isolation="managed"),
    ], [{"name": "personal", "category": "personal", "scope": "local",
         "agents": ["writer", "reader"], "cross_container": "isolated"}])
    cid = str(d.create(spec)["id"])
    view = d.start(cid)
    assert view["state"] == "running", view
    yield d, cid


def deny_entries(d: Deployment, cid: str, agent: str, action: str) -> list[dict[str, Any]]:
    return d.audit(actor=f"agent:{cid}/{agent}", action=action, decision="deny")


def test_reference_agent_stores_and_reads_through_its_socket(
        home: tuple[Deployment, str]) -> None:
    d, cid = home
    code, who = d.exec_agent(cid, "writer", "whoami")
    assert code == 0, who
    assert who["container"] == cid
    assert who["agent"] == "writer"
    assert who["concerns"] == ["personal"]
    assert who["capabilities"] == ["textGeneration"]

    code, out = d.exec_agent(cid, "writer", "put", "personal", "note", "hello from inside")
    assert (code, out["stored"]) == (0, True), out
    code, out = d.exec_agent(cid, "writer", "get", "personal", "note")
    assert (code, out["value"]) == (0, "hello from inside"), out

    # What the reader (same concern) sees is the same value: one sealed store.
    reply = agent_request(d.agent(cid, "reader"), "GET", "/v1/data/personal/note")
    assert (reply.status, reply.body) == (200, b"hello from inside")

    code, out = d.exec_agent(cid, "writer", "get", "personal", "absent")
    assert (code, out["status"], out["error"]["error"]["code"]) == (1, 404, "not_found"), out

    code, out = d.exec_agent(cid, "writer", "delete", "personal", "note")
    assert code == 0, out
    assert agent_request(d.agent(cid, "writer"), "GET",
                         "/v1/data/personal/note").status == 404

    reads = d.audit(actor=f"agent:{cid}/writer", action="agent.data.read", decision="allow")
    assert [e["target"] for e in reads] == ["personal/note", "personal/absent", "personal/note"]
    writes = d.audit(actor=f"agent:{cid}/writer", action="agent.data.write", decision="allow")
    assert [e["details"]["bytes"] for e in writes] == [len("hello from inside")]


def test_host_process_of_the_owners_uid_cannot_use_an_agent_socket(
        home: tuple[Deployment, str]) -> None:
    d, cid = home
    code, out = d.exec_agent(cid, "writer", "put", "personal", "diary", "kept inside")
    assert (code, out["stored"]) == (0, True), out
    assert d.daemon.proc is not None
    assert os.stat(f"/proc/{d.daemon.proc.pid}").st_uid == os.getuid()  # same uid as us
    path = d.socket(cid, "writer")  # reachable: this process may open the socket's parents

    # This test process is on the host: the daemon's uid, outside the container.
    attempts = [("GET", "/v1/whoami", None), ("GET", "/v1/data/personal/diary", None),
                ("PUT", "/v1/data/personal/diary", b"planted from the host")]
    for method, url, body in attempts:
        reply = agent_request(path, method, url, body)
        assert reply.status == 403, (method, url, reply)
        assert reply.json()["error"]["code"] == "peer_refused"
        assert b"kept inside" not in reply.body

    # Audited, coalesced: the entries together account for every refusal.
    def refusals() -> list[dict[str, Any]]:
        return d.audit(action="agent.peer_refused", target=f"agent:{cid}/writer")

    wait_until(lambda: sum(e["details"]["count"] for e in refusals()) == len(attempts), 10,
               "the host process's refusals reaching the audit log")
    entries = refusals()
    assert {(e["actor"], e["decision"]) for e in entries} == {
        (f"owner:uid={os.getuid()}", "deny")}
    assert {(e["details"]["peer_uid"], e["details"]["peer_pid"]) for e in entries} == {
        (os.getuid(), os.getpid())}
    # Nothing was served or written as the writer for the host process.
    assert [e["target"] for e in d.audit(actor=f"agent:{cid}/writer",
                                         action="agent.data.read")] == []

    # The agent in its container is served as before, and the value is untouched.
    code, who = d.exec_agent(cid, "writer", "whoami")
    assert (code, who["agent"]) == (0, "writer"), who
    code, out = d.exec_agent(cid, "writer", "get", "personal", "diary")
    assert (code, out["value"]) == (0, "kept inside"), out
    reply = agent_request(d.agent(cid, "writer"), "GET", "/v1/data/personal/diary")
    assert (reply.status, reply.body) == (200, b"kept inside")
    # Another agent's container is not the writer's either.
    pid = d.runtime.init_pid(d.podman_name(cid, "reader"))
    assert pid is not None
    with NamespaceConnector(pid) as in_reader:
        reply = agent_request(AgentSocket(path, lambda: in_reader.connect(path)),
                              "GET", "/v1/whoami")
    assert reply.status == 403, reply
    assert reply.json()["error"]["code"] == "peer_refused"


def test_agent_not_connected_to_a_concern_is_refused_and_audited(
        home: tuple[Deployment, str]) -> None:
    d, cid = home
    d.exec_agent(cid, "writer", "put", "personal", "secret", "s3cret")
    path = d.agent(cid, "outsider")
    for method, body in (("GET", None), ("PUT", b"x"), ("DELETE", None)):
        reply = agent_request(path, method, "/v1/data/personal/secret", body)
        assert reply.status == 403, (method, reply)
        assert reply.json()["error"]["code"] == "forbidden"
        assert b"s3cret" not in reply.body
    refused = deny_entries(d, cid, "outsider", "agent.data.read")
    assert [e["target"] for e in refused] == ["personal/secret"]
    assert deny_entries(d, cid, "outsider", "agent.data.write")
    assert deny_entries(d, cid, "outsider", "agent.data.delete")
    # The value is untouched by the refused write and delete.
    assert agent_request(d.agent(cid, "writer"), "GET",
                         "/v1/data/personal/secret").body == b"s3cret"


def test_read_only_agent_cannot_write(home: tuple[Deployment, str]) -> None:
    d, cid = home
    d.exec_agent(cid, "writer", "put", "personal", "note", "original")
    path = d.agent(cid, "reader")
    assert agent_request(path, "PUT", "/v1/data/personal/note", b"overwritten").status == 403
    assert agent_request(path, "DELETE", "/v1/data/personal/note").status == 403
    assert agent_request(path, "GET", "/v1/data/personal/note").body == b"original"
    assert deny_entries(d, cid, "reader", "agent.data.write")[0]["target"] == "personal/note"


def test_managed_agent_messages_exactly_its_allow_list(home: tuple[Deployment, str]) -> None:
    d, cid = home
    inbox = d.agent(cid, "reader")
    # A long poll waiting on the reader's inbox is woken by the delivery.
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(
        agent_request(inbox, "GET", "/v1/messages?timeout=20", timeout=30)))
    waiter.start()
    # The daemon reports the poll as waiting: only then is the message sent.
    polls = f"{cid}/reader"
    wait_until(lambda: d.daemon.client().status()["waiting_polls"].get(polls) == 1, 10,
               "the reader's long poll waiting in the daemon")
    sent_at = time.monotonic()
    code, out = d.exec_agent(cid, "writer", "send", "reader", '{"text": "hi reader"}')
    assert code == 0, out
    assert out["response"]["to"] == "reader"
    waiter.join(30)
    assert polls not in d.daemon.client().status()["waiting_polls"]
    assert got and got[0].status == 200
    messages = got[0].json()
    assert [(m["from"], m["body"]) for m in messages] == [("writer", {"text": "hi reader"})]
    assert time.monotonic() - sent_at < 10  # woken, not timed out (20 s)
    # Taken messages are gone; nothing else is waiting.
    assert agent_request(inbox, "GET", "/v1/messages?timeout=0").json() == []

    # Not on the allow-list: refused, and nothing lands in the outsider's inbox.
    code, out = d.exec_agent(cid, "writer", "send", "outsider", '{"text": "psst"}')
    assert (code, out["status"]) == (1, 403), out
    assert agent_request(d.agent(cid, "outsider"), "GET",
                         "/v1/messages?timeout=0").json() == []
    # A strict agent may message nobody.
    reply = agent_request(inbox, "POST", "/v1/agents/writer/messages", b'{"text": "back"}')
    assert reply.status == 403
    sends = d.audit(action="agent.message.send")
    assert [(e["actor"].rsplit("/", 1)[1], e["target"], e["decision"]) for e in sends] == [
        ("writer", "reader", "allow"), ("writer", "outsider", "deny"),
        ("reader", "writer", "deny")]


def test_message_is_durable_until_taken(home: tuple[Deployment, str]) -> None:
    d, cid = home
    reply = agent_request(d.agent(cid, "writer"), "POST", "/v1/agents/reader/messages",
                          json.dumps({"n": 1}).encode())
    assert reply.status == 202
    first_id = reply.json()["id"]
    # Not taken yet: survives a daemon restart (the containers keep running and the
    # sockets come back in the same directories).
    d.daemon.stop(timeout=30)
    assert not d.socket(cid, "reader").exists()  # a stopped daemon serves no agent
    d.daemon.start()
    wait_until(d.socket(cid, "reader").exists, 15, "the reader's socket coming back")
    messages = agent_request(d.agent(cid, "reader"), "GET", "/v1/messages?timeout=5").json()
    assert [(m["id"], m["body"]) for m in messages] == [(first_id, {"n": 1})]
    # The agent inside, which kept running, reaches the new daemon's socket too.
    code, out = d.exec_agent(cid, "writer", "whoami")
    assert (code, out["agent"]) == (0, "writer"), out


def test_other_routes_are_404_and_audited(home: tuple[Deployment, str]) -> None:
    d, cid = home
    path = d.agent(cid, "writer")
    plugin = agent_request(path, "POST", "/v1/plugins/text-formatter/format", b"{}")
    assert plugin.status == 404
    assert "is not running" in plugin.json()["error"]["message"]
    for method, url in (("GET", "/v1/status"), ("GET", "/v1/containers"),
                        ("POST", "/v1/whoami"), ("GET", "/v1/audit")):
        reply = agent_request(path, method, url)
        assert reply.status == 404, (method, url, reply)
        assert reply.json()["error"]["code"] == "not_found"
    assert len(deny_entries(d, cid, "writer", "agent.route")) == 4
    assert deny_entries(d, cid, "writer", "agent.plugin.call")[0]["target"] == \
        "text-formatter/format"


def test_limits_and_bad_input(home: tuple[Deployment, str]) -> None:
    d, cid = home
    path = d.agent(cid, "writer")
    big = agent_request(path, "PUT", "/v1/data/personal/big", b"x" * (1024 * 1024 + 1))
    assert (big.status, big.json()["error"]["code"]) == (413, "payload_too_large")
    ok = agent_request(path, "PUT", "/v1/data/personal/big", b"x" * (1024 * 1024))
    assert ok.status == 204
    not_json = agent_request(path, "POST", "/v1/agents/reader/messages", b"{not json")
    assert not_json.status == 400
    bad_wait = agent_request(path, "GET", "/v1/messages?timeout=600")
    assert bad_wait.status == 422
    unknown_concern = agent_request(path, "GET", "/v1/data/work/x")
    assert unknown_concern.status == 403
    assert deny_entries(d, cid, "writer", "agent.data.write")[0]["details"]["code"] == \
        "payload_too_large"


def test_socket_layout_and_isolation_between_agents(home: tuple[Deployment, str]) -> None:
    d, cid = home
    sock = d.socket(cid, "writer")
    assert stat.S_IMODE(os.stat(sock.parent.parent.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(sock.parent.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o711
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    # Each container has exactly its own agent's directory at /run/pacd.
    for agent in ("writer", "reader", "outsider"):
        mounts = d.runtime.inspect(d.podman_name(cid, agent))["Mounts"]
        pacd_mounts = [(m["Source"], m["Destination"]) for m in mounts
                       if m["Destination"].startswith("/run/pacd")]
        assert pacd_mounts == [(str(d.socket(cid, agent).parent), "/run/pacd")]
    # uid 1000 inside reaches its socket but cannot even list the directory.
    code, out = d.runtime.exec_run(d.podman_name(cid, "reader"), ["/bin/busybox", "sh", "-c",
                                   "test -S /run/pacd/agent.sock && echo sock; "
                                   "ls /run/pacd 2>/dev/null || echo unlistable; id -u"])
    assert (code, out.split()) == (0, ["sock", "unlistable", "1000"]), out
    # The reader's socket answers as the reader, whatever the request claims.
    who = agent_request(d.agent(cid, "reader"), "GET", "/v1/whoami").json()
    assert who["agent"] == "reader"


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _connect(path: Path) -> socket.socket:
    """A connection, retried while the listen backlog is full (the daemon drains it)."""
    deadline = time.monotonic() + 10
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(str(path))
        except BlockingIOError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        return s


def _backlog(path: Path) -> int:
    """Connections waiting in the listen queue of the socket at ``path``.

    For a listening Unix socket, ss's Recv-Q column is the accept backlog.
    """
    out = subprocess.run(["ss", "-xlnH", "src", str(path)], capture_output=True, text=True,
                         check=True).stdout.split()
    assert len(out) >= 3 and out[1] == "LISTEN", out
    return int(out[2])


def test_idle_connection_flood_is_capped_and_timed_out(home: tuple[Deployment, str]) -> None:
    d, cid = home
    assert d.daemon.proc is not None
    pid = d.daemon.proc.pid
    path = d.socket(cid, "writer")
    before = _open_fds(pid)
    held: list[socket.socket] = []
    try:
        for _ in range(300):
            held.append(_connect(path))
        # The daemon has taken in the whole queue once its listening socket's backlog
        # is empty; each one it accepted it then holds or closes at once.
        wait_until(lambda: _backlog(path) == 0, 30, "the daemon accepting the queued connections")
        # Default policy: 10 served, up to 2 * 10 + 4 = 24 held; every other one closed.
        # Well within the 10 s header timeout, so that timeout cannot be what closed them.
        wait_until(lambda: _open_fds(pid) - before <= 24 + 4, 3,
                   "the daemon holding no more than 28 of 300 connections")
        assert d.daemon.client().status()["version"]
        # Connections that never send a request head are closed after the header timeout.
        start = time.monotonic()
        for s in held:
            s.settimeout(max(0.1, 20 - (time.monotonic() - start)))  # blocking, bounded
            assert s.recv(1) == b""
        assert time.monotonic() - start < 15
    finally:
        for s in held:
            s.close()
    wait_until(lambda: _open_fds(pid) <= before + 2, 10, "the daemon closing the connections")
    assert agent_request(d.agent(cid, "writer"), "GET", "/v1/whoami").json()["agent"] == "writer"
    # Each one beyond what is held was either evicted (idle, to make room) or
    # dropped (beyond the hard cap): every one of them is counted in the log.
    closed = [e for e in d.audit(actor=f"agent:{cid}/writer")
              if e["action"] in ("agent.connection.evicted", "agent.connection.dropped")]
    assert sum(e["details"]["count"] for e in closed) >= 300 - 24


def test_deeply_nested_message_is_refused_and_audited(home: tuple[Deployment, str]) -> None:
    d, cid = home
    path = d.agent(cid, "writer")
    reply = agent_request(path, "POST", "/v1/agents/reader/messages", b"[" * 60000)
    assert reply.status == 400, reply
    assert reply.json()["error"]["code"] == "invalid_request"
    refused = deny_entries(d, cid, "writer", "agent.message.send")
    assert [e["target"] for e in refused] == ["reader"]


def test_message_bodies_are_not_stored_in_clear(home: tuple[Deployment, str]) -> None:
    d, cid = home
    mark = "okapi-umbrella-5521-in-clear"
    reply = agent_request(d.agent(cid, "writer"), "POST", "/v1/agents/reader/messages",
                          json.dumps({"text": mark}).encode())
    assert reply.status == 202, reply
    raw = b"".join(p.read_bytes() for p in d.daemon.home.glob("state.sqlite3*"))
    assert raw  # the files exist and were read
    assert mark.encode() not in raw
    messages = agent_request(d.agent(cid, "reader"), "GET", "/v1/messages?timeout=0").json()
    assert [m["body"] for m in messages] == [{"text": mark}]


def test_lone_surrogate_in_an_agent_message_is_a_422_not_a_500(
        home: tuple[Deployment, str]) -> None:
    """A message is stored as UTF-8: one that is not text is refused before it is
    accepted (and audited as a refusal, not as an allowed send that then failed)."""
    d, cid = home
    reply = agent_request(d.agent(cid, "writer"), "POST", "/v1/agents/reader/messages",
                          b'{"text": ["fine", "\\ud800"]}')
    assert reply.status == 422, reply.json()
    assert reply.json()["error"]["message"] == (
        "body.text[1]: contains a lone surrogate, which is not Unicode text")
    assert agent_request(d.agent(cid, "reader"), "GET", "/v1/messages?timeout=0").json() == []
    [entry] = deny_entries(d, cid, "writer", "agent.message.send")
    assert entry["details"]["code"] == "invalid_request"
    assert not [e for e in d.audit(action="agent.message.send") if e["decision"] == "allow"]
