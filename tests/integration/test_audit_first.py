"""A state change happens only once its audit entry is durable.

The real daemon runs with its audit database alone on a small tmpfs (the state
database stays on the ordinary disk), which the test then fills: every
audit write fails with "disk is full" while everything else works. A request
whose entry cannot be written answers 503 ``audit_unavailable`` — and must
leave nothing changed behind it: no enrolled key, no started agent, no erased
data.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pacd.config import load_config
from pacd.errors import PacdError
from pacd.presence.client import register
from pacd.runtime.hardening import LABEL_OWNER_ID, container_name
from pacd.runtime.podman import PodmanRuntime
from pacd.store import Store
from pacd.vault import SealedData, Vault, open_secret_store
from tests.integration.harness import DaemonProcess, Owner, Silent
from tests.integration.test_audit_decisions import _fill, small_disk
from tests.podman_env import (
    busybox_image,
    podman_cleanup,
    podman_runtime,
    podman_service,
    remove_labelled,
    run_label,
)
from tests.softauthn import SoftAuthenticator

__all__ = ["busybox_image", "podman_cleanup", "podman_runtime", "podman_service",
           "run_label", "small_disk"]

ME = f"owner:uid={os.getuid()}"


class AuditOnSmallDisk:
    """A daemon whose audit database lives on ``disk``; fill() makes its writes fail."""

    def __init__(self, base: Path, disk: Path, env: dict[str, str] | None = None) -> None:
        self.disk = disk
        base.mkdir()
        self.daemon = DaemonProcess(base, env=env)
        self.daemon.home.mkdir(mode=0o700)
        # SQLite follows the link: the database and its WAL live on the small disk.
        (self.daemon.home / "audit.sqlite3").symlink_to(disk / "audit.sqlite3")
        self.fillers: list[Path] = []

    def fill(self) -> None:
        self.fillers = _fill(self.disk)

    def free(self) -> None:
        for path in self.fillers:
            path.unlink()
        self.fillers = []


@pytest.fixture
def audit_on_small_disk(small_disk: Path, short_tmp: Path, real_keychain: str
                        ) -> Iterator[Callable[..., AuditOnSmallDisk]]:
    made: list[AuditOnSmallDisk] = []

    def make(env: dict[str, str] | None = None) -> AuditOnSmallDisk:
        setup = AuditOnSmallDisk(short_tmp / f"d{len(made)}", small_disk, env)
        made.append(setup)
        setup.daemon.start()
        return setup

    yield make
    for setup in made:
        if setup.daemon.alive():
            setup.daemon.stop(timeout=20)


def _unavailable(fn: Callable[[], Any]) -> PacdError:
    with pytest.raises(PacdError) as caught:
        fn()
    assert caught.value.code == "audit_unavailable", caught.value.message
    assert caught.value.status == 503
    return caught.value


def test_an_unrecordable_enrolment_stores_no_key(
        audit_on_small_disk: Callable[..., AuditOnSmallDisk]) -> None:
    setup = audit_on_small_disk()
    d = setup.daemon
    c = d.client()
    c.request("POST", "/v1/owner", {"name": "Alice"})
    begun = c.request("POST", "/v1/owner/credentials/begin", {"label": "key A"})
    credential = register(begun["publicKey"], begun["origin"], Silent(),
                          device=SoftAuthenticator())
    setup.fill()
    _unavailable(lambda: c.request("POST", "/v1/owner/credentials/complete", {
        "credential": credential, "registration_id": begun["registration_id"]}))
    assert c.status()["owner"]["credentials"] == 0  # the exempt probe still answers
    setup.free()
    assert c.status()["owner"]["credentials"] == 0
    assert not [e for e in d.audit() if e["action"] == "credential.enroll"]
    # Once the log can record again, enrolment works.
    Owner(d).enroll("key A")
    assert c.status()["owner"]["credentials"] == 1
    assert c.request("POST", "/v1/audit/verify")["ok"] is True


def _spec(image: str) -> dict[str, Any]:
    return {"name": "pair", "policy": "default", "concerns": [{
        "name": "notes", "category": "personal", "scope": "local", "agents": ["alpha"],
        "cross_container": "isolated"}],
        "agents": [{"name": "alpha", "image": image, "capabilities": ["textGeneration"],
                    "data_access": "readWrite", "isolation": "managed", "connections": []}]}


@pytest.mark.podman
def test_unrecordable_start_and_delete_change_nothing(
        audit_on_small_disk: Callable[..., AuditOnSmallDisk], podman_service: str,
        podman_runtime: PodmanRuntime, busybox_image: str) -> None:
    setup = audit_on_small_disk({"PACD_PODMAN_URL": podman_service})
    d = setup.daemon
    owner = Owner(d)
    owner_id = str(owner.init()["id"])
    try:
        owner.enroll()
        owner.session("biometric")
        cid = str(owner.authed().request("POST", "/v1/containers", _spec(busybox_image))["id"])
        # A sealed value of the container, written as an agent's would be.
        d.stop()
        config = load_config(d.env)
        store = Store(config.state_db)
        vault = Vault(store, open_secret_store(config))
        # Rows MACed with the daemon's own key, as an agent's write would be.
        store.integrity = vault.row_sealer()
        SealedData(store, vault).put(cid, "personal", "note", b"keep me", time.time())
        store.close()
        d.start()
        authed = owner.authed()

        setup.fill()
        _unavailable(lambda: authed.request("POST", f"/v1/containers/{cid}/start"))
        assert podman_runtime.state(container_name(cid, "alpha")) == "missing"
        # A failed write leaves the WAL grown: a fresh daemon needs new space again.
        setup.free()
        d.stop()
        d.start()
        setup.fill()
        _unavailable(lambda: authed.request("DELETE", f"/v1/containers/{cid}"))
        setup.free()

        # Nothing ran, nothing was deleted or erased, and nothing claims otherwise.
        assert podman_runtime.state(container_name(cid, "alpha")) == "missing"
        assert d.client().request("GET", f"/v1/containers/{cid}")["id"] == cid
        actions = {e["action"] for e in d.audit() if e["actor"] == ME}
        assert not actions & {"container.start", "container.delete"}
        d.stop()
        store = Store(config.state_db)
        vault = Vault(store, open_secret_store(config))
        store.integrity = vault.row_sealer()
        assert SealedData(store, vault).get(cid, "personal", "note") == b"keep me"
        store.close()
        d.start()
        # With the log writable again, both work and are recorded.
        owner.authed().request("POST", f"/v1/containers/{cid}/start")
        assert podman_runtime.state(container_name(cid, "alpha")) == "running"
        owner.authed().request("DELETE", f"/v1/containers/{cid}")
        assert podman_runtime.state(container_name(cid, "alpha")) == "missing"
        decided = [(e["action"], e["decision"]) for e in d.audit()
                   if e["action"] in ("container.start", "container.delete")]
        assert decided == [("container.start", "allow"), ("container.delete", "allow")]
    finally:
        remove_labelled(podman_runtime, {LABEL_OWNER_ID: owner_id})
