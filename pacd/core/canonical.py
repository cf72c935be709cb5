"""Canonical JSON: the exact bytes that get hashed, signed and MACed.

Sorted keys, no insignificant whitespace, UTF-8, no NaN/Infinity. Two equal
payloads always give the same bytes, so a digest names exactly one action.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def digest(obj: Any) -> bytes:
    """SHA-256 over the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj)).digest()
