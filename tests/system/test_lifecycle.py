"""Container lifecycle against real Podman: start, stop, remove, reconcile, orphans.

The daemon follows Podman's event stream, so a container killed behind its
back shows as stopped (and loses its socket) within seconds, and a container
with pacd's labels that pacd does not know is reported, never adopted.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from pacd.core.models import AgentDomain, ConcernCategory, ConcernDomain, PersonalAIContainer
from pacd.core.models import SecurityPolicy as Policy
from pacd.errors import RuntimeUnavailable
from pacd.runtime.hardening import agent_run_spec
from tests.integration.harness import DaemonProcess, EventCollector, Owner
from tests.system.agents_env import (
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


def two_agents(d: Deployment, image: str) -> str:
    spec = make_spec("pair", [agent_spec("alpha", image), agent_spec("beta", image)],
                     [{"name": "notes", "category": "personal", "scope": "local",
                       "agents": ["alpha", "beta"], "cross_container": "isolated"}])
    return str(d.create(spec)["id"])


def test_start_stop_remove(make_deployment: Callable[..., Deployment],
                           busybox_image: str) -> None:
    d = make_deployment()
    cid = two_agents(d, busybox_image)
    assert d.agent_states(cid) == {"alpha": "missing", "beta": "missing"}

    view = d.start(cid)
    assert view["state"] == "running"
    assert d.agent_states(cid) == {"alpha": "running", "beta": "running"}
    for agent in ("alpha", "beta"):
        inspect = d.runtime.inspect(d.podman_name(cid, agent))
        assert inspect["State"]["Status"] == "running"
        assert inspect["Config"]["Labels"]["com.luciverse.container-id"] == cid
        assert inspect["Config"]["User"] == "1000:1000"
        assert d.socket(cid, agent).exists()
    # Starting again is harmless: same containers, still running.
    first = d.runtime.inspect(d.podman_name(cid, "alpha"))["Id"]
    d.start(cid)
    assert d.runtime.inspect(d.podman_name(cid, "alpha"))["Id"] == first

    assert agent_request(d.agent(cid, "alpha"), "PUT", "/v1/data/notes/k",
                         b"clear-text-marker").status == 204
    with sqlite3.connect(f"file:{d.daemon.home / 'state.sqlite3'}?mode=ro", uri=True) as db:
        stored = db.execute("SELECT value FROM sealed_data WHERE container = ?",
                            (cid,)).fetchall()
    assert len(stored) == 1
    assert b"clear-text-marker" not in stored[0][0]  # sealed, not in clear

    view = d.stop(cid)
    assert view["state"] == "stopped"
    assert d.agent_states(cid) == {"alpha": "stopped", "beta": "stopped"}
    assert not d.socket(cid, "alpha").exists()  # no socket for a stopped agent

    # Restarting replaces the containers and the data is still there.
    d.start(cid)
    assert agent_request(d.agent(cid, "alpha"), "GET", "/v1/data/notes/k").body == \
        b"clear-text-marker"
    assert d.runtime.inspect(d.podman_name(cid, "alpha"))["Id"] != first

    d.owner.authed().request("DELETE", f"/v1/containers/{cid}")
    for agent in ("alpha", "beta"):
        assert d.runtime.state(d.podman_name(cid, agent)) == "missing"
    assert not (d.daemon.socket.parent / "agents" / cid).exists()
    # Its sealed values and data keys are gone too (read from the state database).
    with sqlite3.connect(f"file:{d.daemon.home / 'state.sqlite3'}?mode=ro", uri=True) as db:
        for table in ("sealed_data", "vault_data_keys"):
            left = db.execute(f"SELECT COUNT(*) FROM {table} WHERE container = ?",
                              (cid,)).fetchone()[0]
            assert left == 0, table
    actions = [(e["action"], e["decision"]) for e in d.audit(target=cid)]
    assert ("container.start", "allow") in actions
    assert ("container.stop", "allow") in actions
    assert ("container.delete", "allow") in actions


def test_killed_behind_pacds_back_shows_stopped(make_deployment: Callable[..., Deployment],
                                                busybox_image: str) -> None:
    d = make_deployment()
    cid = two_agents(d, busybox_image)
    d.start(cid)
    events = EventCollector(d.daemon.client())
    d.runtime.kill(d.podman_name(cid, "beta"))  # not through pacd
    # The event stream alone (nobody asks the daemon) closes the socket …
    took = wait_until(lambda: not d.socket(cid, "beta").exists(), 5,
                      "the killed agent's socket being removed")
    event = events.wait_for("container.state", timeout=5, id=cid, agent="beta")
    assert event["agent_state"] == "stopped"
    assert event["state"] == "partial"
    # … and the status says so.
    assert d.agent_states(cid) == {"alpha": "running", "beta": "stopped"}
    assert d.show(cid)["state"] == "partial"
    assert d.socket(cid, "alpha").exists()
    assert took < 5
    noted = d.audit(action="container.agent_state", target=cid)
    assert [e["details"] for e in noted] == [{"agent": "beta", "state": "stopped"}]


def test_orphans_are_reported_not_adopted(make_deployment: Callable[..., Deployment],
                                          busybox_image: str, tmp_path: Path) -> None:
    d = make_deployment()
    cid = two_agents(d, busybox_image)
    d.start(cid)
    # A container with pacd's labels and this owner's id, of a container pacd has
    # never heard of (e.g. left over from a deleted state directory).
    ghost = PersonalAIContainer(
        id=uuid.uuid4().hex, name="ghost", owner_id=d.owner_id,
        agents=(AgentDomain(id="g", name="lurker", image=busybox_image),),
        concerns=(ConcernDomain(id="c", name="x", category=ConcernCategory.personal,
                                connected_agents=("lurker",)),),
        policy=Policy.default())
    sock = tmp_path / "agent.sock"
    member = ghost.agents[0]
    spec = agent_run_spec(ghost, member, d.owner_id, sock)
    sock.touch()
    ghost_id = d.runtime.run_agent(spec)

    def reported() -> bool:
        return any(e["target"] == ghost_id for e in d.audit(action="container.orphan"))

    wait_until(reported, 10, "the orphan being audited")
    entry = d.audit(action="container.orphan")[0]
    assert entry["details"]["container_id"] == ghost.id
    assert entry["details"]["agent"] == "lurker"
    orphans = d.daemon.client().status()["orphans"]
    assert [(o["podman_id"], o["container_id"], o["agent"]) for o in orphans] == [
        (ghost_id, ghost.id, "lurker")]
    # Not adopted: still running untouched, no socket, not listed as a container.
    assert d.runtime.state(ghost_id) == "running"
    assert not (d.daemon.socket.parent / "agents" / ghost.id).exists()
    assert [c["id"] for c in d.daemon.client().request("GET", "/v1/containers")[
        "containers"]] == [cid]
    # A restarted daemon reports it again (once per daemon run), still not adopting it.
    d.daemon.stop(timeout=30)
    d.daemon.start()
    wait_until(lambda: len(d.audit(action="container.orphan")) == 2, 10,
               "the orphan being reported after a restart")
    assert d.runtime.state(ghost_id) == "running"
    assert d.agent_states(cid) == {"alpha": "running", "beta": "running"}
    # Gone from Podman, gone from the status.
    d.runtime.remove(ghost_id, force=True)
    wait_until(lambda: d.daemon.client().status()["orphans"] == [], 10,
               "the removed orphan leaving the status")


def test_daemon_starts_without_podman_and_says_how_to_fix_it(
        real_keychain: str, short_base: Path) -> None:
    missing = short_base / "no-podman.sock"
    daemon = DaemonProcess(short_base, env={"PACD_PODMAN_URL": f"unix://{missing}"})
    daemon.start()
    try:
        owner = Owner(daemon)
        owner.init()
        owner.enroll()
        owner.session("biometric")
        created = owner.authed().request("POST", "/v1/containers", make_spec(
            "offline", [agent_spec("solo", "localhost/whatever:1")], []))
        with pytest.raises(RuntimeUnavailable) as refused:
            owner.authed().request("POST", f"/v1/containers/{created['id']}/start")
        assert "podman.socket" in refused.value.message
        assert str(missing) in refused.value.message
        # The rest of the daemon works: status, listing (state unknown), audit.
        assert daemon.client().status()["owner"]["name"] == "Alice"
        shown = daemon.client().request("GET", f"/v1/containers/{created['id']}")
        assert [a["state"] for a in shown["agents"]] == ["unknown"]
        # The start was allowed (and recorded) before Podman was asked; its failure
        # is the outcome entry that follows.
        entries = [(e["action"], e["decision"]) for e in daemon.audit()
                   if e["action"].startswith("container.start")]
        assert entries == [("container.start", "allow"), ("container.start.result", "deny")]
    except BaseException:
        daemon.stop(timeout=30)  # cleanup only: the first failure is the one reported
        raise
    # Still healthy without Podman: a clean shutdown, and the start-up said what to do.
    assert daemon.stop(timeout=30) == 0, daemon.log()
    assert "podman.socket" in daemon.log(), daemon.log()
