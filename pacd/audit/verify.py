"""Check a whole log against its definition: the chain, each entry's bytes, the checkpoint.

Every MAC is recomputed from the stored columns with :func:`canonical_entry`
(plain ``canonical_json``) and :func:`chain_mac` (the standard library's
``hmac``), never with the writer's spliced encoder or its pre-keyed HMAC: if
the writer ever encoded an entry differently from the format's definition,
its own encoder would agree with itself, and only an independent
recomputation notices.
"""

from __future__ import annotations

import hmac
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacd.audit.checkpoint import read_checkpoint
from pacd.audit.entry import COLUMNS, GENESIS, canonical_entry, chain_mac
from pacd.core.canonical import canonical_json
from pacd.errors import AuditError, KeychainError
from pacd.vault.keychain import SecretStore


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    first_bad_seq: int | None
    #: human explanation of the first problem ("" when ok)
    problem: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "first_bad_seq": self.first_bad_seq}


def read_connection(path: Path) -> sqlite3.Connection:
    """A read-only connection of its own, so reading never waits for the writer."""
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA query_only=ON")
    return conn


def verify(path: Path, key: bytes, secrets: SecretStore | None,
           checkpoint_name: str) -> VerifyResult:
    """Check the whole chain of the log at ``path`` and its checkpoint; names the first bad seq.

    ``secrets`` None: no checkpoint is expected (truncation is not checked).
    """
    # Checkpoint first: it is written after commit, so the snapshot read next
    # contains at least the entries it covers.
    checkpoint = None
    if secrets is not None:
        try:
            checkpoint = read_checkpoint(secrets, checkpoint_name)
        except KeychainError as exc:
            raise AuditError(f"cannot read the audit checkpoint: {exc.message}") from exc
    conn = read_connection(path)
    try:
        conn.execute("BEGIN")
        cursor = conn.execute(f"SELECT {COLUMNS} FROM audit_log ORDER BY seq")  # noqa: S608
        count = 0
        expected = 1
        prev = GENESIS
        first_bad: int | None = None
        problem = ""
        checkpoint_mac: bytes | None = None
        while True:
            rows = cursor.fetchmany(4096)
            if not rows:
                break
            for row in rows:
                count += 1
                if first_bad is not None:
                    continue
                seq = row[0]
                if seq != expected:
                    first_bad = expected
                    problem = (f"entry {expected} is missing" if isinstance(seq, int)
                               and seq > expected else f"entry {expected} is out of order")
                    continue
                why = check_row(key, row, prev)
                if why:
                    first_bad, problem = expected, f"entry {expected} {why}"
                    continue
                prev = bytes(row[8])
                if checkpoint is not None and seq == checkpoint[0]:
                    checkpoint_mac = prev
                expected += 1
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise AuditError(f"cannot read the audit log: {exc}") from exc
    finally:
        conn.close()
    if first_bad is None and checkpoint is None and secrets is not None and count:
        first_bad = 1
        problem = (f"the log holds {count} entries but the keychain holds no checkpoint "
                   "for it: a removal of entries cannot be ruled out")
    if first_bad is None and checkpoint is not None and checkpoint[0] > 0:
        last = expected - 1
        if checkpoint[0] > last:
            first_bad = last + 1
            problem = (f"entries {last + 1}..{checkpoint[0]} were removed from the end "
                       "(the keychain checkpoint records them)")
        elif checkpoint_mac is None or not hmac.compare_digest(checkpoint_mac, checkpoint[1]):
            first_bad = checkpoint[0]
            problem = f"entry {checkpoint[0]} differs from the keychain checkpoint"
    return VerifyResult(first_bad is None, count, first_bad, problem)


def check_row(key: bytes, row: tuple[Any, ...], prev: bytes) -> str:
    """Why the stored ``row`` is not the entry chained to ``prev`` ("" when it is)."""
    seq, when, actor, action, target, decision, reason, details, mac = row
    if not isinstance(when, float) or not all(
        isinstance(v, str) for v in (actor, action, target, decision, reason, details)
    ) or not isinstance(mac, bytes):
        return "has a column of the wrong type"
    try:
        parsed = json.loads(details)
    except ValueError:
        return "has unparseable details"
    # The stored text must be the canonical one, not merely an equal value: the
    # details column is what readers get, and re-encoded bytes are rewritten bytes.
    if not isinstance(parsed, dict) or canonical_json(parsed).decode("utf-8") != details:
        return "has altered details (not the canonical encoding)"
    expected = chain_mac(key, prev, canonical_entry(
        seq, when, actor, action, target, decision, reason, parsed))
    if not hmac.compare_digest(expected, mac):
        return "fails its MAC (edited, re-encoded, reordered, or chained to a removed entry)"
    return ""
