"""A plugin's network and its directory: the real daemon, real Podman, the reference plugin.

A plugin whose schema requires a network capability that its agent holds, in a
container whose policy allows external APIs, gets what such an agent gets:
loopback only and pacd's egress proxy inside its container (HTTP_PROXY),
checked against the container's trusted_domains and allowed_network_ports,
each connection audited as the plugin. Any other plugin gets no proxy and no
network. A plugin's directory (/run/pacd-plugin) is a small tmpfs in its
container: writing past its size fails there and nothing reaches the host.
Test servers listen on the host's 127.0.0.1 (``egress_allow_loopback``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pacd.runtime.hardening import PLUGIN_DIR_BYTES, plugin_container_name
from tests.integration.harness import EXAMPLES
from tests.system.agents_env import (
    PYTHON,
    Deployment,
    agent_request,
    agent_spec,
    make_deployment,
    restart,
    short_base,
    wait_until,
)
from tests.system.test_egress import IN_CONTAINER, LoopbackServer, get, refusal_of, status_of

__all__ = ["make_deployment", "short_base"]

pytestmark = [pytest.mark.system, pytest.mark.podman]

SEED = json.loads((EXAMPLES / "plugins" / "text-formatter-seed.json").read_text())
FORMATTER_ID = SEED["id"].lower()
#: the seed's Text Formatter under another name and id, requiring network access too
FETCHER = {**SEED, "id": "3f2b8c1e-7d4a-4b6e-9c2d-5a1e8f0b7c63", "name": "Fetcher",
           "requiredCapabilities": ["textGeneration", "networkAccess"]}
FETCHER_ID = FETCHER["id"]
FORMAT = json.dumps({"text": "  hello   plugin world ", "style": "title"}).encode()


@pytest.fixture
def servers() -> Iterator[tuple[LoopbackServer, LoopbackServer]]:
    allowed, other = LoopbackServer("allowed"), LoopbackServer("other")
    try:
        yield allowed, other
    finally:
        allowed.close()
        other.close()


def submit(d: Deployment, cid: str, schema: dict[str, Any], image: str) -> str:
    queued = d.owner.authed().request("POST", f"/v1/containers/{cid}/plugins",
                                      {"agent": "writer", "schema": schema, "image": image})
    return str(queued["approval_id"])


def running(d: Deployment, cid: str) -> set[str]:
    plugins = d.daemon.client().request("GET", f"/v1/containers/{cid}/plugins")["plugins"]
    return {p["id"] for p in plugins if p["state"] == "running"}


@pytest.fixture
def net(make_deployment: Callable[..., Deployment], python_image: str, plugin_image: str,
        servers: tuple[LoopbackServer, LoopbackServer]) -> Iterator[tuple[Deployment, str]]:
    """writer (networkAccess) with two plugins approved for it: the Fetcher, which
    requires networkAccess, and the seed's Text Formatter, which does not; the policy
    trusts ``localhost`` on the allowed server's port only."""
    allowed, _ = servers
    d = make_deployment(settings={"egress_allow_loopback": True})
    spec = {"name": "net", "policy": {"allow_plugins": True, "allow_external_apis": True,
                                      "trusted_domains": ["localhost"],
                                      "allowed_network_ports": [allowed.port]},
            "agents": [agent_spec("writer", python_image,
                                  capabilities=("textGeneration", "networkAccess"))],
            "concerns": [{"name": "personal", "category": "personal", "scope": "local",
                          "agents": ["writer"], "cross_container": "isolated"}]}
    cid = str(d.create(spec)["id"])
    assert d.start(cid)["state"] == "running"
    for schema in (FETCHER, SEED):
        assert d.owner.approve(submit(d, cid, schema, plugin_image))["state"] == "approved"
    wait_until(lambda: running(d, cid) == {FETCHER_ID, FORMATTER_ID}, 60,
               "both plugins running")
    wait_until(lambda: all(serving(d, cid, p) for p in (FETCHER_ID, FORMATTER_ID)), 60,
               "both plugins' sockets")
    yield d, cid


def serving(d: Deployment, cid: str, plugin_id: str) -> bool:
    """Whether the plugin has made its socket (seen through its container's root)."""
    pid = d.runtime.init_pid(plugin_container_name(cid, plugin_id, "writer"))
    return pid is not None and Path(f"/proc/{pid}/root/run/pacd-plugin/plugin.sock").exists()


def run_in_plugin(d: Deployment, cid: str, plugin_id: str, *jobs: dict[str, Any]
                  ) -> list[Any]:
    code, out = d.runtime.exec_run(plugin_container_name(cid, plugin_id, "writer"),
                                   [PYTHON, "-c", IN_CONTAINER, *map(json.dumps, jobs)],
                                   timeout=120)
    assert code == 0, out
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def egress_entries(d: Deployment, cid: str, plugin_id: str, decision: str
                   ) -> list[dict[str, Any]]:
    return d.audit(actor=f"plugin:{cid}/{plugin_id}", action="egress.connect",
                   decision=decision)


NETWORK_JOBS = ({"kind": "env"}, {"kind": "read", "path": "/proc/net/dev"},
                {"kind": "read", "path": "/proc/net/route"})


def interfaces(devices: str) -> list[str]:
    return [line.split(":")[0].strip() for line in devices.splitlines()[2:]]


def test_a_networked_plugin_reaches_a_trusted_host_only_through_the_proxy_audited_as_itself(
        net: tuple[Deployment, str], servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    d, cid = net
    allowed, other = servers
    env, devices, routes, direct, answered, refused, literal = run_in_plugin(
        d, cid, FETCHER_ID, *NETWORK_JOBS,
        {"kind": "direct", "host": "127.0.0.1", "port": allowed.port},
        get(f"http://localhost:{allowed.port}/from-plugin"),
        get(f"http://localhost:{other.port}/"),           # trusted name, port not allowed
        get(f"http://127.0.0.1:{allowed.port}/"))         # an address, not a name
    assert env == {k: "http://127.0.0.1:3128"
                   for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    # No way out but the proxy: loopback only, no route, the server not reachable directly.
    assert interfaces(devices) == ["lo"]
    assert routes.splitlines()[1:] == []
    assert direct == "errno:111"
    assert status_of(answered) == 200 and answered.endswith("hello from allowed"), answered
    assert [(status_of(a), refusal_of(a)) for a in (refused, literal)] == [
        (403, "port_not_allowed"), (403, "ip_literal")]
    assert allowed.requests == [("/from-plugin", f"localhost:{allowed.port}")]
    assert other.requests == []

    wait_until(lambda: len(egress_entries(d, cid, FETCHER_ID, "allow")) == 1, 10,
               "the allowed connection's entry")
    [entry] = egress_entries(d, cid, FETCHER_ID, "allow")
    assert entry["target"] == f"localhost:{allowed.port}"
    details = entry["details"]
    assert (details["plugin_id"], details["plugin"], details["agent"], details["container"]) \
        == (FETCHER_ID, "Fetcher", "writer", cid)
    assert details["bytes_up"] > 0 and details["bytes_down"] > 0
    denied = egress_entries(d, cid, FETCHER_ID, "deny")
    assert [(e["details"]["refusal"], e["details"]["plugin_id"]) for e in denied] == [
        ("port_not_allowed", FETCHER_ID), ("ip_literal", FETCHER_ID)]
    # Nothing of this was the agent's.
    assert d.audit(actor=f"agent:{cid}/writer", action="egress.connect") == []


def test_a_plugin_that_requires_no_network_capability_has_no_proxy_and_no_network(
        net: tuple[Deployment, str], servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    d, cid = net
    allowed, _ = servers
    # The same agent, the same policy: but the Text Formatter asks for no network.
    env, devices, routes, proxy, direct = run_in_plugin(
        d, cid, FORMATTER_ID, *NETWORK_JOBS,
        {"kind": "direct", "host": "127.0.0.1", "port": 3128},
        {"kind": "direct", "host": "127.0.0.1", "port": allowed.port})
    assert env == {}
    assert interfaces(devices) == ["lo"]
    assert routes.splitlines()[1:] == []
    assert (proxy, direct) == ("errno:111", "errno:111")
    assert allowed.requests == []
    assert egress_entries(d, cid, FORMATTER_ID, "allow") == []
    assert egress_entries(d, cid, FORMATTER_ID, "deny") == []


def test_the_plugins_proxy_is_served_again_after_a_daemon_restart(
        net: tuple[Deployment, str], servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    d, cid = net
    allowed, _ = servers
    restart(d.daemon)

    def answers() -> bool:
        # refused (errno 111) until the new daemon has found the running plugin again
        (answer,) = run_in_plugin(d, cid, FETCHER_ID,
                                  get(f"http://localhost:{allowed.port}/again"))
        return answer.startswith("HTTP/") and status_of(answer) == 200

    wait_until(answers, 30, "the proxy answering in the running plugin after a restart")
    assert ("/again", f"localhost:{allowed.port}") in allowed.requests


#: runs in the plugin's container: write up to 4 MiB into its directory, say how it ended
FILL = r"""
import errno, json, os, sys
written, error = 0, None
fd = os.open("/run/pacd-plugin/fill", os.O_WRONLY | os.O_CREAT, 0o600)
try:
    while written < 4 * 1024 * 1024:
        written += os.write(fd, b"x" * 65536)
except OSError as exc:
    error = errno.errorcode.get(exc.errno, str(exc.errno))
os.close(fd)
print(json.dumps({"written": written, "error": error}))
"""


def host_usage(root: Path) -> int:
    """Bytes the files under ``root`` take on the host's disk."""
    total = 0
    for base, _dirs, files in os.walk(root):
        for name in files:
            total += os.lstat(os.path.join(base, name)).st_blocks * 512
    return total


def test_a_plugin_writing_past_its_directorys_cap_gets_enospc_and_still_serves_calls(
        net: tuple[Deployment, str]) -> None:
    d, cid = net
    runtime_dir = d.daemon.socket.parent
    before = host_usage(runtime_dir)
    code, out = d.runtime.exec_run(plugin_container_name(cid, FORMATTER_ID, "writer"),
                                   [PYTHON, "-c", FILL], timeout=120)
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["error"] == "ENOSPC", result
    assert result["written"] <= PLUGIN_DIR_BYTES
    # None of it is on the host, under the runtime directory or anywhere near the cap.
    assert host_usage(runtime_dir) - before < PLUGIN_DIR_BYTES // 4
    # A full directory does not stop the plugin: its socket is there already.
    reply = agent_request(d.agent(cid, "writer"), "POST", f"/v1/plugins/{FORMATTER_ID}/format",
                          FORMAT, headers={"Content-Type": "application/json"})
    assert reply.status == 200, reply.body
    assert reply.json()["text"] == "Hello Plugin World"
