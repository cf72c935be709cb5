"""The daemon's state database: one SQLite file in WAL mode.

Each module that keeps state owns its tables and registers its schema with
:meth:`Store.migrate`; nothing else touches them. The connection is shared and
guarded by a lock; SQLite work is short, and async callers run it through
``asyncio.to_thread`` so the event loop never waits on the disk.

``synchronous=FULL``: an acknowledged write survives power loss, which is what
"nothing acknowledged is lost" requires.

Reads that must not queue behind writers (a bearer-token check on every
authenticated request) go through :meth:`Store.read`: a second connection
whose deferred transaction sees the last committed state and takes no write
lock, so a write transaction waiting on its fsync (or on the audit log's)
holds up other writers only.

The file is created 0600 before SQLite opens it (and an existing one is set
to 0600), whatever the process umask: SQLite gives its ``-wal`` and ``-shm``
files the database file's mode, so all three are private.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pacd.integrity import RowSealer

#: PRAGMA auto_vacuum's value for INCREMENTAL
_INCREMENTAL = 2


class Store:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _create_private(self.path)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        if int(self._conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != _INCREMENTAL:
            # Freed pages can be given back (reclaim) only in incremental mode, and a
            # database made before takes the mode only by being rebuilt: once.
            self._conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._conn.execute("VACUUM")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_versions (name TEXT PRIMARY KEY, version INTEGER)"
        )
        self._depth = 0
        #: the thread inside transaction(), so read() on it joins that transaction
        self._writer: int | None = None
        self._commits = 0
        if str(path) == ":memory:":
            # One private database per connection: reads share the writer's.
            self._reader, self._read_lock = self._conn, self._lock
        else:
            self._reader = sqlite3.connect(str(path), check_same_thread=False,
                                           isolation_level=None, timeout=30.0)
            self._reader.row_factory = sqlite3.Row
            self._read_lock = threading.RLock()
        #: checks the MACs of rows that decide access (pacd.integrity); the daemon
        #: attaches the one keyed from the vault, until then nothing stored checks
        self.integrity: RowSealer = RowSealer.ephemeral()

    def migrate(self, name: str, version: int, script: str) -> None:
        """Apply ``script`` once for schema ``name`` at ``version`` (idempotent)."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT version FROM schema_versions WHERE name = ?", (name,)
            ).fetchone()
            if row is not None and int(row[0]) >= version:
                return
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO schema_versions (name, version) VALUES (?, ?)",
                (name, version),
            )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE); nested calls join the outer one."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            self._writer = threading.get_ident()
            try:
                yield self._conn
            except BaseException:
                self._depth = 0
                self._writer = None
                self._conn.execute("ROLLBACK")
                raise
            self._depth = 0
            self._writer = None
            try:
                self._conn.execute("COMMIT")
            except BaseException:
                # SQLite keeps the transaction open after some failed COMMITs (a
                # deferred constraint, a busy database): end it here, or its writes
                # would ride along with the next commit on this shared connection.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                # After the commit, never before: a reader that sees the old count
                # may have read the new rows, but not the reverse (see commits).
                # Counted even when it failed: what it left is not known for sure.
                self._commits += 1

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read-only view of the last committed state; no write lock taken.

        Statements inside see one snapshot (a deferred transaction on the read
        connection). Called inside :meth:`transaction` on the same thread, it joins
        that transaction instead, so the caller sees its own uncommitted writes.
        Writing through the yielded connection is a bug: SQLite would upgrade the
        snapshot to a write lock, which is what this exists to avoid.
        """
        if self._writer == threading.get_ident():
            with self._lock:
                yield self._conn
            return
        with self._read_lock:
            if self._reader.in_transaction:  # a nested read: same snapshot
                yield self._reader
                return
            self._reader.execute("BEGIN DEFERRED")
            try:
                yield self._reader
            finally:
                self._reader.execute("COMMIT")

    @contextmanager
    def read_if_free(self) -> Iterator[sqlite3.Connection | None]:
        """The read connection if no other thread is using it right now, else ``None``.

        For the event loop: a point read on a free connection costs less than two
        hops to a worker thread and back, and a busy one is never waited for (the
        caller falls back to :meth:`read` in a thread). Unlike :meth:`read` there is
        no snapshot across statements: each sees the last committed state as it
        runs. That spares a BEGIN and a COMMIT, each a point where the loop's thread
        gives up the interpreter lock and may wait for a busy worker to hand it
        back; callers combine only reads whose order makes a snapshot unneeded.
        Called inside :meth:`transaction` on the same thread, it joins that
        transaction, as :meth:`read` does.
        """
        if self._writer == threading.get_ident():
            with self._lock:
                yield self._conn
            return
        if not self._read_lock.acquire(blocking=False):
            yield None
            return
        try:
            yield self._reader
        finally:
            self._read_lock.release()

    @property
    def commits(self) -> int:
        """How many write transactions this store has committed.

        It changes after every write this process makes (all go through
        :meth:`transaction`), not with writes by other processes. A reader that
        reads it, then rows, and finds it unchanged later knows those rows were
        current at that later moment, as far as this process's writes go.
        """
        return self._commits

    def writing_here(self) -> bool:
        """Whether this thread is inside :meth:`transaction` (its reads see its own
        uncommitted writes, which a rollback may undo)."""
        return self._writer == threading.get_ident()

    def data_version(self, conn: sqlite3.Connection) -> int | None:
        """A number that changes whenever a commit to this database could have changed
        what ``conn`` (the read connection) reads; ``None`` if there is no such number.

        SQLite's ``PRAGMA data_version`` on the read connection changes with every
        commit by any other connection: this store's writer and any other process
        editing the file. It does not change with the connection's own writes, so
        there is none for the writer's connection, nor for an in-memory store whose
        reads share it.
        """
        if conn is not self._reader or self._reader is self._conn:
            return None
        return int(conn.execute("PRAGMA data_version").fetchone()[0])

    def read_one_if_free(
        self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()
    ) -> tuple[bool, sqlite3.Row | None]:
        """One statement's first row through the read connection, if it is free now.

        ``(False, None)`` when another thread is using the read connection; never
        waits. Like :meth:`query_one_if_free`, but a write transaction in progress
        (waiting on its fsync, say) does not make it busy: a read on the event loop
        needs no writer to finish. One statement reads one snapshot of its own, so
        no BEGIN/COMMIT is spent on it.
        """
        if self._writer == threading.get_ident():
            with self._lock:  # inside this thread's transaction: see its writes
                row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
                return True, row
        if not self._read_lock.acquire(blocking=False):
            return False, None
        try:
            row = self._reader.execute(sql, params).fetchone()
            return True, row
        finally:
            self._read_lock.release()

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    def query_one(
        self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()
    ) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
            return row

    def query_one_if_free(
        self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()
    ) -> tuple[bool, sqlite3.Row | None]:
        """:meth:`query_one` only if no other thread is using the connection right now.

        ``(False, None)`` when it is busy (a write transaction may be waiting on its
        fsync). For the event loop: a point read on a free connection costs less
        than a hop to a worker thread, and a busy one is never waited for.
        """
        if not self._lock.acquire(blocking=False):
            return False, None
        try:
            row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
            return True, row
        finally:
            self._lock.release()

    def reclaim(self) -> None:
        """Give the space of deleted rows back to the file system.

        Frees the pages deleted rows left (``incremental_vacuum``), then folds the
        WAL into the file and truncates both, so the files shrink on disk.
        """
        with self._lock:
            if self._depth:
                return  # inside a transaction: the caller's commit comes first
            # executescript steps the pragma to the end; execute() would free one page.
            self._conn.executescript("PRAGMA incremental_vacuum;")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def close(self) -> None:
        with self._read_lock:
            if self._reader is not self._conn:
                self._reader.close()
        with self._lock:
            self._conn.close()


def _create_private(path: Path) -> None:
    """Create ``path`` 0600 if missing; make an existing regular file 0600."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
