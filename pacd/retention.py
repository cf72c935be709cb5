"""Retention: each container's data lives at most ``policy.data_retention_days``.

The policy field is enforced by a daemon task that runs at start-up and then
every ``retention_interval_s``: for every container it deletes the sealed
values last written, and the undelivered agent messages sent, before
``now - data_retention_days``. Each container's purge and its
``retention.purge`` audit entry commit in one state-database transaction, so
data is never removed without a record (if the audit write fails, nothing is
purged and the next run tries again).

:func:`plan` — which containers, up to which instant — is pure and takes the
time as an argument; :class:`Retention` applies a plan with a clock it is
given, so tests can move time instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from pacd.agents.inbox import Inbox
from pacd.errors import PacdError
from pacd.registry import ContainerRegistry
from pacd.store import Store
from pacd.vault import SealedData

log = logging.getLogger("pacd.retention")

DAY_S = 86400.0
ACTOR = "pacd"


class AuditSink(Protocol):
    def append(  # noqa: PLR0917 - the audit log's own signature
        self, actor: str, action: str, target: str, decision: str, reason: str,
        details: dict[str, Any] | None = None) -> Any: ...


@dataclass(frozen=True)
class Purge:
    """Delete ``container_id``'s data older than ``cutoff`` (a wall-clock time)."""

    container_id: str
    days: int
    cutoff: float


@dataclass(frozen=True)
class Purged:
    container_id: str
    days: int
    cutoff: float
    values: int
    messages: int

    @property
    def count(self) -> int:
        return self.values + self.messages


def plan(policies: Iterable[tuple[str, int]], now: float) -> list[Purge]:
    """One purge per (container id, retention days); days below 1 keep everything.

    Policy validation already refuses retention below one day; the guard here
    means a damaged record can never turn into "purge everything now".
    """
    return [Purge(cid, days, now - days * DAY_S) for cid, days in policies if days >= 1]


class Retention:
    def __init__(self, store: Store, registry: ContainerRegistry, data: SealedData,  # noqa: PLR0917 - one parameter per part
                 inbox: Inbox, audit: AuditSink, clock: Callable[[], float]) -> None:
        self._store = store
        self._registry = registry
        self._data = data
        self._inbox = inbox
        self._audit = audit
        self._clock = clock

    def policies(self) -> list[tuple[str, int]]:
        return [(r.id, r.model().policy.data_retention_days) for r in self._registry.all()]

    def run(self) -> list[Purged]:
        """Purge every container's expired data now (blocking); what was purged.

        A container whose purge fails (its audit entry could not be written) is
        left as it was and the error is raised after the others have run.
        """
        done: list[Purged] = []
        failure: PacdError | None = None
        for purge in plan(self.policies(), self._clock()):
            try:
                result = self._purge(purge)
            except PacdError as exc:
                log.warning("retention purge of %s failed: %s", purge.container_id, exc.message)
                failure = failure or exc
                continue
            if result.count:
                done.append(result)
        if failure is not None:
            raise failure
        return done

    def _purge(self, purge: Purge) -> Purged:
        with self._store.transaction():
            values = self._data.purge_container_older_than(purge.container_id, purge.cutoff)
            messages = self._inbox.purge_older_than(purge.container_id, purge.cutoff)
            result = Purged(purge.container_id, purge.days, purge.cutoff, values, messages)
            if result.count:
                # Inside the transaction: no purge without its record.
                self._audit.append(
                    ACTOR, "retention.purge", purge.container_id, "allow",
                    f"purged {result.count} item(s) older than {purge.days} day(s)",
                    {"count": result.count, "values": values, "messages": messages,
                     "retention_days": purge.days, "cutoff": purge.cutoff})
        return result


async def run_periodically(retention: Retention, interval_s: float) -> None:
    """Run now, then every ``interval_s`` seconds until cancelled."""
    while True:
        try:
            purged = await asyncio.to_thread(retention.run)
        except PacdError as exc:  # e.g. the audit log is unavailable: try again next time
            log.warning("retention: %s", exc.message)
        else:
            for p in purged:
                log.info("retention: purged %d item(s) of container %s", p.count,
                         p.container_id)
        await asyncio.sleep(interval_s)
