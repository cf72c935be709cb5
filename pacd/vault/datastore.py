"""Concern-domain data at rest: every value sealed by the vault, bound to its place.

A value is sealed with AAD (container, concern, key, version), so a row copied to
another container, concern or key fails to open rather than leaking across
domains. Timestamps are passed in (retention purges compare against them).

The row is the index of the value: its version and time are MACed
(:mod:`pacd.integrity`), and every write picks a fresh random 63-bit version,
so an older ciphertext of the same key — even one from before a delete —
restored into the row does not open. A row that fails its MAC, or a value
that fails to open, is refused with ``integrity_error`` and reported
(``state.integrity_failure``); it is never served and never repaired.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections import OrderedDict
from typing import Any

from pacd.errors import IntegrityError, NotFound, QuotaExceeded
from pacd.integrity import RowSpec
from pacd.store import Store
from pacd.vault.envelope import Vault

_SCHEMA = """
CREATE TABLE sealed_data (
    container TEXT NOT NULL,
    concern TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (container, concern, key)
);
CREATE INDEX sealed_data_updated ON sealed_data (updated)
"""
_SCHEMA_V2 = """
ALTER TABLE sealed_data ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sealed_data ADD COLUMN mac BLOB
"""
_ROW = RowSpec("sealed_data", ("container", "concern", "key"), ("version", "updated"))

_GET = "SELECT * FROM sealed_data WHERE container = ? AND concern = ? AND key = ?"

#: values up to this size are opened on the caller's thread by get_if_quick
#: (tens of microseconds); larger ones go to a worker thread
QUICK_OPEN_BYTES = 64 * 1024
#: memory for rows kept for the event loop's reads (see _LoopRows)
LOOP_ROWS_BYTES = 4 * 1024 * 1024
#: what a kept row costs besides its sealed value: the sqlite3.Row with its
#: strings, the dict entry (about 1.9 KB measured with tracemalloc)
_KEPT_ROW_BYTES = 2048


class _LoopRows:
    """Sealed rows the event loop has read, kept until this process next writes the store.

    Reading a row on the loop is a SQLite call, and every SQLite call releases
    the GIL: with the audit threads busy, getting it back costs more than the
    read (an agent read then took about twice the context switches). Only what
    is on disk anyway is kept — the sealed value and its MACed row, never the
    plain value — and each read still checks the row's MAC and opens the value.
    Everything is dropped when the store commits anything (``Store.commits``),
    so a write, delete or purge by this daemon is seen at once; a change made
    by another process while the daemon runs is seen after its next commit.
    The daemon's home lock keeps other pacd processes out, so such a change
    is tampering, which then meets the MAC check at that read.
    """

    def __init__(self, budget: int = LOOP_ROWS_BYTES) -> None:
        self._budget = budget
        self._lock = threading.Lock()
        self._rows: OrderedDict[tuple[str, str, str], sqlite3.Row] = OrderedDict()
        self._bytes = 0
        #: the store's commit count the rows were read at
        self._commits = -1

    def get(self, place: tuple[str, str, str], commits: int) -> sqlite3.Row | None:
        with self._lock:
            if commits != self._commits:
                self._rows.clear()
                self._bytes = 0
                self._commits = commits
                return None
            row = self._rows.get(place)
            if row is not None:
                self._rows.move_to_end(place)
            return row

    def keep(self, place: tuple[str, str, str], row: sqlite3.Row, commits: int) -> None:
        """Keep ``row``, read while the store's commit count was ``commits`` throughout."""
        size = len(row["value"]) + _KEPT_ROW_BYTES
        with self._lock:
            if commits != self._commits or size > self._budget:
                return
            old = self._rows.pop(place, None)
            if old is not None:
                self._bytes -= len(old["value"]) + _KEPT_ROW_BYTES
            while self._rows and self._bytes + size > self._budget:
                self._bytes -= len(self._rows.popitem(last=False)[1]["value"]) + _KEPT_ROW_BYTES
            self._rows[place] = row
            self._bytes += size


def stored_bytes(store: Store, container: str) -> dict[str, int]:
    """Bytes of sealed data per concern of ``container`` (what its quotas count)."""
    rows = store.query("SELECT concern, SUM(length(value)) FROM sealed_data"
                       " WHERE container = ? GROUP BY concern", (container,))
    return {str(r[0]): int(r[1] or 0) for r in rows}


class SealedData:
    def __init__(self, store: Store, vault: Vault, *, container_quota: int | None = None,
                 concern_quota: int | None = None) -> None:
        self._store = store
        self._vault = vault
        #: sealed bytes a container, and one concern of it, may hold (None: no limit)
        self.container_quota = container_quota
        self.concern_quota = concern_quota
        store.migrate("sealed_data", 1, _SCHEMA)
        store.migrate("sealed_data", 2, _SCHEMA_V2)
        self._loop_rows = _LoopRows()

    def check_quota(self, container: str, concern: str, key: str, size: int,
                    conn: Any = None) -> None:
        """QuotaExceeded if writing ``size`` bytes at ``key`` passes a quota.

        The sealed value is a little larger than the plain one (nonce and tag):
        ``size`` is what is counted for the new value, the stored length for the rest.
        """
        if self.container_quota is None and self.concern_quota is None:
            return
        query = conn.execute if conn is not None else self._store.query
        rows = list(query(
            "SELECT concern, SUM(length(value)) FROM sealed_data WHERE container = ?"
            " AND NOT (concern = ? AND key = ?) GROUP BY concern", (container, concern, key)))
        used = {str(r[0]): int(r[1] or 0) for r in rows}
        total = sum(used.values()) + size
        in_concern = used.get(concern, 0) + size
        if self.concern_quota is not None and in_concern > self.concern_quota:
            raise QuotaExceeded(
                f"concern {concern!r} would hold {in_concern} bytes, over its quota of "
                f"{self.concern_quota} (quota_per_concern_bytes)",
                quota="quota_per_concern_bytes", limit=self.concern_quota, used=in_concern - size)
        if self.container_quota is not None and total > self.container_quota:
            raise QuotaExceeded(
                f"the container would hold {total} bytes, over its quota of "
                f"{self.container_quota} (quota_per_container_bytes)",
                quota="quota_per_container_bytes", limit=self.container_quota,
                used=total - size)

    def put(self, container: str, concern: str, key: str, value: bytes, now: float) -> None:
        if not key:
            raise ValueError("data key must not be empty")
        version = secrets.randbits(63)
        sealed = self._vault.seal(container, concern, key, value, version)
        row: dict[str, object] = {"container": container, "concern": concern, "key": key,
                                  "value": sealed, "version": version, "updated": now}
        row["mac"] = self._store.integrity.seal_row(_ROW, row)
        with self._store.transaction() as conn:
            self.check_quota(container, concern, key, len(sealed), conn)
            conn.execute(
                "INSERT INTO sealed_data (container, concern, key, value, updated, version, mac)"
                " VALUES (:container, :concern, :key, :value, :updated, :version, :mac)"
                " ON CONFLICT (container, concern, key) DO UPDATE SET value = excluded.value,"
                " updated = excluded.updated, version = excluded.version, mac = excluded.mac",
                row,
            )

    def get(self, container: str, concern: str, key: str) -> bytes:
        # The read connection: a read does not queue behind a write transaction.
        with self._store.read() as conn:
            row = conn.execute(_GET, (container, concern, key)).fetchone()
        if row is None:
            raise NotFound(f"no value {key!r} in concern {concern!r} of container {container!r}")
        return self._open(row)

    def _open(self, row: sqlite3.Row) -> bytes:
        """The value of a row whose index checks and whose ciphertext is the one it pins."""
        integrity = self._store.integrity
        if not integrity.row_ok(_ROW, row):
            raise IntegrityError()
        try:
            return self._vault.open(str(row["container"]), str(row["concern"]),
                                    str(row["key"]), bytes(row["value"]), int(row["version"]))
        except IntegrityError:
            integrity.report(_ROW.table, _ROW.key_text(row))
            raise

    def get_if_quick(self, container: str, concern: str, key: str) -> bytes | None:
        """:meth:`get` if it needs no waiting; None if the value is large, or if the
        store's read connection is busy and the row is not kept from an earlier read
        (see :class:`_LoopRows`; a write transaction in progress does not hold it up).

        For the event loop, which must not block: on None, run :meth:`get` in a
        worker thread instead. Raises NotFound like :meth:`get`.
        """
        place = (container, concern, key)
        commits = self._store.commits  # before the read: see Store.commits
        # Inside this thread's own transaction the rows are its uncommitted ones.
        writing = self._store.writing_here()
        row = None if writing else self._loop_rows.get(place, commits)
        if row is None:
            free, row = self._store.read_one_if_free(_GET, place)
            if not free:
                return None
            if row is None:
                raise NotFound(
                    f"no value {key!r} in concern {concern!r} of container {container!r}")
            if len(row["value"]) > QUICK_OPEN_BYTES:
                return None
            if self._store.commits == commits and not writing:
                self._loop_rows.keep(place, row, commits)
        return self._open(row)

    def delete(self, container: str, concern: str, key: str) -> None:
        with self._store.transaction() as conn:
            deleted = conn.execute(
                "DELETE FROM sealed_data WHERE container = ? AND concern = ? AND key = ?",
                (container, concern, key),
            ).rowcount
        if not deleted:
            raise NotFound(f"no value {key!r} in concern {concern!r} of container {container!r}")

    def keys(self, container: str, concern: str) -> list[str]:
        rows = self._store.query(
            "SELECT container, concern, key, version, updated, mac FROM sealed_data"
            " WHERE container = ? AND concern = ? ORDER BY key",
            (container, concern),
        )
        return [str(r["key"]) for r in rows if self._store.integrity.row_ok(_ROW, r)]

    def purge_older_than(self, cutoff: float) -> int:
        """Delete values last written before ``cutoff``; returns how many."""
        with self._store.transaction() as conn:
            cursor = conn.execute("DELETE FROM sealed_data WHERE updated < ?", (cutoff,))
            return int(cursor.rowcount)

    def purge_container_older_than(self, container: str, cutoff: float) -> int:
        """Delete ``container``'s values last written before ``cutoff``; returns how many.

        Per container because retention is a per-container policy; joins the
        caller's transaction, so a purge can commit together with its audit entry.
        """
        with self._store.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM sealed_data WHERE container = ? AND updated < ?", (container, cutoff))
            return int(cursor.rowcount)

    def delete_container(self, container: str) -> int:
        """Delete every value of ``container`` and give their space back; how many."""
        with self._store.transaction() as conn:
            count = int(
                conn.execute("DELETE FROM sealed_data WHERE container = ?", (container,)).rowcount
            )
        if count:
            self._store.reclaim()
        return count
