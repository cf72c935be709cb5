"""One audit entry per decision: the request's own entry, and coalescing.

Every routed request ends in exactly one audit entry. Handlers that change
state write theirs inside the transaction that makes the change (so the change
and its record are one), and everything else gets a generic entry from the
route wrapper. The wrapper hands each request a :class:`RequestDecision`
(``call.decision``); an entry written *through it* is the request's entry —
the handler's, or the approval queue's when the handler passes it on — and
the wrapper writes its generic allow or deny only if none was. Entries written
straight to the log during the request (an approval the daemon expires on the
way, a cloned-key alarm, the outcome of an act already decided) are separate
events and do not stand in for the request's decision.

Refusals that cost the refused party nothing to repeat — a connection over the
limit, bytes that are not HTTP, a path with no route, another user knocking —
are recorded by a :class:`Coalescer`: the first one of a quiet period is
written at once, the rest are counted and written as one entry per window,
so a flood cannot flood the log (or stall the daemon on audit writes).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pacd.api.peercred import own_uid

log = logging.getLogger("pacd.api")

#: how often (at most) one coalesced refusal entry is written per kind
COALESCE_WINDOW_S = 1.0


def actor_for(uid: int | None) -> str:
    """The audit actor for a socket peer: the owner is the daemon's own uid."""
    if uid is None:
        return "peer:uid=unknown"
    return f"owner:uid={uid}" if uid == own_uid() else f"peer:uid={uid}"


class AuditAppender(Protocol):
    """The two ways :class:`pacd.audit.AuditLog` takes an entry."""

    def append(  # noqa: PLR0917 - the audit log's own signature
        self, actor: str, action: str, target: str, decision: str, reason: str,
        details: dict[str, Any] | None = None, *, checkpoint: bool = False,
        durable: bool = True) -> Any: ...

    async def append_async(  # noqa: PLR0917 - the audit log's own signature
        self, actor: str, action: str, target: str, decision: str, reason: str,
        details: dict[str, Any] | None = None, *, checkpoint: bool = False,
        durable: bool = True) -> Any: ...


class RequestDecision:
    """The decision of one request in progress: the log as its handler writes to it.

    ``recorded`` turns true once an entry written through this object is in the
    log (a failed write decides nothing). Safe to use from the worker thread a
    handler hands its transaction to: the wrapper reads the flag only after the
    handler has returned or raised.
    """

    __slots__ = ("actor", "audit", "recorded")

    def __init__(self, audit: AuditAppender, actor: str) -> None:
        self.audit = audit
        self.actor = actor
        self.recorded = False

    def append(  # noqa: PLR0917 - the audit log's own signature
        self, actor: str, action: str, target: str, decision: str, reason: str,
        details: dict[str, Any] | None = None, *, checkpoint: bool = False,
        durable: bool = True,
    ) -> Any:
        entry = self.audit.append(actor, action, target, decision, reason, details,
                                  checkpoint=checkpoint, durable=durable)
        self.recorded = True
        return entry

    async def append_async(  # noqa: PLR0917 - the audit log's own signature
        self, actor: str, action: str, target: str, decision: str, reason: str,
        details: dict[str, Any] | None = None, *, checkpoint: bool = False,
        durable: bool = True,
    ) -> Any:
        entry = await self.audit.append_async(actor, action, target, decision, reason,
                                              details, checkpoint=checkpoint, durable=durable)
        self.recorded = True
        return entry

    async def record(self, action: str, target: str, decision: str, reason: str,
                     details: dict[str, Any] | None = None) -> None:
        """Write the request's entry in the requester's own name (fsync-durable)."""
        await self.append_async(self.actor, action, target, decision, reason, details or {})


@dataclass
class _Bucket:
    target: str = ""
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    count: int = 0
    last_write: float = -math.inf
    timer: asyncio.TimerHandle | None = None


class Coalescer:
    """Refusals of one kind become at most one audit entry per ``window_s``.

    Each entry carries ``count``: how many refusals it stands for (the one that
    triggered it plus those held back since the previous entry). The refusal
    itself never waits on, or depends on, the audit write: it stands either way.
    """

    def __init__(self, audit: AuditAppender, window_s: float = COALESCE_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._audit = audit
        self.window_s = window_s
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def record(self, actor: str, action: str, target: str, reason: str,
                     details: dict[str, Any]) -> None:
        """Count one refusal; write its entry now if the window is open."""
        if self._count(actor, action, target, reason, details):
            await self._flush((actor, action))

    def note(self, actor: str, action: str, target: str, reason: str,
             details: dict[str, Any]) -> None:
        """Like :meth:`record` from synchronous code on the event loop (protocol callbacks)."""
        if self._count(actor, action, target, reason, details):
            self._spawn((actor, action))

    def _count(self, actor: str, action: str, target: str, reason: str,
               details: dict[str, Any]) -> bool:
        """Add one refusal; True when the caller should write the entry now."""
        key = (actor, action)
        bucket = self._buckets.setdefault(key, _Bucket())
        bucket.count += 1
        bucket.target, bucket.reason, bucket.details = target, reason, details
        wait = bucket.last_write + self.window_s - self._clock()
        if wait <= 0 and bucket.timer is None:
            return True
        if bucket.timer is None:
            loop = asyncio.get_running_loop()
            bucket.timer = loop.call_later(wait, self._spawn, key)
        return False

    def _spawn(self, key: tuple[str, str]) -> None:
        task = asyncio.get_running_loop().create_task(self._flush(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, key: tuple[str, str]) -> None:
        bucket = self._buckets.get(key)
        if bucket is None or bucket.count == 0:
            return
        if bucket.timer is not None:
            bucket.timer.cancel()
            bucket.timer = None
        count, bucket.count = bucket.count, 0
        # Taken before the write: refusals arriving while it is in flight wait
        # for the next window instead of starting a second write.
        bucket.last_write = self._clock()
        actor, action = key
        try:
            await self._audit.append_async(actor, action, bucket.target, "deny", bucket.reason,
                                           {**bucket.details, "count": count,
                                            "window_s": self.window_s})
        except Exception:
            # The refusals stand whether or not they could be recorded.
            log.exception("could not audit %d %s refusal(s)", count, action)

    async def close(self) -> None:
        """Write what is still counted (at shutdown) and wait for writes in flight."""
        for key in list(self._buckets):
            await self._flush(key)
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
