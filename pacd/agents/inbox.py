"""Durable inboxes for agent-to-agent messages.

A message accepted for delivery (202 to the sender) is committed to the state
database before the sender hears back, so a daemon crash loses nothing that
was acknowledged. The recipient takes messages with ``GET /v1/messages``;
they are deleted only after the response carrying them has been written out
completely (see :mod:`pacd.agents.server`). Delivery is therefore
at-least-once: a daemon that dies between writing the response and deleting
the rows delivers those messages again, so every message carries a unique
``id`` a recipient can use to drop duplicates.

Bodies are sealed by the vault like concern data (nothing an agent sends is
stored in clear): domain ``inbox:<recipient>`` of the container, key name the
message id, so a sealed body copied to another row, recipient or container
fails to open. The id is therefore chosen before the row is written; puts
are serialised by the inbox's own lock, which is taken before the vault's and
the store's, never while holding them.

:class:`Doorbell` wakes long-polling recipients on the event loop; the
inbox itself is blocking SQLite work, run in worker threads.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pacd.store import Store
from pacd.vault import Vault

_SCHEMA = """
CREATE TABLE agent_inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    container TEXT NOT NULL,
    agent TEXT NOT NULL,
    sender TEXT NOT NULL,
    body BLOB NOT NULL,
    sent_at REAL NOT NULL
);
CREATE INDEX agent_inbox_recipient ON agent_inbox (container, agent, id)
"""

#: the most messages one ``GET /v1/messages`` returns; the rest wait for the next call
MAX_BATCH = 100
#: how many undelivered messages one agent may hold before senders are told it is busy
MAX_PENDING = 1000

_NEXT_ID = """
SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'agent_inbox'), 0),
           COALESCE((SELECT MAX(id) FROM agent_inbox), 0)) + 1
"""


def inbox_domain(agent: str) -> str:
    """The vault domain sealing ``agent``'s inbox."""
    return f"inbox:{agent}"


@dataclass(frozen=True)
class Message:
    id: int
    sender: str
    body: Any
    sent_at: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "from": self.sender, "body": self.body, "sent_at": self.sent_at}


class Inbox:
    """One table of pending messages, keyed by (container, recipient agent)."""

    def __init__(self, store: Store, vault: Vault) -> None:
        self._store = store
        self._vault = vault
        self._put_lock = threading.Lock()
        store.migrate("agent_inbox", 1, _SCHEMA)
        self._seal_clear_rows()

    def _seal(self, container: str, agent: str, message_id: int, text: str) -> bytes:
        return self._vault.seal(container, inbox_domain(agent), str(message_id),
                                text.encode("utf-8"))

    def _seal_clear_rows(self) -> None:
        """Seal bodies a version that stored them in clear left behind."""
        rows = self._store.query(
            "SELECT id, container, agent, body FROM agent_inbox WHERE typeof(body) = 'text'")
        for row in rows:
            sealed = self._seal(str(row[1]), str(row[2]), int(row[0]), str(row[3]))
            with self._store.transaction() as conn:
                conn.execute("UPDATE agent_inbox SET body = ? WHERE id = ?", (sealed, row[0]))

    def put(self, container: str, agent: str, sender: str, body: Any, now: float) -> int:
        """Store a message for ``agent``; its id. Durable when this returns."""
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        with self._put_lock:
            # The only writer of new rows is here, under this lock, so the id read
            # now is still free when the row is inserted.
            row = self._store.query_one(_NEXT_ID)
            message_id = int(row[0]) if row is not None else 1
            sealed = self._seal(container, agent, message_id, text)
            with self._store.transaction() as conn:
                conn.execute(
                    "INSERT INTO agent_inbox (id, container, agent, sender, body, sent_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)", (message_id, container, agent, sender, sealed,
                                                   now))
            return message_id

    def pending(self, container: str, agent: str) -> int:
        row = self._store.query_one(
            "SELECT COUNT(*) FROM agent_inbox WHERE container = ? AND agent = ?",
            (container, agent))
        return 0 if row is None else int(row[0])

    def peek(self, container: str, agent: str, limit: int = MAX_BATCH) -> list[Message]:
        """The oldest messages for ``agent``, without removing them."""
        rows = self._store.query(
            "SELECT id, sender, body, sent_at FROM agent_inbox WHERE container = ? AND agent = ?"
            " ORDER BY id LIMIT ?", (container, agent, limit))
        # A body that fails to open (IntegrityError) fails the read: never delivered
        # unverified, never silently dropped.
        return [Message(int(r[0]), str(r[1]),
                        json.loads(self._vault.open(container, inbox_domain(agent), str(r[0]),
                                                    bytes(r[2]))),
                        float(r[3])) for r in rows]

    def remove(self, container: str, agent: str, ids: Sequence[int]) -> int:
        """Delete delivered messages (only this recipient's); how many were deleted."""
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        with self._store.transaction() as conn:
            cur = conn.execute(
                f"DELETE FROM agent_inbox WHERE container = ? AND agent = ? AND id IN ({marks})",  # noqa: S608 - only placeholders are interpolated
                (container, agent, *ids))
            return int(cur.rowcount)

    def purge_older_than(self, container: str, cutoff: float) -> int:
        """Drop ``container``'s undelivered messages sent before ``cutoff`` (retention).

        Delivered messages are already gone (deleted once handed over). Joins the
        caller's transaction, so a purge can commit together with its audit entry.
        """
        with self._store.transaction() as conn:
            return int(conn.execute(
                "DELETE FROM agent_inbox WHERE container = ? AND sent_at < ?",
                (container, cutoff)).rowcount)

    def delete_container(self, container: str) -> int:
        """Drop every pending message of a removed container."""
        with self._store.transaction() as conn:
            return int(conn.execute("DELETE FROM agent_inbox WHERE container = ?",
                                    (container,)).rowcount)


class Doorbell:
    """Wakes recipients waiting on the event loop when their inbox gets mail.

    A waiter arms its own event *before* it reads the inbox, so a message
    stored between that read and the wait still wakes it. Only a hint: a woken
    waiter re-reads the inbox, and one that misses a ring (another daemon
    thread wrote directly) still finds the message when its wait times out.
    """

    def __init__(self) -> None:
        self._waiters: dict[tuple[str, str], set[asyncio.Event]] = {}
        #: long polls waiting for a ring right now, per recipient (``GET /v1/status``)
        self._waiting: dict[tuple[str, str], int] = {}
        #: bumped whenever ``waiting()`` would answer differently (a cheap cache key)
        self.generation = 0

    def arm(self, container: str, agent: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.setdefault((container, agent), set()).add(event)
        return event

    def disarm(self, container: str, agent: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get((container, agent))
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[(container, agent)]

    def ring(self, container: str, agent: str) -> None:
        for event in self._waiters.get((container, agent), ()):
            event.set()

    async def wait(self, container: str, agent: str, event: asyncio.Event,
                   timeout: float) -> bool:
        """True when rung within ``timeout`` seconds (``event`` armed for this recipient)."""
        key = (container, agent)
        self._waiting[key] = self._waiting.get(key, 0) + 1
        self.generation += 1
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]
            self.generation += 1
        return True

    def waiting(self) -> dict[str, int]:
        """``{"<container id>/<agent>": long polls waiting}``, recipients with any."""
        return {f"{c}/{a}": n for (c, a), n in sorted(self._waiting.items())}
