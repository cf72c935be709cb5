"""One audit entry: its columns, their limits, and the canonical bytes its MAC covers.

This module is the format's definition. An entry's MAC is
``HMAC-SHA256(key, prev_mac ‖ canonical_entry(...))`` with ``prev_mac`` of the
first entry = :data:`GENESIS`; :func:`canonical_entry` is plain
``canonical_json`` over the eight MACed columns, and :func:`chain_mac` is the
standard library's ``hmac``. The writer builds the same bytes a faster way
(see :mod:`pacd.audit.writer`); ``verify`` uses only what is here.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from pacd.core.canonical import canonical_json
from pacd.errors import InvalidRequest

DECISIONS = ("allow", "deny", "info")
#: the ``prev_mac`` of the first entry
GENESIS = bytes(32)
COLUMNS = "seq, time, actor, action, target, decision, reason, details, mac"
SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    details TEXT NOT NULL,
    mac BLOB NOT NULL
)
"""

#: an entry's details (canonical JSON) take at most this many bytes, and its reason
#: at most MAX_REASON_CHARS characters: what an entry records must not grow with
#: what a request sent. Longer ones are cut and name the SHA-256 of the full text.
MAX_DETAILS_BYTES = 4096
MAX_REASON_CHARS = 1024


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    time: float
    actor: str
    action: str
    target: str
    decision: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    mac: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "decision": self.decision,
            "reason": self.reason,
            "details": self.details,
            "mac": self.mac.hex(),
        }


def canonical_entry(  # noqa: PLR0917 - one parameter per MACed column
    seq: int, when: float, actor: str, action: str, target: str, decision: str, reason: str,
    details: Any,
) -> bytes:
    """The bytes an entry's MAC covers."""
    return canonical_json({
        "seq": seq, "time": when, "actor": actor, "action": action, "target": target,
        "decision": decision, "reason": reason, "details": details,
    })


def chain_mac(key: bytes, prev_mac: bytes, canonical: bytes) -> bytes:
    """The MAC of an entry whose canonical bytes are ``canonical``, chained to ``prev_mac``."""
    return hmac.digest(key, prev_mac + canonical, "sha256")


def capped_details(text: str) -> tuple[dict[str, Any], str]:
    """Details too long to keep: a summary (size, SHA-256, the start) within the cap."""
    data = text.encode("utf-8")
    summary: dict[str, Any] = {"truncated": True, "bytes": len(data),
                               "sha256": hashlib.sha256(data).hexdigest(), "head": ""}
    head = text[:MAX_DETAILS_BYTES]
    while True:
        summary["head"] = head
        out = canonical_json(summary)
        if len(out) <= MAX_DETAILS_BYTES:
            return summary, out.decode("utf-8")
        # Escapes and multi-byte characters make the text longer than its slice.
        head = head[: max(0, len(head) - (len(out) - MAX_DETAILS_BYTES))]


def capped_reason(reason: str) -> str:
    full = reason.encode("utf-8", "surrogatepass")
    note = f" … (cut from {len(reason)} characters; sha256 {hashlib.sha256(full).hexdigest()})"
    return reason[: MAX_REASON_CHARS - len(note)] + note


def plain_columns(  # noqa: PLR0917 - one parameter per entry column
    actor: object, action: object, target: object, decision: object, reason: object,
    details_problem: str,
) -> tuple[str, str, str, str, str]:
    """The text columns as plain str, or InvalidRequest naming every problem.

    A str subclass (a StrEnum member, say) is stored and MACed as its string
    value, exactly as SQLite and the JSON encoder see it.
    """
    problems = [
        f"{name} must be a string"
        for name, value in (("actor", actor), ("action", action), ("target", target),
                            ("reason", reason))
        if not isinstance(value, str)
    ]
    if not isinstance(decision, str) or decision not in DECISIONS:
        problems.append(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    if details_problem:
        problems.append(details_problem)
    if problems:
        raise InvalidRequest("invalid audit entry: " + "; ".join(problems), errors=problems)
    assert isinstance(actor, str) and isinstance(action, str) and isinstance(target, str)
    assert isinstance(decision, str) and isinstance(reason, str)
    plain = str.__str__
    return plain(actor), plain(action), plain(target), plain(decision), plain(reason)
