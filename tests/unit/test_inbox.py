"""Agent inboxes over the real state store and vault: bodies sealed, bound to their row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pacd.agents.inbox import Inbox
from pacd.errors import IntegrityError
from pacd.store import Store
from pacd.vault import PassphraseSecretStore, Vault

MARK = "zebra-quartz-7781-unsealed"


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Store, Vault]]:
    store = Store(tmp_path / "state.sqlite3")
    vault = Vault(store, PassphraseSecretStore(tmp_path / "keys.sealed", b"pw"))
    vault.initialize()
    yield store, vault
    store.close()


def _raw(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_bodies_are_sealed_and_still_delivered(parts: tuple[Store, Vault]) -> None:
    store, vault = parts
    inbox = Inbox(store, vault)
    first = inbox.put("c1", "reader", "writer", {"text": MARK}, 10.0)
    second = inbox.put("c1", "reader", "writer", [1, 2], 11.0)
    assert second > first
    assert MARK.encode() not in _raw(store.path)
    assert [(m.id, m.sender, m.body) for m in inbox.peek("c1", "reader")] == [
        (first, "writer", {"text": MARK}), (second, "writer", [1, 2])]
    # Ids stay unique after delivery removes the newest row.
    assert inbox.remove("c1", "reader", [second]) == 1
    assert inbox.put("c1", "reader", "writer", 3, 12.0) > second


def test_a_body_moved_to_another_row_or_recipient_does_not_open(
        parts: tuple[Store, Vault]) -> None:
    store, vault = parts
    inbox = Inbox(store, vault)
    a = inbox.put("c1", "reader", "writer", "for the reader", 10.0)
    b = inbox.put("c1", "other", "writer", "for the other", 10.0)
    with store.transaction() as conn:
        conn.execute("UPDATE agent_inbox SET body = (SELECT body FROM agent_inbox WHERE id = ?)"
                     " WHERE id = ?", (a, b))
    with pytest.raises(IntegrityError):
        inbox.peek("c1", "other")
    assert [m.body for m in inbox.peek("c1", "reader")] == ["for the reader"]


def test_retention_purge_and_container_removal_still_work(parts: tuple[Store, Vault]) -> None:
    store, vault = parts
    inbox = Inbox(store, vault)
    inbox.put("c1", "reader", "writer", "old", 10.0)
    inbox.put("c1", "reader", "writer", "new", 100.0)
    inbox.put("c2", "reader", "writer", "elsewhere", 10.0)
    assert inbox.purge_older_than("c1", 50.0) == 1
    assert [m.body for m in inbox.peek("c1", "reader")] == ["new"]
    assert inbox.delete_container("c1") == 1
    assert inbox.pending("c1", "reader") == 0
    assert [m.body for m in inbox.peek("c2", "reader")] == ["elsewhere"]


def test_bodies_left_in_clear_by_an_older_version_are_sealed_on_open(
        parts: tuple[Store, Vault]) -> None:
    store, vault = parts
    Inbox(store, vault)  # creates the table
    with store.transaction() as conn:
        conn.execute("INSERT INTO agent_inbox (container, agent, sender, body, sent_at)"
                     " VALUES ('c1', 'reader', 'writer', ?, 1.0)", (f'{{"t":"{MARK}"}}',))
    inbox = Inbox(store, vault)
    row = store.query_one("SELECT typeof(body) FROM agent_inbox")
    assert row is not None and row[0] == "blob"
    assert [m.body for m in inbox.peek("c1", "reader")] == [{"t": MARK}]
