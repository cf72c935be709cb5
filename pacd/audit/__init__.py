"""The tamper-evident audit log: HMAC hash chain, keychain checkpoint, group commit.

Every entry carries ``mac = HMAC-SHA256(key, prev_mac ‖ canonical_json(entry))``
with ``prev_mac`` of the first entry = 32 zero bytes, so editing, deleting or
reordering any entry breaks the chain at that entry. Deleting the *tail* keeps
the chain intact, so after each committed batch the head (seq, mac) is also
written to the secret store (the keychain), outside the database's reach.

The parts:

- :mod:`pacd.audit.entry`: an entry, its limits and the canonical bytes its MAC
  covers (the format's definition);
- :mod:`pacd.audit.writer`: :class:`AuditLog`, opened with :meth:`AuditLog.open`;
  one thread gives entries their seq and MAC and commits them in groups;
- :mod:`pacd.audit.checkpoint`: the keychain checkpoint and what it says of
  the log (:class:`Untrusted`, :class:`AuditHealth`);
- :mod:`pacd.audit.verify`: the whole chain recomputed from the format's
  definition, independently of the writer's encoder.
"""

from pacd.audit.checkpoint import (
    CHECKPOINT_FAILURE_LIMIT,
    AuditHealth,
    Untrusted,
    checkpoint_name,
    read_checkpoint,
)
from pacd.audit.entry import (
    DECISIONS,
    MAX_DETAILS_BYTES,
    MAX_REASON_CHARS,
    AuditEntry,
)
from pacd.audit.verify import VerifyResult
from pacd.audit.writer import AuditLog

__all__ = [
    "CHECKPOINT_FAILURE_LIMIT",
    "DECISIONS",
    "MAX_DETAILS_BYTES",
    "MAX_REASON_CHARS",
    "AuditEntry",
    "AuditHealth",
    "AuditLog",
    "Untrusted",
    "VerifyResult",
    "checkpoint_name",
    "read_checkpoint",
]
