"""Retention over the real state store, vault (passphrase keystore) and audit log.

Time is injected: the purge is driven by a clock the test moves, not by waiting.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pacd.agents.inbox import Inbox
from pacd.audit import AuditLog
from pacd.core.spec import parse_container_spec
from pacd.errors import AuditError, NotFound, SpecError
from pacd.registry import ContainerRegistry
from pacd.retention import DAY_S, Purge, Retention, plan, run_periodically
from pacd.store import Store
from pacd.vault import PassphraseSecretStore, SealedData, Vault

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "specs" / "home.json"
T0 = 1_700_000_000.0


def test_plan_cutoffs_follow_each_containers_days() -> None:
    assert plan([("a", 1), ("b", 90)], now=T0) == [
        Purge("a", 1, T0 - DAY_S), Purge("b", 90, T0 - 90 * DAY_S)]


def test_plan_never_purges_everything_for_a_damaged_policy() -> None:
    assert plan([("a", 0), ("b", -5), ("c", 2)], now=T0) == [Purge("c", 2, T0 - 2 * DAY_S)]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    store: Store
    data: SealedData
    inbox: Inbox
    audit: AuditLog
    clock: Clock
    retention: Retention
    short: str  # container id, 1 day of retention
    long: str  # container id, 30 days


def _container(registry: ContainerRegistry, name: str, days: int) -> str:
    spec = json.loads(EXAMPLE.read_text())
    spec["name"] = name
    spec["policy"] = {"data_retention_days": days}
    return registry.add(parse_container_spec(spec), "owner-1", T0).id


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    store = Store(tmp_path / "state.sqlite3")
    secrets = PassphraseSecretStore(tmp_path / "keys.sealed", b"pw")
    vault = Vault(store, secrets)
    vault.initialize()
    audit = AuditLog.open(tmp_path / "audit.sqlite3", vault.derive_subkey("audit"), secrets)
    registry = ContainerRegistry(store)
    data, inbox, clock = SealedData(store, vault), Inbox(store, vault), Clock(T0)
    retention = Retention(store, registry, data, inbox, audit, clock)
    yield World(store, data, inbox, audit, clock, retention,
                _container(registry, "short", 1), _container(registry, "long", 30))
    audit.close()
    store.close()


def _purges(audit: AuditLog) -> list[tuple[str, int]]:
    return [(e.target, int(e.details["count"])) for e in audit.entries(0, 1000)
            if e.action == "retention.purge"]


def test_old_data_is_purged_and_audited_fresh_data_stays(world: World) -> None:
    w = world
    w.data.put(w.short, "personal", "old", b"stale", now=T0)
    w.inbox.put(w.short, "writer", "analyst", {"hi": 1}, now=T0)
    w.clock.now = T0 + 2 * DAY_S
    w.data.put(w.short, "personal", "fresh", b"new", now=w.clock.now - 60)
    w.inbox.put(w.short, "writer", "analyst", {"hi": 2}, now=w.clock.now - 60)

    done = w.retention.run()

    assert [(p.container_id, p.values, p.messages) for p in done] == [(w.short, 1, 1)]
    with pytest.raises(NotFound):
        w.data.get(w.short, "personal", "old")
    assert w.data.get(w.short, "personal", "fresh") == b"new"
    assert [m.body for m in w.inbox.peek(w.short, "writer")] == [{"hi": 2}]
    assert _purges(w.audit) == [(w.short, 2)]
    entry = next(e for e in w.audit.entries(0, 1000) if e.action == "retention.purge")
    assert entry.decision == "allow" and entry.details["retention_days"] == 1
    assert entry.details["cutoff"] == pytest.approx(w.clock.now - DAY_S)
    assert w.audit.verify().ok


def test_longer_retention_keeps_its_data_until_its_own_cutoff(world: World) -> None:
    w = world
    w.data.put(w.short, "personal", "k", b"a", now=T0)
    w.data.put(w.long, "personal", "k", b"b", now=T0)
    w.clock.now = T0 + 2 * DAY_S
    w.retention.run()
    assert w.data.get(w.long, "personal", "k") == b"b"
    with pytest.raises(NotFound):
        w.data.get(w.short, "personal", "k")
    w.clock.now = T0 + 31 * DAY_S
    w.retention.run()
    with pytest.raises(NotFound):
        w.data.get(w.long, "personal", "k")
    assert _purges(w.audit) == [(w.short, 1), (w.long, 1)]


def test_nothing_to_purge_writes_nothing(world: World) -> None:
    w = world
    w.data.put(w.short, "personal", "k", b"a", now=T0)
    assert w.retention.run() == []
    assert _purges(w.audit) == []
    assert w.data.get(w.short, "personal", "k") == b"a"


def test_no_purge_without_its_audit_entry(world: World) -> None:
    w = world
    w.data.put(w.short, "personal", "k", b"a", now=T0)
    w.clock.now = T0 + 2 * DAY_S
    w.audit.close()  # the audit log is gone: the purge must not happen unrecorded
    with pytest.raises(AuditError):
        w.retention.run()
    assert w.data.get(w.short, "personal", "k") == b"a"


def _store_spec_text(w: World, container_id: str, text: str) -> str:
    """Overwrite a container's stored spec with one that does not parse any more (as
    after an upgrade), MACed like the daemon's own rows; returns the old text."""
    row = w.store.query_one("SELECT * FROM registry_containers WHERE id = ?", (container_id,))
    assert row is not None
    content = {"name": row["name"], "owner_id": row["owner_id"], "spec": text,
               "created_at": row["created_at"]}
    mac = w.store.integrity.mac("registry_containers", [container_id], content)
    with w.store.transaction() as conn:
        conn.execute("UPDATE registry_containers SET spec = ?, mac = ? WHERE id = ?",
                     (text, mac, container_id))
    return str(row["spec"])


def _errors(audit: AuditLog) -> list[tuple[str, str]]:
    return [(e.target, str(e.details["error"])) for e in audit.entries(0, 1000)
            if e.action == "retention.error"]


def test_a_broken_record_does_not_stop_the_other_containers_purge(world: World) -> None:
    w = world
    w.data.put(w.short, "personal", "k", b"a", now=T0)
    w.data.put(w.long, "personal", "k", b"b", now=T0)
    _store_spec_text(w, w.short, json.dumps({"name": "short"}))  # model() now fails
    w.clock.now = T0 + 31 * DAY_S

    with pytest.raises(SpecError):  # reported after the others have run
        w.retention.run()

    with pytest.raises(NotFound):
        w.data.get(w.long, "personal", "k")
    assert _purges(w.audit) == [(w.long, 1)]
    assert _errors(w.audit) == [(w.short, "SpecError")]
    assert w.data.get(w.short, "personal", "k") == b"a"  # skipped, not guessed at


async def _until(condition: Callable[[], bool], task: asyncio.Task[None]) -> None:
    """Poll until ``condition`` holds; fail if the task ends or it never does."""
    deadline = time.monotonic() + 5
    while not condition():
        assert not task.done(), task.exception() if not task.cancelled() else "cancelled"
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_periodic_task_survives_an_unexpected_error_and_keeps_enforcing(world: World) -> None:
    w = world
    w.data.put(w.short, "personal", "k", b"a", now=T0)
    w.clock.now = T0 + 2 * DAY_S
    # Not JSON at all: listing the containers raises ValueError, not a PacdError.
    good = _store_spec_text(w, w.long, "{not json")

    async def main() -> None:
        task = asyncio.create_task(run_periodically(w.retention, 0.02))
        try:
            await _until(lambda: len(_errors(w.audit)) >= 2, task)  # failed twice, still going
            assert w.data.get(w.short, "personal", "k") == b"a"
            _store_spec_text(w, w.long, good)  # repaired: the next run enforces again
            await _until(lambda: _purges(w.audit) == [(w.short, 1)], task)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert set(_errors(w.audit)) == {("", "JSONDecodeError")}
    with pytest.raises(NotFound):
        w.data.get(w.short, "personal", "k")


def test_a_purge_gives_the_space_of_purged_data_back(world: World, tmp_path: Path) -> None:
    w = world
    for i in range(24):
        w.data.put(w.short, "personal", f"old{i}", os.urandom(128 * 1024), now=T0)
    w.store.reclaim()  # the files as they are, the WAL folded in

    def on_disk() -> int:
        return sum(p.stat().st_size for p in tmp_path.glob("state.sqlite3*"))

    before = on_disk()
    w.clock.now = T0 + 2 * DAY_S
    assert [p.values for p in w.retention.run()] == [24]
    assert on_disk() < before - 2 * 1024 * 1024
