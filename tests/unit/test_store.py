"""The state store: WAL, migrations once, transactions all-or-nothing."""

from __future__ import annotations

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
