"""Retention: each container's data lives at most ``policy.data_retention_days``.

The policy field is enforced by a daemon task that runs at start-up and then
every ``retention_interval_s``: for every container it deletes the sealed
values last written, and the undelivered agent messages sent, before
``now - data_retention_days``. Each container's purge and its
``retention.purge`` audit entry commit in one state-database transaction, so
data is never removed without a record (if the audit write fails, nothing is
purged and the next run tries again).

A failure never stops enforcement: a container whose record or purge fails
is skipped (logged, and audited as ``retention.error`` when the audit log
takes it) while the others are purged, and the periodic task survives any
exception and runs again at the next interval.

:func:`plan` — which containers, up to which instant — is pure and takes the
time as an argument; :class:`Retention` applies a plan with a clock it is
given, so tests can move time instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from pacd.agents.inbox import Inbox
from pacd.core.actors import DAEMON_ACTOR
from pacd.registry import ContainerRegistry
from pacd.store import Store
from pacd.vault import SealedData

log = logging.getLogger("pacd.retention")

DAY_S = 86400.0


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

    def policies(self, failures: list[Exception] | None = None) -> list[tuple[str, int]]:
        """(container id, retention days) of every container whose record is readable.

        A record that cannot be read (``model()`` raises) is reported through
        :meth:`record_error` and appended to ``failures``; it must not stop
        the other containers' retention.
        """
        result = []
        for record in self._registry.all():
            try:
                days = record.model().policy.data_retention_days
            except Exception as exc:
                self.record_error(record.id, exc)
                if failures is not None:
                    failures.append(exc)
                continue
            result.append((record.id, days))
        return result

    def run(self) -> list[Purged]:
        """Purge every container's expired data now (blocking); what was purged.

        A container whose record or purge fails (e.g. its audit entry could not
        be written) is left as it was, and the first error is raised after the
        others have run. Every failure is logged and audited before that, so
        callers need not report it again.
        """
        done: list[Purged] = []
        failures: list[Exception] = []
        try:
            purges = plan(self.policies(failures), self._clock())
        except Exception as exc:
            self.record_error("", exc)
            raise
        for purge in purges:
            try:
                result = self._purge(purge)
            except Exception as exc:
                self.record_error(purge.container_id, exc)
                failures.append(exc)
                continue
            if result.count:
                done.append(result)
        if done:
            self._store.reclaim()  # purged space goes back to the file system
        if failures:
            raise failures[0]
        return done

    def record_error(self, container_id: str, exc: BaseException) -> None:
        """Log a retention failure with its traceback and audit it if the log takes it."""
        log.error("retention of %s failed: %s: %s", container_id or "all containers",
                  type(exc).__name__, exc, exc_info=exc)
        # The failure may be the audit log itself; the log line above then stands alone.
        with contextlib.suppress(Exception):
            self._audit.append(
                DAEMON_ACTOR, "retention.error", container_id, "info",
                f"retention not enforced this run: {type(exc).__name__}",
                {"error": type(exc).__name__, "message": str(exc)[:500]})

    def _purge(self, purge: Purge) -> Purged:
        with self._store.transaction():
            values = self._data.purge_container_older_than(purge.container_id, purge.cutoff)
            messages = self._inbox.purge_older_than(purge.container_id, purge.cutoff)
            result = Purged(purge.container_id, purge.days, purge.cutoff, values, messages)
            if result.count:
                # Inside the transaction: no purge without its record.
                self._audit.append(
                    DAEMON_ACTOR, "retention.purge", purge.container_id, "allow",
                    f"purged {result.count} item(s) older than {purge.days} day(s)",
                    {"count": result.count, "values": values, "messages": messages,
                     "retention_days": purge.days, "cutoff": purge.cutoff})
        return result


async def run_periodically(retention: Retention, interval_s: float) -> None:
    """Run now, then every ``interval_s`` seconds until cancelled.

    No failure ends the task: if it did, ``data_retention_days`` would silently
    stop being enforced. ``run`` has already logged and audited what failed.
    """
    while True:
        try:
            purged = await asyncio.to_thread(retention.run)
        except Exception as exc:
            log.warning("retention: run incomplete (%s), next run in %g s",
                        type(exc).__name__, interval_s)
        else:
            for p in purged:
                log.info("retention: purged %d item(s) of container %s", p.count,
                         p.container_id)
        await asyncio.sleep(interval_s)
