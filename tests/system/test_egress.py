"""Egress through pacd's proxy: the real daemon, real Podman, test servers on loopback only.

An agent whose policy allows external APIs and who holds a network capability
gets a container with loopback only; its one way out is the proxy the daemon
serves inside that container (HTTP_PROXY), which lets through only the
policy's trusted domains on its allowed ports and audits every connection.
The test servers listen on the host's 127.0.0.1; the daemon is configured with
``egress_allow_loopback`` so that ``localhost`` is a reachable trusted name.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.system.agents_env import (
    PYTHON,
    Deployment,
    agent_spec,
    make_deployment,
    restart,
    short_base,
    wait_until,
)

__all__ = ["make_deployment", "short_base"]

pytestmark = [pytest.mark.system, pytest.mark.podman]

#: runs inside the agent's container: each argument is a JSON job, each result a JSON line
IN_CONTAINER = r"""
import json, os, socket, sys

def raw(data, host="127.0.0.1", port=3128):
    try:
        s = socket.create_connection((host, port), timeout=30)
    except OSError as exc:
        return "errno:%s" % exc.errno
    s.sendall(data.encode("latin-1"))
    return rest(s, b"")

def rest(s, out):
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    return out.decode("latin-1")

def tunnel(authority, request):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=30)
    s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            return head.decode("latin-1")
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        return head.decode("latin-1") + s.recv(65536).decode("latin-1")
    s.sendall(request.encode())
    return rest(s, head)

def direct(host, port):
    try:
        socket.create_connection((host, port), timeout=5).close()
        return "connected"
    except OSError as exc:
        return "errno:%s" % exc.errno

for job in sys.argv[1:]:
    job = json.loads(job)
    kind = job["kind"]
    if kind == "raw":
        result = raw(job["data"])
    elif kind == "tunnel":
        result = tunnel(job["authority"], job["request"])
    elif kind == "direct":
        result = direct(job["host"], job["port"])
    elif kind == "env":
        result = {k: v for k, v in os.environ.items() if k.lower().endswith("_proxy")}
    else:
        result = open(job["path"]).read()
    print(json.dumps(result))
"""


class LoopbackServer:
    """An HTTP server on the host's 127.0.0.1 that answers with its name and records
    every request it gets."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Host", "")))
                body = f"hello from {server.name}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[tuple[LoopbackServer, LoopbackServer]]:
    allowed, other = LoopbackServer("allowed"), LoopbackServer("other")
    try:
        yield allowed, other
    finally:
        allowed.close()
        other.close()


@pytest.fixture
def net(make_deployment: Callable[..., Deployment], python_image: str,
        servers: tuple[LoopbackServer, LoopbackServer]) -> Iterator[tuple[Deployment, str]]:
    """scout (networkAccess) and offline (no network capability) in a container whose
    policy trusts ``localhost`` on the allowed server's port only."""
    allowed, _ = servers
    d = make_deployment(settings={"egress_allow_loopback": True})
    spec = {"name": "net", "policy": {"allow_external_apis": True,
                                      "trusted_domains": ["localhost", "*.example.org"],
                                      "allowed_network_ports": [allowed.port]},
            "agents": [agent_spec("scout", python_image, capabilities=("networkAccess",)),
                       agent_spec("offline", python_image)],
            "concerns": [{"name": "personal", "category": "personal", "scope": "local",
                          "agents": ["scout"], "cross_container": "isolated"}]}
    cid = str(d.create(spec)["id"])
    view = d.start(cid)
    assert view["state"] == "running", view
    yield d, cid


def run_in(d: Deployment, cid: str, agent: str, *jobs: dict[str, Any]) -> list[Any]:
    code, out = d.runtime.exec_run(d.podman_name(cid, agent),
                                   [PYTHON, "-c", IN_CONTAINER, *map(json.dumps, jobs)],
                                   timeout=120)
    assert code == 0, out
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def get(url: str, extra: str = "") -> dict[str, Any]:
    return {"kind": "raw",
            "data": f"GET {url} HTTP/1.1\r\nHost: ignored.example\r\n{extra}\r\n"}


def status_of(answer: str) -> int:
    return int(answer.split(" ", 2)[1])


def refusal_of(answer: str) -> str:
    for line in answer.split("\r\n"):
        if line.lower().startswith("x-pacd-egress-refusal:"):
            return line.split(":", 1)[1].strip()
    return ""


def egress_entries(d: Deployment, cid: str, decision: str) -> list[dict[str, Any]]:
    return d.audit(actor=f"agent:{cid}/scout", action="egress.connect", decision=decision)


def test_allowed_host_answers_through_the_proxy_and_each_connection_is_audited(
        net: tuple[Deployment, str], servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    d, cid = net
    allowed, _ = servers
    plain, tunnelled = run_in(
        d, cid, "scout",
        get(f"http://LOCALHOST.:{allowed.port}/hello?x=1"),
        {"kind": "tunnel", "authority": f"localhost:{allowed.port}",
         "request": "GET /tunnelled HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"})
    assert status_of(plain) == 200 and plain.endswith("hello from allowed"), plain
    assert tunnelled.startswith("HTTP/1.1 200 Connection Established"), tunnelled
    assert tunnelled.endswith("hello from allowed"), tunnelled
    # The origin saw the URL's host, not the Host header the agent sent.
    assert allowed.requests == [("/hello?x=1", f"localhost:{allowed.port}"),
                                ("/tunnelled", "localhost")]

    def both_audited() -> bool:
        return len(egress_entries(d, cid, "allow")) == 2

    wait_until(both_audited, 10, "two allowed egress entries")
    for entry, method in zip(egress_entries(d, cid, "allow"), ("GET", "CONNECT"), strict=True):
        details = entry["details"]
        assert entry["target"] == f"localhost:{allowed.port}"
        assert (details["host"], details["port"], details["method"]) == (
            "localhost", allowed.port, method)
        assert details["bytes_up"] > 0 and details["bytes_down"] > 0, details
        assert details["address"] == "127.0.0.1"  # the one the origin listens on


def test_refused_hosts_ports_and_ip_literals_never_reach_a_server_and_are_audited(
        net: tuple[Deployment, str], servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    d, cid = net
    allowed, other = servers
    answers = run_in(
        d, cid, "scout",
        get(f"http://localhost:{other.port}/"),           # trusted name, port not allowed
        get(f"http://127.0.0.1:{allowed.port}/"),         # IP literal
        get(f"http://2130706433:{allowed.port}/"),        # decimal IP literal
        {"kind": "tunnel", "authority": f"[::1]:{allowed.port}", "request": ""},
        get(f"http://evillocalhost:{allowed.port}/"),     # not trusted
        get(f"http://example.org:{allowed.port}/"),       # *.example.org is not example.org
    )
    assert [(status_of(a), refusal_of(a)) for a in answers] == [
        (403, "port_not_allowed"), (403, "ip_literal"), (403, "ip_literal"),
        (403, "ip_literal"), (403, "domain_not_trusted"), (403, "domain_not_trusted")]
    assert "allowed_network_ports" in answers[0]
    assert allowed.requests == [] and other.requests == []
    denied = egress_entries(d, cid, "deny")
    assert [e["details"]["refusal"] for e in denied] == [
        "port_not_allowed", "ip_literal", "ip_literal", "ip_literal", "domain_not_trusted",
        "domain_not_trusted"]
    assert denied[0]["target"] == f"localhost:{other.port}"
    assert all(e["details"]["status"] == 403 for e in denied)
    assert egress_entries(d, cid, "allow") == []


def test_a_trusted_name_resolving_to_loopback_is_refused_without_the_test_setting(
        make_deployment: Callable[..., Deployment], python_image: str,
        servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    allowed, _ = servers
    d = make_deployment()  # default configuration: loopback targets refused
    spec = {"name": "net", "policy": {"allow_external_apis": True,
                                      "trusted_domains": ["localhost"],
                                      "allowed_network_ports": [allowed.port]},
            "agents": [agent_spec("scout", python_image, capabilities=("webSearch",))],
            "concerns": []}
    cid = str(d.create(spec)["id"])
    assert d.start(cid)["state"] == "running"
    (answer,) = run_in(d, cid, "scout", get(f"http://localhost:{allowed.port}/"))
    assert (status_of(answer), refusal_of(answer)) == (403, "address_not_public"), answer
    assert allowed.requests == []
    (entry,) = egress_entries(d, cid, "deny")
    assert entry["details"]["refusal"] == "address_not_public"


def test_direct_connection_bypassing_the_proxy_fails(
        net: tuple[Deployment, str], servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    d, cid = net
    allowed, _ = servers
    env, devices, routes, direct, proxied = run_in(
        d, cid, "scout", {"kind": "env"}, {"kind": "read", "path": "/proc/net/dev"},
        {"kind": "read", "path": "/proc/net/route"},
        {"kind": "direct", "host": "127.0.0.1", "port": allowed.port},
        get(f"http://localhost:{allowed.port}/"))
    assert env == {k: "http://127.0.0.1:3128"
                   for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    # Loopback is the only interface and there is no route at all: nothing leaves
    # the container but through the proxy's listener.
    interfaces = [line.split(":")[0].strip() for line in devices.splitlines()[2:]]
    assert interfaces == ["lo"]
    assert routes.splitlines()[1:] == []
    assert direct == "errno:111"  # ECONNREFUSED: the server is not in the container
    assert status_of(proxied) == 200  # the same server, through the proxy
    assert allowed.requests == [("/", f"localhost:{allowed.port}")]


def test_agent_without_a_network_capability_gets_no_proxy(net: tuple[Deployment, str]) -> None:
    d, cid = net
    env, proxy = run_in(d, cid, "offline", {"kind": "env"},
                        {"kind": "direct", "host": "127.0.0.1", "port": 3128})
    assert env == {}
    assert proxy == "errno:111"


def test_proxy_answers_malformed_requests_with_clear_statuses(
        net: tuple[Deployment, str], servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    d, cid = net
    allowed, other = servers
    answers = run_in(
        d, cid, "scout",
        {"kind": "raw", "data": "GARBAGE\r\n\r\n"},
        {"kind": "raw", "data": "GET /origin-form HTTP/1.1\r\nHost: localhost\r\n\r\n"},
        {"kind": "raw", "data": f"GET http://localhost:{allowed.port}/ HTTP/1.1\r\n"
                                + "X-Big: " + "a" * 20000 + "\r\n\r\n"},
        {"kind": "raw", "data": f"CONNECT localhost:{other.port} HTTP/1.1\r\n\r\n"},
        {"kind": "raw", "data": f"GET https://localhost:{allowed.port}/ HTTP/1.1\r\n\r\n"},
        {"kind": "raw", "data": f"GET http://localhost:{allowed.port}/ HTTP/3\r\n\r\n"},
    )
    assert [(status_of(a), refusal_of(a)) for a in answers] == [
        (400, "bad_request"), (400, "not_proxy_request"), (431, "head_too_large"),
        (403, "port_not_allowed"), (400, "use_connect"), (505, "bad_version")]
    assert allowed.requests == [] and other.requests == []
    denied = egress_entries(d, cid, "deny")
    assert [(e["details"]["status"], e["details"]["refusal"]) for e in denied] == [
        (400, "bad_request"), (400, "not_proxy_request"), (431, "head_too_large"),
        (403, "port_not_allowed"), (400, "use_connect"), (505, "bad_version")]


def test_proxy_is_served_again_after_a_daemon_restart(
        net: tuple[Deployment, str], servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    d, cid = net
    allowed, _ = servers
    restart(d.daemon)

    def answers() -> bool:
        # errno 111 until the new daemon has found the running container again
        (answer,) = run_in(d, cid, "scout", get(f"http://localhost:{allowed.port}/again"))
        return answer.startswith("HTTP/") and status_of(answer) == 200

    wait_until(answers, 30, "the proxy answering in the running container after a restart")
    assert ("/again", f"localhost:{allowed.port}") in allowed.requests
