"""Sealed concern data over the real state store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pacd.errors import IntegrityError, NotFound
from pacd.integrity import RowSealer
from pacd.store import Store
from pacd.vault import PassphraseSecretStore, SealedData, Vault


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state.sqlite3")


@pytest.fixture
def data(tmp_path: Path, store: Store) -> SealedData:
    vault = Vault(store, PassphraseSecretStore(tmp_path / "keys.sealed", b"pw"))
    vault.initialize()
    return SealedData(store, vault)


def test_put_get_overwrite_delete(data: SealedData) -> None:
    data.put("home", "personal", "diary", b"day one", now=100.0)
    assert data.get("home", "personal", "diary") == b"day one"
    data.put("home", "personal", "diary", b"day two", now=101.0)
    assert data.get("home", "personal", "diary") == b"day two"
    assert data.keys("home", "personal") == ["diary"]
    data.delete("home", "personal", "diary")
    with pytest.raises(NotFound, match="diary"):
        data.get("home", "personal", "diary")
    with pytest.raises(NotFound):
        data.delete("home", "personal", "diary")


def test_values_are_not_stored_in_clear(store: Store, data: SealedData) -> None:
    data.put("home", "personal", "diary", b"very private words", now=1.0)
    row = store.query_one("SELECT value FROM sealed_data")
    assert row is not None and b"very private words" not in bytes(row[0])


def test_row_moved_to_another_concern_or_key_fails(store: Store, data: SealedData) -> None:
    data.put("home", "health", "record", b"blood type", now=1.0)
    data.put("home", "social", "record", b"public", now=1.0)
    with sqlite3.connect(store.path) as conn:
        sealed = conn.execute(
            "SELECT value FROM sealed_data WHERE concern = 'health'").fetchone()[0]
        conn.execute("UPDATE sealed_data SET value = ? WHERE concern = 'social'", (sealed,))
        conn.execute(
            "INSERT INTO sealed_data (container, concern, key, value, updated)"
            " VALUES ('home', 'health', 'copy', ?, 1.0)", (sealed,))
    with pytest.raises(IntegrityError):
        data.get("home", "social", "record")
    with pytest.raises(IntegrityError):
        data.get("home", "health", "copy")
    assert data.get("home", "health", "record") == b"blood type"


def test_purge_and_delete_container(data: SealedData) -> None:
    data.put("home", "personal", "old", b"1", now=10.0)
    data.put("home", "personal", "new", b"2", now=20.0)
    data.put("lab", "work", "x", b"3", now=5.0)
    data.put("lab", "work", "y", b"4", now=25.0)
    assert data.purge_older_than(15.0) == 2
    assert data.keys("home", "personal") == ["new"]
    assert data.delete_container("lab") == 1
    assert data.keys("lab", "work") == []
    assert data.get("home", "personal", "new") == b"2"


def test_get_if_quick_reads_small_values_and_defers_when_busy_or_large(
        store: Store, data: SealedData) -> None:
    import threading

    from pacd.vault.datastore import QUICK_OPEN_BYTES

    data.put("home", "personal", "small", b"note", now=1.0)
    data.put("home", "personal", "unread", b"later", now=1.0)
    data.put("home", "personal", "large", b"x" * (QUICK_OPEN_BYTES + 1), now=1.0)
    assert data.get_if_quick("home", "personal", "small") == b"note"
    with pytest.raises(NotFound, match="absent"):
        data.get_if_quick("home", "personal", "absent")
    assert data.get_if_quick("home", "personal", "large") is None  # left to a worker thread
    # While another thread holds the read connection, nothing waits.
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.read():
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(10)
        assert data.get_if_quick("home", "personal", "unread") is None
        # A row read since the store's last commit is kept: no read connection needed.
        assert data.get_if_quick("home", "personal", "small") == b"note"
    finally:
        release.set()
        holder.join(10)
    assert data.get_if_quick("home", "personal", "unread") == b"later"


def test_a_write_in_progress_does_not_send_reads_to_a_thread(
        store: Store, data: SealedData) -> None:
    import threading

    data.put("home", "personal", "small", b"note", now=1.0)
    entered, release = threading.Event(), threading.Event()

    def write() -> None:
        # Another request's write, its transaction open (as while it waits on a fsync).
        with store.transaction() as conn:
            conn.execute("DELETE FROM sealed_data")
            entered.set()
            release.wait(10)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert entered.wait(10)
        # Answered on the caller's thread, from the last committed state; the
        # worker-thread read does not wait for the writer either.
        assert data.get_if_quick("home", "personal", "small") == b"note"
        assert data.get("home", "personal", "small") == b"note"
    finally:
        release.set()
        writer.join(10)
    with pytest.raises(NotFound):
        data.get_if_quick("home", "personal", "small")


def _value(store: Store, key: str) -> bytes:
    row = store.query_one("SELECT value FROM sealed_data WHERE key = ?", (key,))
    assert row is not None
    return bytes(row[0])


def _set_value(store: Store, key: str, value: bytes) -> None:
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE sealed_data SET value = ? WHERE key = ?", (value, key))


def test_an_older_ciphertext_of_the_same_key_is_refused(store: Store, data: SealedData) -> None:
    data.put("home", "personal", "balance", b"10 EUR", now=1.0)
    old = _value(store, "balance")
    data.put("home", "personal", "balance", b"99999 EUR", now=2.0)
    _set_value(store, "balance", old)
    with pytest.raises(IntegrityError):
        data.get("home", "personal", "balance")
    with pytest.raises(IntegrityError):
        data.get_if_quick("home", "personal", "balance")
    assert store.integrity.failures() == [{"table": "sealed_data",
                                           "key": "home/personal/balance"}]


def test_a_ciphertext_from_before_a_delete_is_refused(store: Store, data: SealedData) -> None:
    data.put("home", "personal", "balance", b"10 EUR", now=1.0)
    old = _value(store, "balance")
    data.delete("home", "personal", "balance")
    data.put("home", "personal", "balance", b"0 EUR", now=2.0)
    _set_value(store, "balance", old)
    with pytest.raises(IntegrityError):
        data.get("home", "personal", "balance")


def test_an_edited_index_row_is_refused_and_not_listed(store: Store, data: SealedData) -> None:
    data.put("home", "personal", "a", b"1", now=1.0)
    data.put("home", "personal", "b", b"2", now=1.0)
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE sealed_data SET updated = 1e12 WHERE key = 'a'")
    with pytest.raises(IntegrityError):
        data.get("home", "personal", "a")
    assert data.keys("home", "personal") == ["b"]
    assert data.get("home", "personal", "b") == b"2"
    assert store.integrity.failure_count == 1


# -- rows kept for the event loop's reads ------------------------------------------------


def _reads_of(store: Store) -> list[str]:
    statements: list[str] = []
    store._reader.set_trace_callback(statements.append)  # the connection reads go through
    return statements


def test_a_value_read_again_is_not_read_from_sqlite_until_the_store_commits(
        store: Store, data: SealedData) -> None:
    data.put("home", "personal", "k", b"v1", now=1.0)
    assert data.get_if_quick("home", "personal", "k") == b"v1"
    statements = _reads_of(store)
    assert data.get_if_quick("home", "personal", "k") == b"v1"
    assert statements == []
    data.put("home", "personal", "other", b"x", now=2.0)  # any commit drops what is kept
    assert data.get_if_quick("home", "personal", "k") == b"v1"
    assert len(statements) == 1


@pytest.mark.parametrize("change", ["put", "delete", "purge", "delete_container"])
def test_a_kept_value_is_never_served_after_this_daemon_changes_it(
        data: SealedData, change: str) -> None:
    data.put("home", "personal", "k", b"old", now=1.0)
    assert data.get_if_quick("home", "personal", "k") == b"old"
    if change == "put":
        data.put("home", "personal", "k", b"new", now=2.0)
        assert data.get_if_quick("home", "personal", "k") == b"new"
        return
    if change == "delete":
        data.delete("home", "personal", "k")
    elif change == "purge":
        assert data.purge_older_than(1.5) == 1
    else:
        assert data.delete_container("home") == 1
    with pytest.raises(NotFound):
        data.get_if_quick("home", "personal", "k")


def test_a_value_read_inside_a_transaction_that_rolls_back_is_not_kept(
        store: Store, data: SealedData) -> None:
    data.put("home", "personal", "k", b"committed", now=1.0)

    class Undo(Exception):
        pass

    with pytest.raises(Undo), store.transaction() as conn:
        conn.execute("UPDATE sealed_data SET value = x'00'")  # uncommitted, MAC now wrong
        with pytest.raises(IntegrityError):
            data.get_if_quick("home", "personal", "k")
        raise Undo
    assert data.get_if_quick("home", "personal", "k") == b"committed"


def test_a_kept_value_is_not_served_inside_a_transaction_that_deleted_it(
        store: Store, data: SealedData) -> None:
    data.put("home", "personal", "k", b"v1", now=1.0)
    assert data.get_if_quick("home", "personal", "k") == b"v1"  # kept

    class Undo(Exception):
        pass

    with pytest.raises(Undo), store.transaction():
        data.delete("home", "personal", "k")
        with pytest.raises(NotFound):  # its own uncommitted delete, not the kept row
            data.get_if_quick("home", "personal", "k")
        raise Undo


def test_a_kept_row_is_still_checked_against_its_mac_at_every_read(
        store: Store, data: SealedData) -> None:
    data.put("home", "personal", "k", b"v", now=1.0)
    assert data.get_if_quick("home", "personal", "k") == b"v"
    store.integrity = RowSealer.ephemeral()  # another row key: the kept row no longer checks
    with pytest.raises(IntegrityError):
        data.get_if_quick("home", "personal", "k")


def test_many_tiny_kept_rows_are_counted_with_what_each_row_costs(
        store: Store, data: SealedData) -> None:
    """An empty value seals to a few dozen bytes, but a kept row costs about 2 KB:
    counting only the sealed bytes would let a few MiB of values take hundreds."""
    from pacd.vault.datastore import LOOP_ROWS_BYTES

    count = LOOP_ROWS_BYTES // 2048 + 50
    for i in range(count):
        data.put("home", "personal", f"k{i}", b"", now=1.0)
    for i in range(count):
        assert data.get_if_quick("home", "personal", f"k{i}") == b""
    assert len(data._loop_rows._rows) <= LOOP_ROWS_BYTES // 2048


def test_kept_rows_stay_within_their_byte_budget(store: Store, data: SealedData) -> None:
    from pacd.vault.datastore import LOOP_ROWS_BYTES, QUICK_OPEN_BYTES

    value = b"x" * (QUICK_OPEN_BYTES - 100)
    count = LOOP_ROWS_BYTES // QUICK_OPEN_BYTES + 8
    for i in range(count):
        data.put("home", "personal", f"k{i}", value, now=1.0)
    for i in range(count):
        assert data.get_if_quick("home", "personal", f"k{i}") == value
    kept = data._loop_rows
    assert kept._bytes <= LOOP_ROWS_BYTES
    assert 0 < len(kept._rows) < count
    assert ("home", "personal", f"k{count - 1}") in kept._rows  # the newest stay
    assert ("home", "personal", "k0") not in kept._rows
