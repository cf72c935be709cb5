"""Approved plugins run as their own hardened containers: the real daemon, real Podman,
the reference plugin (the seed's Text Formatter) built offline.

A plugin runs only as the image content the owner approved (its digest is in the
signed payload), with an agent's hardening, serving HTTP on a socket in a private
directory the daemon mounts; it starts and stops with its container, survives a
daemon restart, and an uninstall removes its container.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from pacd.errors import NotFound
from pacd.registry import ContainerRecord
from pacd.runtime.hardening import BindMount, plugin_container_name, plugin_run_spec
from pacd.runtime.podman import PodmanRuntime
from tests.integration.harness import EXAMPLES
from tests.system.agents_env import (
    Deployment,
    agent_request,
    agent_spec,
    make_deployment,
    restart,
    short_base,
    wait_until,
)

__all__ = ["make_deployment", "short_base"]

pytestmark = [pytest.mark.system, pytest.mark.podman]

SEED = json.loads((EXAMPLES / "plugins" / "text-formatter-seed.json").read_text())
PLUGIN_ID = SEED["id"].lower()
FORMAT = json.dumps({"text": "  hello   plugin world ", "style": "title"}).encode()


def plugin_dir(d: Deployment, cid: str, agent: str = "writer") -> Path:
    """The running plugin's /run/pacd-plugin as this host process sees it (through its
    container's root: the directory is a tmpfs in the container); a path that does not
    exist when the plugin does not run."""
    pid = d.runtime.init_pid(plugin_container_name(cid, PLUGIN_ID, agent))
    return Path(f"/proc/{pid}/root/run/pacd-plugin" if pid else "/nonexistent/pacd-plugin")


def plugin_socket(d: Deployment, cid: str, agent: str = "writer") -> Path:
    return plugin_dir(d, cid, agent) / "plugin.sock"


def daemon_plugin_sockets(d: Deployment) -> int:
    """How many plugin sockets (pacd.sock) the daemon listens on: bound through its
    descriptor of a plugin's directory, ``/proc/self/fd/<n>/pacd.sock``."""
    assert d.daemon.proc is not None
    pid = d.daemon.proc.pid
    mine = {os.stat(f"/proc/{pid}/fd/{fd}").st_ino for fd in os.listdir(f"/proc/{pid}/fd")
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")}
    count = 0
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if (len(fields) == 8 and int(fields[6]) in mine
                and fields[7].startswith("/proc/self/fd/")
                and fields[7].endswith("/pacd.sock")):
            count += 1
    return count


def listed(d: Deployment, cid: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = d.daemon.client().request(
        "GET", f"/v1/containers/{cid}/plugins")["plugins"]
    return result


def state_of(d: Deployment, cid: str) -> tuple[str, str]:
    [p] = listed(d, cid)
    return str(p["state"]), str(p["reason"])


def answers_format(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        reply = agent_request(path, "POST", "/format", FORMAT, timeout=5)
    except OSError:
        return False
    return reply.status == 200 and reply.json() == {"text": "Hello Plugin World",
                                                    "style": "title", "caller": ""}


@pytest.fixture
def home(make_deployment: Callable[..., Deployment], python_image: str
         ) -> Iterator[tuple[Deployment, str]]:
    d = make_deployment()
    spec = {"name": "home", "policy": {"allow_plugins": True},
            "agents": [agent_spec("writer", python_image)],
            "concerns": [{"name": "personal", "category": "personal", "scope": "local",
                          "agents": ["writer"], "cross_container": "isolated"}]}
    cid = str(d.create(spec)["id"])
    assert d.start(cid)["state"] == "running"
    yield d, cid


@pytest.fixture
def own_tag(podman_runtime: PodmanRuntime, plugin_image: str) -> Iterator[str]:
    """A reference of this test's own naming the reference plugin, removed afterwards."""
    repository = f"localhost/pacd-test-plugin-{uuid.uuid4().hex[:8]}"
    podman_runtime.tag_image(plugin_image, repository, "1")
    yield f"{repository}:1"
    with contextlib.suppress(NotFound):
        podman_runtime.remove_image(f"{repository}:1")


def submit(d: Deployment, cid: str, image: str | None) -> str:
    body: dict[str, Any] = {"agent": "writer", "schema": SEED}
    if image is not None:
        body["image"] = image
    queued = d.owner.authed().request("POST", f"/v1/containers/{cid}/plugins", body)
    return str(queued["approval_id"])


def test_approved_plugin_runs_hardened_as_the_approved_digest_and_answers_format(
        home: tuple[Deployment, str], plugin_image: str,
        podman_runtime: PodmanRuntime) -> None:
    d, cid = home
    digest = podman_runtime.inspect_image(plugin_image)["Id"]
    digest = digest if digest.startswith("sha256:") else f"sha256:{digest}"
    approval_id = submit(d, cid, plugin_image)

    # What the owner signs names the image's digest.
    detail = d.daemon.client().request("GET", f"/v1/approvals/{approval_id}")
    assert detail["payload"]["body"]["image"] == plugin_image
    assert detail["payload"]["body"]["image_digest"] == digest
    assert digest in detail["summary"]
    assert state_of(d, cid)[0] == "pending"
    assert not plugin_socket(d, cid).exists()

    assert d.owner.approve(approval_id)["state"] == "approved"
    wait_until(lambda: answers_format(plugin_socket(d, cid)), 60, "the plugin answering")
    assert state_of(d, cid) == ("running", "")
    # The container's own view (the tray's menu reads it) says the same, not the
    # state stored at approval.
    [shown] = d.daemon.client().request("GET", f"/v1/containers/{cid}")["plugins"]
    assert shown["state"] == "running"

    # An agent's hardening, pinned to the approved image id, no network.
    info = podman_runtime.inspect(plugin_container_name(cid, PLUGIN_ID, "writer"))
    host = info["HostConfig"]
    assert "sha256:" + info["Image"].removeprefix("sha256:") == digest
    assert info["Config"]["User"] == "1000:1000"
    assert host["ReadonlyRootfs"] is True
    assert host["CapAdd"] in (None, [])
    assert "ALL" in [c.upper().removeprefix("CAP_") for c in host["CapDrop"]] or \
        len(host["CapDrop"]) > 10
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] == 128
    assert host["Memory"] == 512 * 1024 * 1024
    assert host["NetworkMode"] == "none"
    # Nothing of the host is mounted: its directory is a 1 MiB tmpfs of its own.
    assert [m for m in info["Mounts"] if m.get("Type") == "bind"] == []
    pid = podman_runtime.init_pid(plugin_container_name(cid, PLUGIN_ID, "writer"))
    mounts = [line.split() for line in Path(f"/proc/{pid}/mounts").read_text().splitlines()]
    [own] = [m for m in mounts if m[1] == "/run/pacd-plugin"]
    assert own[2] == "tmpfs" and "size=1024k" in own[3].split(","), own
    assert stat.S_IMODE(os.stat(plugin_dir(d, cid)).st_mode) == 0o1733
    assert not (d.daemon.socket.parent / "plugins").exists()
    started = d.audit(action="plugin.start", target=cid, decision="allow")
    assert [e["details"]["image_digest"] for e in started] == [digest]

    # Stops and starts with its container.
    d.stop(cid)
    assert state_of(d, cid)[0] == "stopped"
    assert not answers_format(plugin_socket(d, cid))
    assert daemon_plugin_sockets(d) == 0
    d.start(cid)
    wait_until(lambda: answers_format(plugin_socket(d, cid)), 60, "the plugin answering again")

    # Survives a daemon restart like an agent: the same container, still answering.
    before = podman_runtime.inspect(plugin_container_name(cid, PLUGIN_ID, "writer"))["Id"]
    restart(d.daemon)
    assert state_of(d, cid) == ("running", "")
    assert podman_runtime.inspect(plugin_container_name(cid, PLUGIN_ID, "writer"))["Id"] \
        == before
    assert answers_format(plugin_socket(d, cid))
    # and its own socket to the (new) daemon is back
    assert exec_plugin(podman_runtime, cid, "whoami")["body"]["plugin"] == PLUGIN_ID
    # Once the restarted daemon has reconciled with Podman, the plugin's container is
    # known as the plugin's, not reported as an orphan.
    def status() -> dict[str, Any]:
        result: dict[str, Any] = d.daemon.client().request("GET", "/v1/status")
        return result

    wait_until(lambda: bool(status()["podman"]["connected"]), 30, "reconciling with Podman")
    assert status()["orphans"] == []

    # Uninstall: audited, container gone, listing empty; a second uninstall is 404.
    gone = d.owner.authed().request("DELETE",
                                    f"/v1/containers/{cid}/plugins/{quote(SEED['name'])}")
    assert gone == {"container_id": cid, "plugin_id": PLUGIN_ID, "agents": ["writer"],
                    "removed": True}
    assert podman_runtime.state(plugin_container_name(cid, PLUGIN_ID, "writer")) == "missing"
    assert not plugin_socket(d, cid).parent.exists()
    assert listed(d, cid) == []
    assert len(d.audit(action="plugin.uninstall", target=cid, decision="allow")) == 1
    with pytest.raises(NotFound):
        d.owner.authed().request("DELETE", f"/v1/containers/{cid}/plugins/{PLUGIN_ID}")


def test_plugin_whose_image_changed_after_approval_is_refused_not_started(
        home: tuple[Deployment, str], own_tag: str, busybox_image: str,
        podman_runtime: PodmanRuntime) -> None:
    d, cid = home
    approved = podman_runtime.inspect_image(own_tag)["Id"]
    approval_id = submit(d, cid, own_tag)
    d.stop(cid)
    assert d.owner.approve(approval_id)["state"] == "approved"
    assert state_of(d, cid)[0] == "approved"

    # The reference now names other content: the plugin must not run.
    repository, tag = own_tag.rsplit(":", 1)
    podman_runtime.tag_image(busybox_image, repository, tag)
    assert podman_runtime.inspect_image(own_tag)["Id"] != approved
    assert d.start(cid)["state"] == "running"  # the agents run regardless
    state, reason = state_of(d, cid)
    assert state == "refused"
    assert approved.removeprefix("sha256:") in reason
    assert podman_runtime.state(plugin_container_name(cid, PLUGIN_ID, "writer")) == "missing"
    denied = d.audit(action="plugin.start", target=cid, decision="deny")
    assert len(denied) == 1
    assert denied[0]["details"]["state"] == "refused"


def test_image_not_in_local_storage_is_refused_at_submission_and_never_pulled(
        home: tuple[Deployment, str]) -> None:
    d, cid = home
    with pytest.raises(NotFound, match="never pulls"):
        submit(d, cid, "localhost/pacd-test-no-such-plugin:1")
    assert listed(d, cid) == []


def test_plugin_submitted_without_image_is_approved_but_never_runs(
        home: tuple[Deployment, str]) -> None:
    d, cid = home
    assert d.owner.approve(submit(d, cid, None))["state"] == "approved"
    state, reason = state_of(d, cid)
    assert (state, reason) == ("approved", "approved without an image: it does not run")
    assert not plugin_socket(d, cid).parent.exists()


@pytest.fixture
def pair(make_deployment: Callable[..., Deployment], python_image: str, plugin_image: str
         ) -> Iterator[tuple[Deployment, str]]:
    """writer (the plugin approved for it) and reader, both running the reference agent;
    the Text Formatter approved for writer and running."""
    d = make_deployment()
    spec = {"name": "pair", "policy": {"allow_plugins": True},
            "agents": [agent_spec("writer", python_image),
                       agent_spec("reader", python_image)],
            "concerns": [{"name": "personal", "category": "personal", "scope": "local",
                          "agents": ["writer", "reader"], "cross_container": "isolated"},
                         {"name": "diary", "category": "personal", "scope": "local",
                          "agents": ["reader"], "cross_container": "isolated"}]}
    cid = str(d.create(spec)["id"])
    assert d.start(cid)["state"] == "running"
    assert d.owner.approve(submit(d, cid, plugin_image))["state"] == "approved"
    wait_until(lambda: answers_format(plugin_socket(d, cid)), 60, "the plugin answering")
    yield d, cid


def call(d: Deployment, cid: str, agent: str, url: str, body: bytes = FORMAT,
         method: str = "POST", headers: dict[str, str] | None = None) -> Any:
    return agent_request(d.agent(cid, agent), method, url, body,
                         headers={"Content-Type": "application/json", **(headers or {})})


def test_agent_calls_its_plugin_through_its_socket_with_the_daemon_naming_the_caller(
        pair: tuple[Deployment, str]) -> None:
    d, cid = pair
    # By the route the container's OpenAPI document lists, by id or by name; a forged
    # identity header never reaches the plugin.
    openapi = d.daemon.client().request("GET", f"/v1/containers/{cid}/openapi")
    assert list(openapi["paths"]) == ["/v1/plugins/text-formatter/format"]
    assert openapi["paths"]["/v1/plugins/text-formatter/format"]["post"]["x-rate-limit"] == {
        "requests_per_minute": 60, "burst_size": 10}
    for ref in ("text-formatter", PLUGIN_ID, quote(SEED["name"])):
        reply = call(d, cid, "writer", f"/v1/plugins/{ref}/format",
                     headers={"X-Pacd-Agent": f"{cid}/reader"})
        assert reply.status == 200, reply.body
        assert reply.json() == {"text": "Hello Plugin World", "style": "title",
                                "caller": f"{cid}/writer"}
    entries = d.audit(actor=f"agent:{cid}/writer", action="agent.plugin.call",
                      decision="allow")
    assert len(entries) == 3
    assert entries[0]["details"]["status"] == 200
    assert entries[0]["details"]["bytes_in"] == len(FORMAT)
    assert entries[0]["details"]["bytes_out"] > 0


def test_another_agent_is_forbidden_and_unknown_plugins_or_endpoints_are_404(
        pair: tuple[Deployment, str]) -> None:
    d, cid = pair
    other = call(d, cid, "reader", f"/v1/plugins/{PLUGIN_ID}/format")
    assert other.status == 403 and other.json()["error"]["code"] == "forbidden"
    assert call(d, cid, "writer", "/v1/plugins/no-such-plugin/format").status == 404
    assert call(d, cid, "writer", f"/v1/plugins/{PLUGIN_ID}/nothing").status == 404
    # the endpoint is POST only
    assert call(d, cid, "writer", f"/v1/plugins/{PLUGIN_ID}/format", b"",
                method="GET").status == 404
    denied = d.audit(action="agent.plugin.call", decision="deny")
    assert [(e["actor"], e["details"]["code"]) for e in denied] == [
        (f"agent:{cid}/reader", "forbidden"), (f"agent:{cid}/writer", "not_found"),
        (f"agent:{cid}/writer", "not_found"), (f"agent:{cid}/writer", "not_found")]


def test_past_the_burst_calls_get_429_with_retry_after(pair: tuple[Deployment, str]) -> None:
    """The seed's /format allows a burst of 10 and 60 a minute (one a second): calls
    made faster than that are refused once the burst is spent."""
    d, cid = pair
    sock = d.agent(cid, "writer")
    url = f"/v1/plugins/{PLUGIN_ID}/format"
    start = time.monotonic()
    statuses: list[int] = []
    limited = None
    while limited is None and len(statuses) < 100:
        reply = agent_request(sock, "POST", url, FORMAT)
        statuses.append(reply.status)
        if reply.status != 200:
            limited = reply
    elapsed = time.monotonic() - start
    assert limited is not None and limited.status == 429, statuses
    assert limited.json()["error"]["code"] == "rate_limited"
    assert limited.headers["Retry-After"] == "1"
    # exactly the burst, plus at most what refilled (one a second) while calling
    ok = statuses.count(200)
    assert 10 <= ok <= 10 + math.floor(elapsed) + 1, (ok, elapsed)
    refused = d.audit(actor=f"agent:{cid}/writer", action="agent.plugin.call", decision="deny")
    assert [e["details"]["code"] for e in refused] == ["rate_limited"]
    # the other agent's bucket is its own: refused for another reason, not the rate
    assert call(d, cid, "reader", url).status == 403


def test_uninstall_ends_calls_new_calls_get_404(pair: tuple[Deployment, str],
                                                podman_runtime: PodmanRuntime) -> None:
    d, cid = pair
    assert call(d, cid, "writer", f"/v1/plugins/{PLUGIN_ID}/format").status == 200
    # A call the plugin holds for 50 s is in flight when the plugin is uninstalled.
    slow = json.dumps({"text": "x", "delay": 50}).encode()
    sock = d.agent(cid, "writer")
    held: list[Any] = []
    caller = threading.Thread(target=lambda: held.append(
        agent_request(sock, "POST", f"/v1/plugins/{PLUGIN_ID}/format", slow, timeout=120)))
    caller.start()
    wait_until(lambda: _plugin_busy(podman_runtime, cid), 30,
               "the slow call reaching the plugin")
    started = time.monotonic()
    d.owner.authed().request("DELETE", f"/v1/containers/{cid}/plugins/{PLUGIN_ID}")
    caller.join(60)
    assert not caller.is_alive()
    ended = held[0]
    assert (ended.status, ended.json()["error"]["code"]) == (502, "plugin_unavailable")
    assert time.monotonic() - started < 40  # ended by the uninstall, not by the delay
    after = call(d, cid, "writer", f"/v1/plugins/{PLUGIN_ID}/format")
    assert after.status == 404 and after.json()["error"]["code"] == "not_found"


def _plugin_busy(runtime: PodmanRuntime, cid: str) -> bool:
    """Whether the plugin is handling a call: the reference plugin (the child of the
    container's init) runs one thread per open connection besides its main one."""
    pid = runtime.init_pid(plugin_container_name(cid, PLUGIN_ID, "writer"))
    assert pid is not None
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return any(len(os.listdir(f"/proc/{child}/task")) >= 2 for child in children)


def test_a_plugin_that_stopped_answering_is_502(pair: tuple[Deployment, str],
                                                podman_runtime: PodmanRuntime) -> None:
    d, cid = pair
    assert daemon_plugin_sockets(d) == 1
    # Killed outright: its socket stays behind (the daemon keeps its directory until it
    # is started again or removed), nobody listens on it.
    podman_runtime.kill(plugin_container_name(cid, PLUGIN_ID, "writer"))
    wait_until(lambda: podman_runtime.state(plugin_container_name(cid, PLUGIN_ID, "writer"))
               != "running", 30, "the plugin stopping")
    reply = call(d, cid, "writer", f"/v1/plugins/{PLUGIN_ID}/format")
    assert reply.status == 502 and reply.json()["error"]["code"] == "plugin_unavailable"
    # The daemon saw it die (Podman's events): its socket to the daemon is closed.
    wait_until(lambda: daemon_plugin_sockets(d) == 0, 30,
               "the dead plugin's daemon socket closing")
    assert state_of(d, cid)[0] == "stopped"
    reply = call(d, cid, "writer", f"/v1/plugins/{PLUGIN_ID}/format")
    assert reply.status == 502 and reply.json()["error"]["code"] == "plugin_unavailable"


def exec_plugin(runtime: PodmanRuntime, cid: str, *args: str) -> Any:
    """The reference plugin's own client, run inside the plugin's container."""
    _code, out = runtime.exec_run(plugin_container_name(cid, PLUGIN_ID, "writer"),
                                  ["/usr/bin/python3", "/plugin/plugin.py", *args], timeout=60)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, out
    return json.loads(lines[-1])


def test_plugin_has_its_own_socket_for_its_agents_concerns_within_max_data_access(
        pair: tuple[Deployment, str], podman_runtime: PodmanRuntime) -> None:
    d, cid = pair
    assert exec_plugin(podman_runtime, cid, "whoami") == {"status": 200, "body": {
        "container": cid, "container_name": "pair", "plugin": PLUGIN_ID, "agent": "writer",
        "max_data_access": "readOnly", "concerns": ["personal"]}}
    # What its agent stored, it reads.
    assert agent_request(d.agent(cid, "writer"), "PUT", "/v1/data/personal/note",
                         b"hello").status == 204
    assert exec_plugin(podman_runtime, cid, "get", "personal", "note") == {
        "status": 200, "body": "hello"}
    # readOnly: no write, even where its agent may write.
    put = exec_plugin(podman_runtime, cid, "put", "personal", "note", "changed")
    assert put["status"] == 403, put
    assert put["body"]["error"]["code"] == "forbidden"
    assert agent_request(d.agent(cid, "writer"), "GET", "/v1/data/personal/note").body == \
        b"hello"
    # Not its agent's concern (another agent's), however it asks.
    diary = exec_plugin(podman_runtime, cid, "get", "diary", "x")
    assert (diary["status"], diary["body"]["error"]["code"]) == (403, "forbidden")
    entries = d.audit(actor=f"plugin:{cid}/{PLUGIN_ID}")
    assert [(e["action"], e["decision"]) for e in entries] == [
        ("agent.whoami", "allow"), ("agent.data.read", "allow"),
        ("agent.data.write", "deny"), ("agent.data.read", "deny")]
    # A host process (this test) is not the plugin: refused by its PID namespace.
    host = agent_request(plugin_socket(d, cid).parent / "pacd.sock", "GET", "/v1/whoami")
    assert (host.status, host.json()["error"]["code"]) == (403, "peer_refused")


def test_a_container_under_the_plugins_name_running_other_content_is_removed_not_adopted(
        home: tuple[Deployment, str], plugin_image: str, busybox_image: str,
        podman_runtime: PodmanRuntime) -> None:
    d, cid = home
    assert d.owner.approve(submit(d, cid, plugin_image))["state"] == "approved"
    wait_until(lambda: answers_format(plugin_socket(d, cid)), 60, "the plugin answering")
    spec = d.show(cid)["spec"]
    name = plugin_container_name(cid, PLUGIN_ID, "writer")
    # While the daemon is down, something else takes the plugin's name and labels.
    assert d.daemon.stop(timeout=30) == 0
    model = ContainerRecord(cid, "home", d.owner_id, spec, 0.0).model()
    writer = model.agent("writer")
    assert writer is not None
    impostor = dataclasses.replace(
        plugin_run_spec(model, writer, d.owner_id, PLUGIN_ID, image=busybox_image),
        command=("/bin/busybox", "sleep", "600"))
    podman_runtime.run_agent(impostor, replace=True)
    assert podman_runtime.state(name) == "running"
    d.daemon.start()
    wait_until(lambda: state_of(d, cid)[0] == "refused", 30, "the impostor being refused")
    assert podman_runtime.state(name) == "missing"
    denied = d.audit(action="plugin.start", target=cid, decision="deny")
    assert len(denied) == 1 and "not the approved" in denied[0]["reason"]


def test_a_running_plugin_with_a_host_directory_is_started_afresh_with_its_capped_one(
        home: tuple[Deployment, str], plugin_image: str, podman_runtime: PodmanRuntime
        ) -> None:
    """A plugin container made with a host directory at /run/pacd-plugin (as pacd made
    them before the directory was capped) is not served as it is: a restarted daemon
    removes it and starts the approved image with its tmpfs."""
    d, cid = home
    assert d.owner.approve(submit(d, cid, plugin_image))["state"] == "approved"
    wait_until(lambda: answers_format(plugin_socket(d, cid)), 60, "the plugin answering")
    spec = d.show(cid)["spec"]
    name = plugin_container_name(cid, PLUGIN_ID, "writer")
    digest = podman_runtime.inspect(name)["Image"]
    assert d.daemon.stop(timeout=30) == 0
    model = ContainerRecord(cid, "home", d.owner_id, spec, 0.0).model()
    writer = model.agent("writer")
    assert writer is not None
    # where pacd put a plugin's directory then: plugins/<container name>/ by the socket
    host_dir = d.daemon.socket.parent / "plugins" / name
    host_dir.mkdir(parents=True, mode=0o700)
    host_dir.chmod(0o1777)
    current = plugin_run_spec(model, writer, d.owner_id, PLUGIN_ID, image=digest)
    old = dataclasses.replace(current, tmpfs=current.tmpfs[:1],
                              mounts=(BindMount(str(host_dir), "/run/pacd-plugin"),))
    before = podman_runtime.run_agent(old, replace=True)
    wait_until(lambda: (host_dir / "plugin.sock").exists(), 60, "the old-style plugin serving")
    d.daemon.start()

    def replaced() -> bool:
        return (podman_runtime.state(name) == "running"
                and podman_runtime.inspect(name)["Id"] != before
                and answers_format(plugin_socket(d, cid)))

    wait_until(replaced, 60, "the plugin started afresh")
    info = podman_runtime.inspect(name)
    assert [m for m in info["Mounts"] if m.get("Type") == "bind"] == []
    assert "size=1048576" in info["HostConfig"]["Tmpfs"]["/run/pacd-plugin"]
    assert state_of(d, cid) == ("running", "")
    # The old host directory, and what the plugin wrote there, is gone.
    assert not host_dir.parent.exists()
