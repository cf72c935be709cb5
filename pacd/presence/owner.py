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
from typing import TYPE_CHECKING, Literal

from pacd.core.models import Owner
from pacd.errors import Conflict, IntegrityError, InvalidRequest, NotFound
from pacd.integrity import RowSpec
from pacd.presence.attestation import is_software_authenticator
from pacd.store import Store
from pacd.vault.keychain import SecretStore

if TYPE_CHECKING:
    from fido2.cose import CoseKey

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
# The owner row counts the credentials, under its MAC: deleting credential rows
# cannot make "no key enrolled yet" (and so first-key enrolment) true again.
_SCHEMA_V2 = """
ALTER TABLE presence_owner ADD COLUMN credentials INTEGER NOT NULL DEFAULT 0;
ALTER TABLE presence_owner ADD COLUMN mac BLOB;
ALTER TABLE presence_credentials ADD COLUMN mac BLOB
"""
_OWNER = RowSpec("presence_owner", ("singleton",), ("id", "name", "created_at", "credentials"))
_CREDENTIAL = RowSpec("presence_credentials", ("credential_id",),
                      ("public_key", "sign_count", "aaguid", "uv_capable", "label",
                       "created_at", "kind"))
#: how missing credential rows are named in integrity reports (they have no key left)
MISSING_CREDENTIALS = "(rows missing)"
#: the keychain item that says an owner was created for this PACD_HOME: the state
#: database alone cannot prove that a row it no longer has was ever there
OWNER_MARKER = "state-owner-created"

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
        from fido2 import cbor  # lazy: see pacd.presence.rp
        from fido2.cose import CoseKey

        decoded = cbor.decode(self.public_key)
        if not isinstance(decoded, Mapping):
            raise ValueError("public key is not a COSE_Key map")
        return CoseKey.parse(decoded)

    @property
    def software(self) -> bool:
        """pacd's software (demo) authenticator made it (by the AAGUID it states)."""
        return is_software_authenticator(self.aaguid)

    def to_json(self) -> dict[str, object]:
        """Public description (no key material is secret, but none is needed either)."""
        return {
            "credential_id": self.credential_id.hex(),
            "label": self.label,
            "kind": self.kind,
            "aaguid": self.aaguid.hex(),
            "uv_capable": self.uv_capable,
            "software": self.software,
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
        store.migrate("presence_owner", 2, _SCHEMA_V2)
        store.migrate("presence_credential_usage", 1, _USAGE_SCHEMA)

    # --- owner ----------------------------------------------------------

    def create_owner(self, name: str, now: float) -> Owner:
        owner = Owner(id=uuid.uuid4().hex, name=check_text(name, "owner name", MAX_NAME),
                      created_at=now)
        row: dict[str, object] = {"singleton": 1, "id": owner.id, "name": owner.name,
                                  "created_at": owner.created_at, "credentials": 0}
        row["mac"] = self.store.integrity.seal_row(_OWNER, row)
        with self.store.transaction() as conn:
            if conn.execute("SELECT 1 FROM presence_owner").fetchone() is not None:
                raise Conflict("an owner already exists for this daemon")
            conn.execute(
                "INSERT INTO presence_owner (singleton, id, name, created_at, credentials, mac)"
                " VALUES (:singleton, :id, :name, :created_at, :credentials, :mac)", row)
        return owner

    def _owner_row(self, conn: sqlite3.Connection | None = None) -> sqlite3.Row | None:
        """The owner row if it checks; IntegrityError if one is there and does not."""
        sql = "SELECT * FROM presence_owner"
        row = (conn.execute(sql).fetchone() if conn is not None
               else self.store.query_one(sql))
        if row is None:
            return None
        if not self.store.integrity.row_ok(_OWNER, row):
            raise IntegrityError(
                "the owner record failed its integrity check (see `pacd status`); "
                "it was not written by this daemon")
        return row

    def get_owner(self, conn: sqlite3.Connection | None = None) -> Owner | None:
        """The owner, if there is one whose row checks (read through ``conn`` if given)."""
        try:
            row = self._owner_row(conn)
        except IntegrityError:
            return None  # treated as absent; reported by the check
        if row is None:
            return None
        return Owner(id=str(row["id"]), name=str(row["name"]), created_at=float(row["created_at"]))

    def require_owner(self) -> Owner:
        row = self._owner_row()
        if row is None:
            raise NotFound("no owner yet: create one first (pacd init --name NAME)")
        return Owner(id=str(row["id"]), name=str(row["name"]), created_at=float(row["created_at"]))

    def has_credentials(self) -> bool:
        """Whether the owner has a credential enrolled, as the owner's MACed record says.

        Fails closed: an owner record that does not check counts as "has one", and
        credential rows that are missing (fewer than the record counts) are
        reported, never taken as "none yet" — so deleting rows from the database
        cannot reopen first-key enrolment.
        """
        try:
            row = self._owner_row()
        except IntegrityError:
            return True
        if row is None:
            return False
        counted = int(row["credentials"])
        present = len(self.list_credentials())
        if present < counted:
            self.store.integrity.report("presence_credentials", MISSING_CREDENTIALS)
        return counted > 0 or present > 0

    def _count_credentials(self, conn: sqlite3.Connection, delta: int) -> None:
        """Move the owner's MACed credential count by ``delta`` (in the caller's transaction)."""
        row = self._owner_row(conn)
        if row is None:
            raise NotFound("no owner yet: create one first (pacd init --name NAME)")
        changed = dict(row) | {"credentials": max(0, int(row["credentials"]) + delta)}
        conn.execute("UPDATE presence_owner SET credentials = ?, mac = ? WHERE singleton = 1",
                     (changed["credentials"], self.store.integrity.seal_row(_OWNER, changed)))

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
        row: dict[str, object] = {
            "credential_id": credential.credential_id, "public_key": credential.public_key,
            "sign_count": credential.sign_count, "aaguid": credential.aaguid,
            "uv_capable": int(credential.uv_capable), "label": label,
            "created_at": credential.created_at, "kind": credential.kind}
        row["mac"] = self.store.integrity.seal_row(_CREDENTIAL, row)
        try:
            with self.store.transaction() as conn:
                conn.execute(
                    "INSERT INTO presence_credentials (credential_id, public_key, sign_count,"
                    " aaguid, uv_capable, label, created_at, kind, mac)"
                    " VALUES (:credential_id, :public_key, :sign_count, :aaguid, :uv_capable,"
                    " :label, :created_at, :kind, :mac)", row)
                self._count_credentials(conn, +1)
        except sqlite3.IntegrityError as exc:
            raise Conflict("this credential is already enrolled") from exc
        return self.get_credential(credential.credential_id)

    def list_credentials(self) -> list[Credential]:
        rows = self.store.query("SELECT * FROM presence_credentials ORDER BY created_at, label")
        return [_credential(row) for row in rows
                if self.store.integrity.row_ok(_CREDENTIAL, row)]

    def find_credential(self, credential_id: bytes) -> Credential | None:
        row = self.store.query_one(
            "SELECT * FROM presence_credentials WHERE credential_id = ?", (credential_id,)
        )
        if row is None or not self.store.integrity.row_ok(_CREDENTIAL, row):
            return None
        return _credential(row)

    def get_credential(self, credential_id: bytes) -> Credential:
        credential = self.find_credential(credential_id)
        if credential is None:
            raise NotFound("no enrolled credential with this id")
        return credential

    def update_sign_count(self, credential_id: bytes, sign_count: int) -> None:
        """Store a new counter; it may only move forward (checked in the same statement)."""
        with self.store.transaction() as conn:
            row = self._credential_row(conn, credential_id)
            if row is None:
                raise NotFound("no enrolled credential with this id")
            stored = int(row["sign_count"])
            if not (stored < sign_count or stored == sign_count == 0):
                raise Conflict("sign counter may only move forward")
            changed = dict(row) | {"sign_count": sign_count}
            conn.execute(
                "UPDATE presence_credentials SET sign_count = ?, mac = ? WHERE credential_id = ?",
                (sign_count, self.store.integrity.seal_row(_CREDENTIAL, changed), credential_id))

    def remove_credential(self, credential_id: bytes) -> None:
        with self.store.transaction() as conn:
            if self._credential_row(conn, credential_id) is None:
                raise NotFound("no enrolled credential with this id")
            conn.execute("DELETE FROM presence_credentials WHERE credential_id = ?",
                         (credential_id,))
            conn.execute("DELETE FROM presence_credential_usage WHERE credential_id = ?",
                         (credential_id,))
            self._count_credentials(conn, -1)

    def _credential_row(self, conn: sqlite3.Connection,
                        credential_id: bytes) -> sqlite3.Row | None:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM presence_credentials WHERE credential_id = ?", (credential_id,)
        ).fetchone()
        if row is None or not self.store.integrity.row_ok(_CREDENTIAL, row):
            return None
        return row

    def count_credentials(self) -> int:
        """How many enrolled keys check (a row that fails its MAC is not a key)."""
        return len(self.list_credentials())

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


def refuse_if_owner_vanished(secrets: SecretStore, owners: OwnerRegistry) -> None:
    """Refuse a new owner when the keychain says one was created and its row is gone.

    Deleting the owner row (with the credentials) would otherwise let anyone
    create a new owner and enrol a first key without a session.
    """
    if secrets.get(OWNER_MARKER) is None:
        return
    if owners.store.query_one("SELECT 1 FROM presence_owner") is not None:
        return  # there is one: creating another is the usual conflict
    owners.store.integrity.report("presence_owner", "(row missing)")
    raise IntegrityError(
        "an owner was created for this PACD_HOME (the keychain says so) but its record "
        "is missing from the state database: it was removed behind the daemon's back. "
        "Restore the database, or start from a fresh PACD_HOME")


def remember_owner(secrets: SecretStore, owner: Owner) -> None:
    """Record in the keychain that this PACD_HOME has an owner (see OWNER_MARKER)."""
    secrets.set(OWNER_MARKER, owner.id.encode())
