"""The owner and their enrolled presence credentials.

One owner per daemon (the OS user it runs for). The owner is known only by
the public keys of their enrolled credentials: pacd never sees, derives or
stores biometric data — a fingerprint key or Touch ID checks the finger and
then signs, and all pacd keeps is the public key, the signature counter and
what the key said about itself.
"""

from __future__ import annotations

import sqlite3
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from fido2 import cbor
from fido2.cose import CoseKey

from pacd.core.models import Owner
from pacd.errors import Conflict, InvalidRequest, NotFound
from pacd.store import Store

CredentialKind = Literal["fido2", "platform"]
_KINDS: tuple[str, ...] = ("fido2", "platform")
MAX_NAME = 120
MAX_LABEL = 64

_SCHEMA = """
CREATE TABLE presence_owner (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE presence_credentials (
    credential_id BLOB PRIMARY KEY,
    public_key BLOB NOT NULL,
    sign_count INTEGER NOT NULL CHECK (sign_count >= 0),
    aaguid BLOB NOT NULL,
    uv_capable INTEGER NOT NULL,
    label TEXT NOT NULL,
    created_at REAL NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('fido2', 'platform'))
)
"""

# When each key last signed something. Kept apart from the credential rows: it
# is shown to the owner (a key used when they did not use it is worth noticing)
# but decides nothing, so it does not have to carry what those rows carry.
_USAGE_SCHEMA = """
CREATE TABLE presence_credential_usage (
    credential_id BLOB PRIMARY KEY,
    last_used_at REAL NOT NULL
)
"""


@dataclass(frozen=True)
class Credential:
    """An enrolled presence credential (a FIDO2 key, or a platform key such as Touch ID)."""

    credential_id: bytes
    #: COSE_Key, CBOR-encoded, exactly as the authenticator attested it
    public_key: bytes
    sign_count: int
    aaguid: bytes
    #: the authenticator verified the user (PIN/biometric) when it was enrolled
    uv_capable: bool
    label: str
    created_at: float
    kind: CredentialKind = "fido2"

    def cose_key(self) -> CoseKey:
        decoded = cbor.decode(self.public_key)
        if not isinstance(decoded, Mapping):
            raise ValueError("public key is not a COSE_Key map")
        return CoseKey.parse(decoded)

    def to_json(self) -> dict[str, object]:
        """Public description (no key material is secret, but none is needed either)."""
        return {
            "credential_id": self.credential_id.hex(),
            "label": self.label,
            "kind": self.kind,
            "aaguid": self.aaguid.hex(),
            "uv_capable": self.uv_capable,
            "sign_count": self.sign_count,
            "created_at": self.created_at,
        }


def check_text(value: object, what: str, limit: int) -> str:
    """A short human label: non-empty, bounded, no control characters."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be a string")
    text = value.strip()
    if not text:
        raise InvalidRequest(f"{what} must not be empty")
    if len(text) > limit:
        raise InvalidRequest(f"{what} must be at most {limit} characters")
    if any(unicodedata.category(ch).startswith("C") for ch in text):
        raise InvalidRequest(f"{what} must not contain control characters")
    return text


class OwnerRegistry:
    def __init__(self, store: Store) -> None:
        self.store = store
        store.migrate("presence_owner", 1, _SCHEMA)
        store.migrate("presence_credential_usage", 1, _USAGE_SCHEMA)

    # --- owner ----------------------------------------------------------

    def create_owner(self, name: str, now: float) -> Owner:
        owner = Owner(id=uuid.uuid4().hex, name=check_text(name, "owner name", MAX_NAME),
                      created_at=now)
        with self.store.transaction() as conn:
            if conn.execute("SELECT 1 FROM presence_owner").fetchone() is not None:
                raise Conflict("an owner already exists for this daemon")
            conn.execute(
                "INSERT INTO presence_owner (singleton, id, name, created_at) VALUES (1, ?, ?, ?)",
                (owner.id, owner.name, owner.created_at),
            )
        return owner

    def get_owner(self) -> Owner | None:
        row = self.store.query_one("SELECT id, name, created_at FROM presence_owner")
        if row is None:
            return None
        return Owner(id=str(row["id"]), name=str(row["name"]), created_at=float(row["created_at"]))

    def require_owner(self) -> Owner:
        owner = self.get_owner()
        if owner is None:
            raise NotFound("no owner yet: create one first (pacd init --name NAME)")
        return owner

    # --- credentials ----------------------------------------------------

    def add_credential(self, credential: Credential) -> Credential:
        self.require_owner()
        if credential.kind not in _KINDS:
            raise InvalidRequest(f"credential kind must be one of {', '.join(_KINDS)}")
        if credential.sign_count < 0:
            raise InvalidRequest("sign counter must not be negative")
        label = check_text(credential.label, "credential label", MAX_LABEL)
        try:
            credential.cose_key()
        except Exception as exc:
            raise InvalidRequest("credential public key is not a valid COSE key") from exc
        try:
            with self.store.transaction() as conn:
                conn.execute(
                    "INSERT INTO presence_credentials (credential_id, public_key, sign_count,"
                    " aaguid, uv_capable, label, created_at, kind)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (credential.credential_id, credential.public_key, credential.sign_count,
                     credential.aaguid, int(credential.uv_capable), label,
                     credential.created_at, credential.kind),
                )
        except sqlite3.IntegrityError as exc:
            raise Conflict("this credential is already enrolled") from exc
        return self.get_credential(credential.credential_id)

    def list_credentials(self) -> list[Credential]:
        rows = self.store.query("SELECT * FROM presence_credentials ORDER BY created_at, label")
        return [_credential(row) for row in rows]

    def find_credential(self, credential_id: bytes) -> Credential | None:
        row = self.store.query_one(
            "SELECT * FROM presence_credentials WHERE credential_id = ?", (credential_id,)
        )
        return None if row is None else _credential(row)

    def get_credential(self, credential_id: bytes) -> Credential:
        credential = self.find_credential(credential_id)
        if credential is None:
            raise NotFound("no enrolled credential with this id")
        return credential

    def update_sign_count(self, credential_id: bytes, sign_count: int) -> None:
        """Store a new counter; it may only move forward (checked in the same statement)."""
        with self.store.transaction() as conn:
            cur = conn.execute(
                "UPDATE presence_credentials SET sign_count = ?"
                " WHERE credential_id = ? AND (sign_count < ? OR (sign_count = 0 AND ? = 0))",
                (sign_count, credential_id, sign_count, sign_count),
            )
            if cur.rowcount != 1:
                if self.find_credential(credential_id) is None:
                    raise NotFound("no enrolled credential with this id")
                raise Conflict("sign counter may only move forward")

    def remove_credential(self, credential_id: bytes) -> None:
        with self.store.transaction() as conn:
            cur = conn.execute(
                "DELETE FROM presence_credentials WHERE credential_id = ?", (credential_id,)
            )
            if cur.rowcount != 1:
                raise NotFound("no enrolled credential with this id")
            conn.execute("DELETE FROM presence_credential_usage WHERE credential_id = ?",
                         (credential_id,))

    def count_credentials(self) -> int:
        row = self.store.query_one("SELECT COUNT(*) FROM presence_credentials")
        return 0 if row is None else int(row[0])

    def note_use(self, credential_id: bytes, now: float) -> None:
        """Record that this key just signed (joins the caller's transaction)."""
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO presence_credential_usage (credential_id, last_used_at)"
                " VALUES (?, ?) ON CONFLICT (credential_id) DO UPDATE SET last_used_at ="
                " MAX(last_used_at, excluded.last_used_at)", (credential_id, now))

    def last_used(self) -> dict[bytes, float]:
        """When each enrolled key last signed; keys that never did are absent."""
        rows = self.store.query(
            "SELECT u.credential_id, u.last_used_at FROM presence_credential_usage u"
            " JOIN presence_credentials c ON c.credential_id = u.credential_id")
        return {bytes(r[0]): float(r[1]) for r in rows}


def _credential(row: sqlite3.Row) -> Credential:
    kind = str(row["kind"])
    return Credential(
        credential_id=bytes(row["credential_id"]),
        public_key=bytes(row["public_key"]),
        sign_count=int(row["sign_count"]),
        aaguid=bytes(row["aaguid"]),
        uv_capable=bool(row["uv_capable"]),
        label=str(row["label"]),
        created_at=float(row["created_at"]),
        kind="platform" if kind == "platform" else "fido2",
    )
