"""verify() recomputes every entry from the format's definition, not from stored bytes.

The rows here are made by hand with the standard library, as a writer with an
encoding bug would store them: the same JSON values, other bytes. A verify
that re-used the writer's encoder, or trusted the stored text, would agree
with such a writer; the one in pacd.audit.verify must name the entry.
"""

from __future__ import annotations

import hmac
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pacd.audit import AuditLog
from pacd.core.canonical import canonical_json

KEY = bytes(range(32))

Encoder = Callable[[dict[str, Any]], bytes]


def _insertion_order(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _spaced(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, ensure_ascii=False).encode("utf-8")


def _ascii_escaped(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode("ascii")


def _padded_time(entry: dict[str, Any]) -> bytes:
    canonical = canonical_json(entry)
    plain = b'"time":' + repr(entry["time"]).encode()
    assert plain in canonical
    return canonical.replace(plain, plain + b"0")


#: ways to write the same entry value as other bytes
RE_ENCODINGS: dict[str, Encoder] = {
    "keys in insertion order": _insertion_order,
    "whitespace after separators": _spaced,
    "non-ASCII escaped as \\uXXXX": _ascii_escaped,
    "time with a trailing zero": _padded_time,
}


def entry_value(seq: int) -> dict[str, Any]:
    # Keys deliberately out of sorted order, and text outside ASCII in every
    # column an escape could change.
    return {"seq": seq, "time": 1_700_000_000.25 + seq, "actor": f"agent-\u00e9{seq}",
            "target": f"home/\u00e9t\u00e9/{seq}", "action": "data.read", "decision": "allow",
            "reason": "r\u00e9ason", "details": {"z": seq, "a": ["\u2603", 1.5]}}


def write_rows(path: Path, bad_seq: int, encode: Encoder, store_details: Encoder,
               count: int = 4) -> None:
    """A chained log of ``count`` entries; entry ``bad_seq`` is MACed over ``encode``'s
    bytes and stores its details as ``store_details`` writes them. The entries after it
    chain to its MAC, so nothing but that one encoding is off."""
    AuditLog.open(path, KEY, None).close()  # creates the table
    mac = bytes(32)
    rows = []
    for seq in range(1, count + 1):
        entry = entry_value(seq)
        odd = seq == bad_seq
        mac = hmac.digest(KEY, mac + (encode if odd else canonical_json)(entry), "sha256")
        details = (store_details if odd else canonical_json)(entry["details"])
        rows.append((seq, entry["time"], entry["actor"], entry["action"], entry["target"],
                     entry["decision"], entry["reason"], details.decode("utf-8"), mac))
    with sqlite3.connect(path) as conn:
        conn.executemany("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def verify(path: Path) -> tuple[bool, int | None, str]:
    log = AuditLog.open(path, KEY, None)
    try:
        result = log.verify()
    finally:
        log.close()
    return result.ok, result.first_bad_seq, result.problem


def test_a_log_in_the_canonical_encoding_verifies(tmp_path: Path) -> None:
    # The control: the same rows with nothing re-encoded pass, so the failures
    # below come from the encoding alone.
    path = tmp_path / "audit.sqlite3"
    write_rows(path, 0, canonical_json, canonical_json)
    assert verify(path) == (True, None, "")


@pytest.mark.parametrize("name", sorted(RE_ENCODINGS))
def test_an_entry_macd_over_re_encoded_bytes_fails_verify(tmp_path: Path, name: str) -> None:
    # A writer whose spliced encoder drifted from canonical_json MACs the drifted
    # bytes and stores plain columns (details come from canonical_json): its own
    # encoder would vouch for the entry; only recomputing from the columns notices.
    path = tmp_path / "audit.sqlite3"
    write_rows(path, 2, RE_ENCODINGS[name], canonical_json)
    ok, first_bad, problem = verify(path)
    assert (ok, first_bad) == (False, 2), problem
    assert problem.startswith("entry 2 fails its MAC")


@pytest.mark.parametrize("name", ["keys in insertion order", "whitespace after separators",
                                  "non-ASCII escaped as \\uXXXX"])
def test_details_re_encoded_after_writing_fail_verify(tmp_path: Path, name: str) -> None:
    # The MAC is over the canonical entry, but the stored details text was
    # rewritten to an equal value in other bytes (a migration, a hand edit):
    # readers get bytes the MAC never covered.
    path = tmp_path / "audit.sqlite3"
    write_rows(path, 3, canonical_json, RE_ENCODINGS[name])
    ok, first_bad, problem = verify(path)
    assert (ok, first_bad) == (False, 3), problem
    assert "canonical" in problem
