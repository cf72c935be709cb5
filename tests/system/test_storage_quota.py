"""Storage is bounded: quotas per concern and per container, and deleted data's space
goes back to the file system."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.system.agents_env import (
    Deployment,
    agent_request,
    agent_spec,
    make_deployment,
    make_spec,
    short_base,
)

__all__ = ["make_deployment", "short_base"]

pytestmark = [pytest.mark.system, pytest.mark.podman]

KIB = 1024
MIB = 1024 * KIB


def _on_disk(home: Path) -> int:
    return sum(p.stat().st_size for p in home.glob("state.sqlite3*"))


def test_an_agent_cannot_write_past_its_quotas_and_a_deleted_container_gives_space_back(
        make_deployment: Callable[..., Deployment], busybox_image: str) -> None:
    d = make_deployment(settings={"quota_per_container_bytes": 3 * MIB,
                                  "quota_per_concern_bytes": 2 * MIB})
    spec = make_spec("hoard", [agent_spec("alpha", busybox_image)], [
        {"name": "notes", "category": "personal", "scope": "local", "agents": ["alpha"],
         "cross_container": "isolated"},
        {"name": "work", "category": "professional", "scope": "local", "agents": ["alpha"],
         "cross_container": "isolated"}])
    cid = str(d.create(spec)["id"])
    d.start(cid)
    sock = d.agent(cid, "alpha")
    value = b"v" * (512 * KIB)

    def put(concern: str, key: str) -> int:
        return agent_request(sock, "PUT", f"/v1/data/{concern}/{key}", value).status

    assert [put("notes", f"k{i}") for i in range(4)] == [204, 204, 204, 507]
    assert put("notes", "k0") == 204  # rewriting a value in place needs no more room
    assert [put("work", f"k{i}") for i in range(3)] == [204, 204, 507]
    refused = [e for e in d.audit(action="agent.data.write") if e["decision"] == "deny"]
    assert [(e["target"], e["details"]["code"], e["details"]["quota"]) for e in refused] == [
        ("notes/k3", "quota_exceeded", "quota_per_concern_bytes"),
        ("work/k2", "quota_exceeded", "quota_per_container_bytes")]
    assert agent_request(sock, "GET", "/v1/data/work/k2").status == 404  # nothing written

    storage = d.show(cid)["storage"]
    assert storage["quota_bytes"] == 3 * MIB
    assert set(storage["concerns"]) == {"notes", "work"}
    assert 5 * 512 * KIB < storage["used_bytes"] <= 3 * MIB
    shown = d.daemon.cli("container", "show", cid)
    assert f"storage {storage['used_bytes']} of {3 * MIB} bytes" in shown.stdout

    before = _on_disk(d.daemon.home)
    d.owner.authed().request("DELETE", f"/v1/containers/{cid}")
    after = _on_disk(d.daemon.home)
    print(f"state database on disk: {before} bytes before delete, {after} after")
    assert before - after >= 2 * MIB
