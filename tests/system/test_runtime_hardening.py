"""Hardened agent containers on a real Podman, checked from outside (inspect) and
from inside (probes run in the container)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacd.core.models import (
    AgentDomain,
    Capability,
    ConcernCategory,
    ConcernDomain,
    IsolationLevel,
    PersonalAIContainer,
    SecurityPolicy,
)
from pacd.errors import Conflict, NotFound
from pacd.runtime.hardening import (
    AGENT_SOCKET_IN_CONTAINER,
    LABEL_AGENT,
    LABEL_CONTAINER_ID,
    LABEL_OWNER_ID,
    PACD_LABELS,
    AgentRunSpec,
    agent_run_spec,
)
from pacd.runtime.podman import PodmanRuntime, RuntimeEvent
from tests.podman_env import TEST_LABEL, AgentSocket, tag_for_run

pytestmark = [pytest.mark.system, pytest.mark.podman]

SLEEP = ("/bin/busybox", "sleep", "3600")


def make_container(*agents: AgentDomain, policy: SecurityPolicy | None = None
                   ) -> PersonalAIContainer:
    return PersonalAIContainer(
        id=str(uuid.uuid4()), name="home", owner_id=str(uuid.uuid4()), agents=agents,
        concerns=(ConcernDomain(id="c1", name="personal", category=ConcernCategory.personal,
                                connected_agents=tuple(a.name for a in agents)),),
        policy=policy or SecurityPolicy.default(),
    )


def agent(name: str, isolation: IsolationLevel = IsolationLevel.strict,
          caps: tuple[Capability, ...] = (Capability.textGeneration,)) -> AgentDomain:
    return AgentDomain(id=f"id-{name}", name=name, image="unused", capabilities=caps,
                       isolation=isolation)


@pytest.fixture
def agent_socket() -> Iterator[AgentSocket]:
    sock = AgentSocket({"container": "c", "agent": "writer", "capabilities": [],
                        "concerns": ["personal"]})
    try:
        yield sock
    finally:
        sock.close()


def run(runtime: PodmanRuntime, container: PersonalAIContainer, name: str, sock: Path,
        image: str, run_label: str, *, command: tuple[str, ...] | None = SLEEP,
        **limits: int) -> tuple[str, AgentRunSpec]:
    member = container.agent(name)
    assert member is not None
    spec = tag_for_run(agent_run_spec(container, member, container.owner_id, sock, image,
                                      command=command, **limits),
                       run_label)
    return runtime.run_agent(spec), spec


def sh(runtime: PodmanRuntime, name: str, script: str) -> tuple[int, str]:
    return runtime.exec_run(name, ["/bin/busybox", "sh", "-c", script])


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP listener on all host addresses: a target a container with a network
    can reach through its gateway, so 'cannot connect' is not just 'nothing there'."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # All addresses: it must be reachable from the container bridge.
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        server.close()


# --- strict agent ----------------------------------------------------------------------


@pytest.mark.usefixtures("podman_cleanup")
def test_strict_agent_is_locked_down_inside(podman_runtime: PodmanRuntime, busybox_image: str,
                                            agent_socket: AgentSocket, run_label: str) -> None:
    container = make_container(agent("writer"))
    cid, spec = run(podman_runtime, container, "writer", agent_socket.path, busybox_image,
                    run_label)
    assert podman_runtime.state(cid) == "running"

    code, out = sh(podman_runtime, cid, "ls /sys/class/net")
    assert code == 0 and out.split() == ["lo"]
    code, out = sh(podman_runtime, cid, "ip -o link show")
    assert code == 0
    assert [line.split(":")[1].strip() for line in out.splitlines()] == ["lo"]

    code, out = sh(podman_runtime, cid, "id -u; id -g")
    assert (code, out.split()) == (0, ["1000", "1000"])

    code, out = sh(podman_runtime, cid, "grep -E '^(CapEff|CapBnd|CapPrm|NoNewPrivs|Seccomp):' "
                                        "/proc/self/status")
    status = dict(line.split(":\t") for line in out.strip().splitlines())
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # Podman's default seccomp filter is on

    code, out = sh(podman_runtime, cid, "echo x > /pwned")
    assert code != 0 and "Read-only file system" in out
    code, out = sh(podman_runtime, cid, "touch /etc/pwned")
    assert code != 0

    # /tmp is writable scratch space, but nothing written there can be run.
    code, out = sh(podman_runtime, cid, "cp /bin/busybox /tmp/bb && chmod +x /tmp/bb && echo ok")
    assert (code, out.strip()) == (0, "ok")
    code, out = sh(podman_runtime, cid, "/tmp/bb true")
    assert code != 0 and "denied" in out.lower()
    code, out = sh(podman_runtime, cid, "grep ' /tmp ' /proc/mounts")
    assert "tmpfs" in out and "noexec" in out and "nosuid" in out and "nodev" in out

    # The agent socket is there, as the environment says.
    code, out = sh(podman_runtime, cid, f"test -S {AGENT_SOCKET_IN_CONTAINER} && "
                                        "echo $PACD_AGENT_SOCKET $CARBON_BASED_AUTH")
    assert (code, out.split()) == (0, [AGENT_SOCKET_IN_CONTAINER, "required"])
    assert spec.network is False


@pytest.mark.usefixtures("podman_cleanup")
def test_no_agent_can_connect_out_directly(podman_runtime: PodmanRuntime, busybox_image: str,
                                           agent_socket: AgentSocket, run_label: str,
                                           host_listener: int) -> None:
    policy = SecurityPolicy.custom(allow_external_apis=True)
    container = make_container(
        agent("writer"),
        agent("scout", IsolationLevel.managed, (Capability.networkAccess,)),
        policy=policy,
    )
    strict_id, _ = run(podman_runtime, container, "writer", agent_socket.path, busybox_image,
                       run_label)
    scout_id, _ = run(podman_runtime, container, "scout", agent_socket.path, busybox_image,
                      run_label)
    # Control: the same image in a container Podman does give a network (which pacd
    # never asks for) reaches the host listener through its gateway.
    member = container.agent("scout")
    assert member is not None
    control = dataclasses.replace(
        tag_for_run(agent_run_spec(container, member, container.owner_id, agent_socket.path,
                                   busybox_image, command=SLEEP), run_label),
        name=f"pacd-control-{uuid.uuid4().hex[:8]}", network=True)
    open_id = podman_runtime.run_agent(control)
    code, gateway = sh(podman_runtime, open_id, "ip route | awk '/^default/ {print $3}'")
    gateway = gateway.strip()
    assert code == 0 and gateway, "the control container has a default route"
    probe = f"nc -w 3 {gateway} {host_listener} </dev/null && echo CONNECTED"
    code, out = sh(podman_runtime, open_id, probe)
    assert "CONNECTED" in out, f"control connect failed: {out}"

    # The strict agent and the one whose policy lets it out alike: no route.
    for cid in (strict_id, scout_id):
        code, out = sh(podman_runtime, cid, probe)
        assert code != 0 and "CONNECTED" not in out
        code, out = sh(podman_runtime, cid, "ip route")
        assert out.strip() == ""


@pytest.mark.usefixtures("podman_cleanup")
def test_hardening_is_visible_in_inspect(podman_runtime: PodmanRuntime, busybox_image: str,
                                         agent_socket: AgentSocket, run_label: str) -> None:
    container = make_container(agent("writer"))
    cid, spec = run(podman_runtime, container, "writer", agent_socket.path, busybox_image,
                    run_label, pids_limit=48, memory_limit_bytes=96 * 1024 * 1024)
    info = podman_runtime.inspect(cid)
    host = info["HostConfig"]
    assert info["Name"] == spec.name == f"pacd-{container.id.replace('-', '')[:12]}-writer"
    assert info["Config"]["User"] == "1000:1000"
    assert host["ReadonlyRootfs"] is True
    assert host["PidsLimit"] == 48
    assert host["Memory"] == 96 * 1024 * 1024
    assert host["MemorySwap"] == 96 * 1024 * 1024  # no swap on top of the limit
    assert host["Init"] is True
    assert host["CapAdd"] in ([], None)
    assert "CAP_NET_RAW" in host["CapDrop"] and "CAP_SETUID" in host["CapDrop"]
    assert any(opt.startswith("no-new-privileges") for opt in host["SecurityOpt"])
    assert host["NetworkMode"] == "none"
    assert host["Privileged"] is False
    assert not info["NetworkSettings"].get("Ports")
    labels = info["Config"]["Labels"]
    assert {k: labels[k] for k in PACD_LABELS} == dict(PACD_LABELS)
    assert labels[LABEL_OWNER_ID] == container.owner_id
    assert labels[LABEL_CONTAINER_ID] == container.id
    assert labels[LABEL_AGENT] == "writer"
    socket_mounts = [m for m in info["Mounts"] if m["Destination"] == AGENT_SOCKET_IN_CONTAINER]
    assert [m["Source"] for m in socket_mounts] == [str(agent_socket.path)]

    # The limits also hold from inside: the cgroup says so, and forking past it fails.
    code, out = sh(podman_runtime, cid,
                   "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max")
    assert (code, out.strip()) == (0, "48")
    _, out = sh(podman_runtime, cid,
                   "i=0; while [ $i -lt 80 ]; do sleep 20 & i=$((i+1)); done 2>&1; echo done")
    assert "can't fork" in out or "Resource temporarily unavailable" in out


# --- network only where policy and capability allow ----------------------------------------


@pytest.mark.usefixtures("podman_cleanup")
def test_networked_agent_gets_loopback_only_and_the_proxy_address(
        podman_runtime: PodmanRuntime, busybox_image: str, agent_socket: AgentSocket,
        run_label: str) -> None:
    policy = SecurityPolicy.custom(allow_external_apis=True, allowed_network_ports=[8080, 9443])
    container = make_container(
        agent("scout", IsolationLevel.collaborative, (Capability.webSearch,)),
        agent("thinker", IsolationLevel.collaborative, (Capability.dataAnalysis,)),
        policy=policy,
    )
    scout, spec = run(podman_runtime, container, "scout", agent_socket.path, busybox_image,
                      run_label)
    thinker, _ = run(podman_runtime, container, "thinker", agent_socket.path, busybox_image,
                     run_label)
    # allowed_network_ports are where the proxy may connect to, not ports to publish.
    _, out = sh(podman_runtime, scout, "ls /sys/class/net")
    assert out.split() == ["lo"]
    assert not podman_runtime.inspect(scout)["NetworkSettings"].get("Ports")
    assert spec.published_ports == ()
    _, out = sh(podman_runtime, scout, "echo $HTTP_PROXY $https_proxy")
    assert out.split() == ["http://127.0.0.1:3128"] * 2

    # Same policy, no network capability: loopback only, and no proxy to use.
    _, out = sh(podman_runtime, thinker, "ls /sys/class/net; echo proxy=$HTTP_PROXY")
    assert out.split() == ["lo", "proxy="]
    assert not podman_runtime.inspect(thinker)["NetworkSettings"].get("Ports")


# --- lifecycle, state and events -----------------------------------------------------------


def _collect_events(runtime: PodmanRuntime, since: float, stop: threading.Event,
                    out: list[RuntimeEvent], errors: list[BaseException]) -> threading.Thread:
    def loop() -> None:
        try:
            out.extend(runtime.events(since, stop))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


@pytest.mark.usefixtures("podman_cleanup")
def test_kill_behind_our_back_is_seen_by_state_and_events(
        podman_runtime: PodmanRuntime, busybox_image: str, agent_socket: AgentSocket,
        run_label: str) -> None:
    container = make_container(agent("writer"))
    since = time.time()
    stop = threading.Event()
    events: list[RuntimeEvent] = []
    errors: list[BaseException] = []
    thread = _collect_events(podman_runtime, since, stop, events, errors)
    try:
        cid, _ = run(podman_runtime, container, "writer", agent_socket.path, busybox_image,
                     run_label)
        assert podman_runtime.state(cid) == "running"
        pid = podman_runtime.inspect(cid)["State"]["Pid"]
        assert pid > 0
        os.kill(pid, signal.SIGKILL)  # outside pacd: straight to the process
        assert _wait_for(lambda: podman_runtime.state(cid) == "exited", 5.0)
        assert _wait_for(lambda: any(e.action == "died" and e.container_id == cid
                                     for e in events), 5.0), events
    finally:
        stop.set()
        thread.join(3.0)
    assert not thread.is_alive(), "events() did not stop promptly"
    assert not errors
    died = next(e for e in events if e.action == "died" and e.container_id == cid)
    assert died.exit_code == 137
    assert died.labels[LABEL_CONTAINER_ID] == container.id
    assert died.labels[LABEL_AGENT] == "writer"
    assert any(e.action == "start" and e.container_id == cid for e in events)


@pytest.mark.usefixtures("podman_cleanup")
def test_events_ignore_foreign_containers_and_stop_when_idle(
        podman_runtime: PodmanRuntime, busybox_image: str, agent_socket: AgentSocket,
        run_label: str) -> None:
    foreign = AgentRunSpec(name=f"pacd-test-foreign-{run_label[:8]}", image=busybox_image,
                           labels={TEST_LABEL: run_label}, env={}, mounts=(), command=SLEEP)
    stop = threading.Event()
    events: list[RuntimeEvent] = []
    errors: list[BaseException] = []
    thread = _collect_events(podman_runtime, time.time(), stop, events, errors)
    cid = podman_runtime.run_agent(foreign)
    podman_runtime.remove(cid, force=True)
    assert podman_runtime.state(cid) == "missing"
    # Positive control: one of our own containers, started after the foreign one was
    # removed. Podman's event stream is in order, so once our start has arrived the
    # foreign container's events would have arrived before it.
    own, _ = run(podman_runtime, make_container(agent("writer")), "writer",
                 agent_socket.path, busybox_image, run_label)
    try:
        assert _wait_for(lambda: any(e.action == "start" and e.container_id == own
                                     for e in events), 10.0), events
    finally:
        podman_runtime.remove(own, force=True)
        stop.set()
        thread.join(3.0)
    assert not thread.is_alive()
    assert not errors
    assert all(e.container_id != cid for e in events)
    assert any(e.container_id == own for e in events)


@pytest.mark.usefixtures("podman_cleanup")
def test_lifecycle_stop_remove_list_and_conflicts(
        podman_runtime: PodmanRuntime, busybox_image: str, agent_socket: AgentSocket,
        run_label: str) -> None:
    container = make_container(agent("writer"), agent("reader"))
    cid, spec = run(podman_runtime, container, "writer", agent_socket.path, busybox_image,
                    run_label)
    listed = podman_runtime.list_labelled({LABEL_CONTAINER_ID: container.id})
    assert [(c.name, c.id, c.state) for c in listed] == [(spec.name, cid, "running")]
    assert listed[0].labels[LABEL_AGENT] == "writer"

    with pytest.raises(Conflict):
        podman_runtime.run_agent(spec)
    assert len(podman_runtime.list_labelled({LABEL_CONTAINER_ID: container.id})) == 1

    podman_runtime.stop(cid, timeout=1)
    assert podman_runtime.state(cid) == "exited"
    podman_runtime.stop(cid, timeout=1)  # stopping a stopped container is fine

    new_id = podman_runtime.run_agent(spec, replace=True)
    assert new_id != cid and podman_runtime.state(new_id) == "running"
    assert podman_runtime.state(cid) == "missing"

    podman_runtime.remove(new_id)
    assert podman_runtime.state(spec.name) == "missing"
    assert podman_runtime.list_labelled({LABEL_CONTAINER_ID: container.id}) == []
    with pytest.raises(NotFound):
        podman_runtime.stop(spec.name)
    with pytest.raises(NotFound):
        podman_runtime.remove(spec.name)
    podman_runtime.remove(spec.name, missing_ok=True)

    # replace never removes a container pacd did not label as its own.
    foreign = AgentRunSpec(name=spec.name, image=busybox_image,
                           labels={TEST_LABEL: run_label}, env={}, mounts=(), command=SLEEP)
    foreign_id = podman_runtime.run_agent(foreign)
    with pytest.raises(Conflict):
        podman_runtime.run_agent(spec, replace=True)
    assert podman_runtime.state(foreign_id) == "running"


@pytest.mark.usefixtures("podman_cleanup")
def test_missing_image_is_not_found_and_leaves_nothing(
        podman_runtime: PodmanRuntime, agent_socket: AgentSocket, run_label: str) -> None:
    container = make_container(agent("writer"))
    with pytest.raises(NotFound) as info:
        run(podman_runtime, container, "writer", agent_socket.path,
            "localhost/pacd-test-no-such-image:1", run_label)
    assert "image" in info.value.message
    assert podman_runtime.list_labelled({LABEL_CONTAINER_ID: container.id}) == []


# --- the reference agent through its socket ---------------------------------------------


@pytest.mark.usefixtures("podman_cleanup")
def test_reference_agent_uses_its_socket(podman_runtime: PodmanRuntime, python_image: str,
                                         agent_socket: AgentSocket, run_label: str) -> None:
    container = make_container(agent("writer"))
    cid, _ = run(podman_runtime, container, "writer", agent_socket.path, python_image,
                 run_label, command=("/bin/busybox", "sleep", "3600"))

    def agent_cli(*args: str) -> tuple[int, dict[str, object]]:
        code, out = podman_runtime.exec_run(cid, ["python3", "/agent/agent.py", *args])
        return code, json.loads(out)

    code, who = agent_cli("whoami")
    assert (code, who["agent"], who["concerns"]) == (0, "writer", ["personal"])
    code, put = agent_cli("put", "personal", "note", "hello from uid 1000")
    assert (code, put["stored"], put["status"]) == (0, True, 204)
    assert agent_socket.server.data[("personal", "note")] == b"hello from uid 1000"
    code, got = agent_cli("get", "personal", "note")
    assert (code, got["value"]) == (0, "hello from uid 1000")
    code, refused = agent_cli("get", "work", "note")
    assert code == 1 and refused["status"] == 403
    code, absent = agent_cli("get", "personal", "missing")
    assert code == 1 and absent["status"] == 404


@pytest.mark.usefixtures("podman_cleanup")
def test_reference_agent_image_default_command_serves(
        podman_runtime: PodmanRuntime, python_image: str, agent_socket: AgentSocket,
        run_label: str) -> None:
    container = make_container(agent("writer"))
    cid, _ = run(podman_runtime, container, "writer", agent_socket.path, python_image,
                 run_label, command=None)
    assert _wait_for(lambda: ("GET", "/v1/messages") in agent_socket.server.requests, 15.0), (
        agent_socket.server.requests, podman_runtime.state(cid))
    assert agent_socket.server.requests[0] == ("GET", "/v1/whoami")
    assert podman_runtime.state(cid) == "running"
