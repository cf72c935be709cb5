"""The state store: WAL, migrations once, transactions all-or-nothing."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from pacd.store import Store


def test_wal_and_full_sync(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    assert store.query_one("PRAGMA journal_mode")[0] == "wal"
    assert store.query_one("PRAGMA synchronous")[0] == 2  # FULL


def test_migration_applies_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    store.migrate("t", 1, "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1)")
    store.migrate("t", 1, "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1)")
    assert store.query_one("SELECT count(*) FROM t")[0] == 1
    store.migrate("t", 2, "INSERT INTO t VALUES (2)")
    assert [r[0] for r in store.query("SELECT x FROM t ORDER BY x")] == [1, 2]


def test_failed_transaction_rolls_back_including_nested(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    store.migrate("t", 1, "CREATE TABLE t (x INTEGER)")
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        with store.transaction() as inner:
            inner.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("boom")
    assert store.query_one("SELECT count(*) FROM t")[0] == 0
    with store.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (3)")
    reopened = Store(tmp_path / "s.sqlite3")
    assert reopened.query_one("SELECT x FROM t")[0] == 3


def test_database_and_its_wal_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = Store(tmp_path / "s.sqlite3")
        store.migrate("t", 1, "CREATE TABLE t (x INTEGER)")
        with store.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (1)")
        # An existing file with a looser mode is made private on open.
        loose = tmp_path / "loose.sqlite3"
        loose.touch(mode=0o644)
        os.chmod(loose, 0o644)
        Store(loose).close()
    finally:
        os.umask(old)
    files = [tmp_path / n for n in ("s.sqlite3", "s.sqlite3-wal", "s.sqlite3-shm")]
    assert all(f.exists() for f in files)
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in [*files, loose]} == {
        f.name: 0o600 for f in [*files, loose]}
    store.close()


def test_failed_commit_is_rolled_back(tmp_path: Path) -> None:
    # A deferred foreign key is only checked at COMMIT; the failed COMMIT must not
    # leave the transaction open for the next caller of the shared connection.
    store = Store(tmp_path / "s.sqlite3")
    store.migrate("t", 1, "CREATE TABLE p (id INTEGER PRIMARY KEY); "
                          "CREATE TABLE c (pid INTEGER REFERENCES p(id) "
                          "DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(Exception, match="FOREIGN KEY"), store.transaction() as conn:
        conn.execute("INSERT INTO c VALUES (42)")
    with store.transaction() as conn:
        conn.execute("INSERT INTO p VALUES (1)")
    assert store.query_one("SELECT count(*) FROM c")[0] == 0
    assert store.query_one("SELECT count(*) FROM p")[0] == 1


def test_query_one_if_free_never_waits_for_another_thread(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    assert store.query_one_if_free("SELECT 1 + ?", (1,))[0] is True
    free, row = store.query_one_if_free("SELECT 1 + ?", (1,))
    assert free and row is not None and row[0] == 2
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.transaction():
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(10)
        assert store.query_one_if_free("SELECT 1") == (False, None)
    finally:
        release.set()
        holder.join(10)
    assert store.query_one_if_free("SELECT 1")[0] is True


def test_a_database_made_without_incremental_vacuum_is_rebuilt_with_it_and_shrinks(
        tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:  # as databases were made before
        old.execute("CREATE TABLE t (v BLOB)")
        old.executemany("INSERT INTO t VALUES (?)", [(os.urandom(64 * 1024),)] * 32)
    store = Store(path)
    row = store.query_one("PRAGMA auto_vacuum")
    assert row is not None and row[0] == 2  # INCREMENTAL
    assert store.query("SELECT COUNT(*) FROM t")[0][0] == 32  # nothing lost
    with store.transaction() as conn:
        conn.execute("DELETE FROM t")

    def on_disk() -> int:
        return sum(p.stat().st_size for p in tmp_path.glob("old.sqlite3*"))

    before = on_disk()
    store.reclaim()
    assert on_disk() < before - 1024 * 1024
    store.close()


@pytest.mark.parametrize("where", ["file", ":memory:"])
def test_a_read_sees_committed_state_and_inside_a_transaction_its_own_writes(
        tmp_path: Path, where: str) -> None:
    store = Store(tmp_path / "s.sqlite3" if where == "file" else ":memory:")
    store.migrate("t", 1, "CREATE TABLE t (v INTEGER)")
    with store.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
    with store.read() as conn:
        assert [r[0] for r in conn.execute("SELECT v FROM t")] == [1]
    with store.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (2)")
        # The writer's own thread reads through its transaction: it sees its write.
        with store.read() as inner:
            assert [r[0] for r in inner.execute("SELECT v FROM t ORDER BY v")] == [1, 2]
    with store.read() as conn:
        assert [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")] == [1, 2]
    store.close()


@pytest.mark.parametrize("where", ["file", ":memory:"])
def test_read_if_free_gives_none_while_another_thread_reads_and_joins_its_own_transaction(
        tmp_path: Path, where: str) -> None:
    store = Store(tmp_path / "s.sqlite3" if where == "file" else ":memory:")
    store.migrate("t", 1, "CREATE TABLE t (v INTEGER)")
    with store.read_if_free() as conn:
        assert conn is not None and conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.read():
            inside.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert inside.wait(10)
        with store.read_if_free() as conn:
            assert conn is None
    finally:
        release.set()
        holder.join()
    with store.transaction() as writer:
        writer.execute("INSERT INTO t VALUES (1)")
        # On the writer's own thread it joins the transaction and sees the write.
        with store.read_if_free() as conn:
            assert conn is not None and conn.execute("SELECT v FROM t").fetchall()[0][0] == 1
    with store.read_if_free() as conn:
        assert conn is not None and conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 1
    store.close()
