"""Row MACs for the state that decides access.

The state database is a plain SQLite file: anyone who can write it can add
a token row, edit a container's spec or flip an approval. Every row that
decides access therefore carries ``mac = HMAC-SHA256(key, canonical_json(
[table, primary key, content]))`` under a key derived from the vault's
derivation root (``Vault.derive_subkey(INTEGRITY_LABEL)``, HKDF with its own
label), which exists only in the keychain's reach. A row whose MAC does not
check is treated as absent by the module that owns the table, reported once
per daemon run (the daemon writes it to the audit log as
``state.integrity_failure`` and lists it in ``status``) and never repaired:
the evidence stays for the owner to look at.

What this cannot do: a process that can read the keychain can derive the key
and forge rows; and a whole row restored from an earlier copy of the file
(with its then-valid MAC) is a valid row. Sealed values pin a fresh version
in both their MACed index row and their AAD, so a ciphertext alone cannot be
swapped back in under a newer index row.

Each owning module declares its table with :class:`RowSpec` and calls
:meth:`RowSealer.seal_row` when it writes and :meth:`RowSealer.row_ok` when it
reads — one HMAC per row, no extra I/O.
"""

from __future__ import annotations

import hmac
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from operator import itemgetter
from typing import Any

from pacd.core.actors import DAEMON_ACTOR
from pacd.core.canonical import canonical_json

log = logging.getLogger("pacd.integrity")

#: the label of the row-MAC subkey (see Vault.derive_subkey)
INTEGRITY_LABEL = "state integrity v1"
#: at most this many distinct failures are remembered for ``status`` (each is still reported)
MAX_LISTED = 100
#: rows remembered as verified (a token checked on every request costs one lookup)
MAX_VERIFIED = 4096

FailureHook = Callable[[str, str], None]
#: a row as read (``sqlite3.Row``) or about to be written (a dict of column values)
Row = Mapping[str, Any] | sqlite3.Row


def _plain(value: Any) -> Any:
    """A column value as JSON: bytes become ``{"hex": ...}`` (never equal to a text
    value, so a BLOB rewritten as TEXT does not keep its MAC); the rest is plain."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"hex": bytes(value).hex()}
    return value


@dataclass(frozen=True)
class RowSpec:
    """Which columns of ``table`` name a row and which ones it stands for."""

    table: str
    keys: tuple[str, ...]
    columns: tuple[str, ...]

    def key_of(self, row: Row) -> list[Any]:
        return [_plain(row[k]) for k in self.keys]

    def key_text(self, row: Row) -> str:
        return "/".join(bytes(v).hex() if isinstance(v, bytes | bytearray | memoryview)
                        else str(v) for v in (row[k] for k in self.keys))

    def content_of(self, row: Row) -> dict[str, Any]:
        return {c: _plain(row[c]) for c in self.columns}

    def identity(self, row: Row, mac: bytes) -> tuple[Any, ...]:
        """Everything the MAC covers, as stored, and the MAC: equal identities check alike."""
        return (self.table, mac, *self._covered(row))

    @cached_property
    def _covered(self) -> Callable[[Row], tuple[Any, ...]]:
        # Always a tuple: keys plus columns are at least two names.
        return itemgetter(*self.keys, *self.columns)


class RowSealer:
    """MACs rows and checks them; remembers and reports each failing row once."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the state integrity key must be at least 256 bits")
        self._key = bytes(key)
        self._lock = threading.Lock()
        self._seen: set[tuple[str, str]] = set()
        self._listed: list[dict[str, str]] = []
        self._hooks: list[FailureHook] = []
        self._closers: list[Callable[[], None]] = []
        # Rows already verified, by everything their MAC covers: the MAC is a pure
        # function of that, so an equal row needs no second HMAC.
        self._verified: dict[tuple[Any, ...], None] = {}

    @classmethod
    def ephemeral(cls) -> RowSealer:
        """A sealer with a random key: nothing written before it, or by another
        process, checks. What a store has until the daemon attaches its real one."""
        return cls(os.urandom(32))

    # --- the MAC ----------------------------------------------------------

    def mac(self, table: str, key: Sequence[Any] | str, content: Mapping[str, Any]) -> bytes:
        message = canonical_json([table, key if isinstance(key, str) else list(key),
                                  dict(content)])
        return hmac.digest(self._key, message, "sha256")

    def check(self, table: str, key: Sequence[Any] | str, content: Mapping[str, Any],
              mac: bytes | None) -> bool:
        """True if ``mac`` is this row's; otherwise the failure is reported (once)."""
        if mac is not None and hmac.compare_digest(self.mac(table, key, content), bytes(mac)):
            return True
        self.report(table, key if isinstance(key, str) else "/".join(
            str(k["hex"]) if isinstance(k, dict) else str(k) for k in key))
        return False

    # --- per-table helpers ---------------------------------------------------

    def seal_row(self, spec: RowSpec, row: Row) -> bytes:
        return self.mac(spec.table, spec.key_of(row), spec.content_of(row))

    def row_ok(self, spec: RowSpec, row: Row) -> bool:
        """Check a row read with its ``mac`` column (a ``sqlite3.Row`` or a dict)."""
        if self.quietly_ok(spec, row):
            return True
        self.report(spec.table, spec.key_text(row))
        return False

    def quietly_ok(self, spec: RowSpec, row: Row) -> bool:
        """:meth:`row_ok` without reporting (for a caller that reports elsewhere)."""
        stored = row["mac"]
        if stored is None:
            return False
        identity = spec.identity(row, bytes(stored))
        if identity in self._verified:
            return True
        if not hmac.compare_digest(self.seal_row(spec, row), bytes(stored)):
            return False
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.clear()
        self._verified[identity] = None
        return True

    # --- failures -----------------------------------------------------------

    def on_failure(self, hook: FailureHook, close: Callable[[], None] | None = None) -> None:
        """Call ``hook(table, key)`` the first time a row fails in this process.

        Hooks run on the thread that found the failure (the event loop's, too) and
        must not block; ``close`` is called by :meth:`close`.
        """
        self._hooks.append(hook)
        if close is not None:
            self._closers.append(close)

    def close(self) -> None:
        """Let every hook finish what it was handed (before the audit log closes)."""
        for close in self._closers:
            close()

    def report(self, table: str, key: str) -> None:
        """Record that ``table``/``key`` failed; the first time, tell the hooks."""
        with self._lock:
            if (table, key) in self._seen:
                return
            self._seen.add((table, key))
            if len(self._listed) < MAX_LISTED:
                self._listed.append({"table": table, "key": key})
            hooks = list(self._hooks)
        log.error("state integrity failure: %s row %s does not carry its MAC; "
                  "it is treated as absent", table, key)
        for hook in hooks:
            try:
                hook(table, key)
            except Exception:
                log.exception("state integrity failure hook failed")

    def failures(self) -> list[dict[str, str]]:
        """The failing rows found in this run (at most :data:`MAX_LISTED`)."""
        with self._lock:
            return [dict(f) for f in self._listed]

    @property
    def failure_count(self) -> int:
        with self._lock:
            return len(self._seen)


class AuditedFailures:
    """The failure hook of the daemon: one ``state.integrity_failure`` entry per row.

    Entries are appended on a thread of its own, so a failure found on the event
    loop never waits there for the audit log's fsync.
    """

    ACTION = "state.integrity_failure"

    def __init__(self, append: Callable[..., Any]) -> None:
        self._append = append
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pacd-integrity")

    def __call__(self, table: str, key: str) -> None:
        try:
            self._pool.submit(self._write, table, key)
        except RuntimeError:  # shut down: the daemon is stopping
            log.error("state integrity failure %s/%s found while stopping: not audited",
                      table, key)

    def _write(self, table: str, key: str) -> None:
        try:
            self._append(DAEMON_ACTOR, self.ACTION, f"{table}/{key}", "deny",
                         f"a {table} row failed its integrity check: treated as absent, "
                         "kept for inspection", {"table": table, "key": key})
        except Exception:
            log.exception("could not audit the integrity failure of %s/%s", table, key)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
