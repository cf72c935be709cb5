"""Bearer tokens issued after a successful presence ceremony.

- 256 random bits, shown to the client once; the database keeps only their
  SHA-256. A plain hash is enough (no HMAC key to guard): the input has 256
  bits of entropy, so a stolen table cannot be brute-forced back to tokens.
- Bound to the owner, a security level and a scope (``"*"`` or one action).
- A check is a read (:meth:`pacd.store.Store.read`): it takes no write lock,
  so authenticated requests do not queue behind other requests' writes and
  their fsyncs. The one check that writes is the use of a single-use
  (carbonProof) token: it checks again and consumes the token in one write
  transaction, so two concurrent uses cannot both pass.
- Expiry is checked twice: against wall time stored in the database (so a
  restart does not revive a token) and against the monotonic clock while the
  process runs (so setting the system time back does not extend one).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
from dataclasses import dataclass

from pacd.core.models import SecurityLevel
from pacd.errors import NotFound, PresenceRequired, TokenExpired, TokenRevoked, Unauthorized
from pacd.integrity import RowSpec
from pacd.presence.clock import Clock
from pacd.presence.owner import OwnerRegistry
from pacd.store import Store

ANY_SCOPE = "*"
MAX_TOKEN_CHARS = 256

_SCHEMA = """
CREATE TABLE presence_tokens (
    token_id TEXT PRIMARY KEY,
    token_hash BLOB NOT NULL UNIQUE,
    owner_id TEXT NOT NULL,
    level TEXT NOT NULL,
    scope TEXT NOT NULL,
    single_use INTEGER NOT NULL,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL,
    consumed_at REAL
)
"""
#: every column but the MAC is MACed: a revocation or a use cannot be undone by an edit
_ROW = RowSpec("presence_tokens", ("token_id",),
               ("token_hash", "owner_id", "level", "scope", "single_use", "issued_at",
                "expires_at", "revoked_at", "consumed_at"))


@dataclass(frozen=True)
class IssuedToken:
    token: str
    token_id: str
    level: SecurityLevel
    #: wall-clock time (seconds since the epoch)
    expires_at: float
    scope: str = ANY_SCOPE
    single_use: bool = False


@dataclass(frozen=True)
class TokenInfo:
    token_id: str
    owner_id: str
    level: SecurityLevel
    scope: str
    single_use: bool
    expires_at: float


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


#: a level by its name: a dict lookup instead of the Enum's call machinery, per request
_LEVELS: dict[str, SecurityLevel] = {level.value: level for level in SecurityLevel}


def _level(value: SecurityLevel | str) -> SecurityLevel:
    """``SecurityLevel(value)``, raising the same ValueError for an unknown name."""
    return _LEVELS.get(value) or SecurityLevel(value)


def _digest(token: str | None) -> bytes:
    """The hash a presented token is looked up by; ``Unauthorized`` if it is none of ours."""
    if not token:
        raise Unauthorized("a bearer token is required: run a presence ceremony first")
    # Tokens are URL-safe base64; anything else (a header's undecodable bytes
    # arrive as surrogates) is no token of ours, and must not reach the hash.
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise Unauthorized("unknown token")
    return token_hash(token)


#: at most this many remembered tokens (a session's few, not every token ever issued)
_MAX_KNOWN = 64


class _Verified:
    """Tokens whose rows (and their owner's) were found valid at one state of the database.

    An authorised request otherwise reads and MAC-checks two rows on the event
    loop; while the database has not changed (``Store.data_version``) and rows
    are checked with the same key, those reads would find the same. Only what
    the rows decide is remembered (the row and owner MACs, the owner binding,
    not revoked, not used): expiry, level and scope are checked on every use.
    """

    __slots__ = ("sealer", "tokens", "version")

    def __init__(self, version: int | None, sealer: object) -> None:
        self.version = version
        self.sealer = sealer
        self.tokens: dict[bytes, TokenInfo] = {}


class TokenService:
    def __init__(self, store: Store, clock: Clock, lifetime_s: int = 3600) -> None:
        if lifetime_s <= 0:
            raise ValueError("token lifetime must be positive")
        self.store = store
        self.clock = clock
        self.lifetime_s = lifetime_s
        self.owners = OwnerRegistry(store)
        store.migrate("presence_tokens", 1, _SCHEMA)
        store.migrate("presence_tokens", 2, "ALTER TABLE presence_tokens ADD COLUMN mac BLOB")
        self._lock = threading.Lock()
        # token_id -> monotonic deadline, for tokens this process has seen.
        self._deadlines: dict[str, float] = {}
        #: tokens whose rows checked at one state of the database (check_if_quick)
        self._known = _Verified(None, store.integrity)

    def issue(
        self, level: SecurityLevel | str, scope: str = ANY_SCOPE, single_use: bool = False
    ) -> IssuedToken:
        level = SecurityLevel(level)
        if level == SecurityLevel.basic:
            raise ValueError("basic needs no token: it is the owner socket itself")
        if not isinstance(scope, str) or not scope:
            raise ValueError("token scope must be a non-empty string")
        owner = self.owners.require_owner()
        if level == SecurityLevel.carbonProof:
            single_use = True
        token = secrets.token_urlsafe(32)
        token_id = secrets.token_hex(8)
        wall, mono = self.clock.wall(), self.clock.monotonic()
        expires_at = wall + self.lifetime_s
        row: dict[str, object] = {
            "token_id": token_id, "token_hash": token_hash(token), "owner_id": owner.id,
            "level": level.value, "scope": scope, "single_use": int(single_use),
            "issued_at": wall, "expires_at": expires_at, "revoked_at": None,
            "consumed_at": None}
        row["mac"] = self.store.integrity.seal_row(_ROW, row)
        with self.store.transaction() as conn:
            # Tokens expired for a day are of no further use to anyone.
            conn.execute("DELETE FROM presence_tokens WHERE expires_at < ?", (wall - 86400,))
            conn.execute(
                "INSERT INTO presence_tokens (token_id, token_hash, owner_id, level, scope,"
                " single_use, issued_at, expires_at, revoked_at, consumed_at, mac) VALUES"
                " (:token_id, :token_hash, :owner_id, :level, :scope, :single_use,"
                " :issued_at, :expires_at, :revoked_at, :consumed_at, :mac)", row)
        with self._lock:
            for stale in [k for k, d in self._deadlines.items() if d <= mono]:
                del self._deadlines[stale]
            self._deadlines[token_id] = mono + self.lifetime_s
        return IssuedToken(token, token_id, level, expires_at, scope, single_use)

    def check(
        self, token: str | None, required: SecurityLevel | str, scope: str = ANY_SCOPE
    ) -> TokenInfo:
        """The token's details if it may be used for ``required`` at ``scope``.

        Raises ``Unauthorized`` (missing or unknown), ``TokenExpired``,
        ``TokenRevoked`` (revoked, or single-use and already used) or
        ``PresenceRequired`` (valid but proves too little, or another scope).
        """
        required = SecurityLevel(required)
        digest = _digest(token)
        with self.store.read() as conn:
            info = self._verified(conn, digest, required, scope)[1]
        if info.single_use:
            self._consume(digest, required, scope)
        return info

    def check_if_quick(
        self, token: str | None, required: SecurityLevel | str, scope: str = ANY_SCOPE
    ) -> TokenInfo | None:
        """:meth:`check` without waiting on anything, for the event loop; ``None`` if
        it would have to (call :meth:`check` in a thread then).

        A check is an indexed read and a MAC: on a free read connection that costs
        less than handing it to a thread. It cannot be done here when another thread
        holds the read connection, or when the token is single-use (its use is a
        write transaction, which may wait on an fsync). Refuses exactly as
        :meth:`check` does.
        """
        required = _level(required)
        digest = _digest(token)
        # No snapshot (see Store.read_if_free): the token row is read before the
        # owner's, so a change in between can only show a newer owner, whose id a
        # token issued before cannot carry: such a token is refused, never one
        # accepted that a snapshot at the token row's read would refuse.
        with self.store.read_if_free() as conn:
            if conn is None:
                return None
            # Read before the rows: a commit after this read changes the number,
            # so what is remembered below is never used past a change it missed.
            version = self.store.data_version(conn)
            known = self._known
            if (version is None or version != known.version
                    or known.sealer is not self.store.integrity):
                known = self._known = _Verified(version, self.store.integrity)
            info = known.tokens.get(digest)
            if info is None:
                info = self._verified(conn, digest, required, scope)[1]
                if version is not None and not info.single_use:
                    if len(known.tokens) >= _MAX_KNOWN:
                        known.tokens.clear()
                    known.tokens[digest] = info
                return None if info.single_use else info
        self._allows(info, required, scope)
        return info

    def _consume(self, digest: bytes, required: SecurityLevel, scope: str) -> None:
        """Use up a single-use token: the one write a check makes. Checked again
        inside the transaction: between the read and here another use may have
        consumed it."""
        with self.store.transaction() as conn:
            row, _info = self._verified(conn, digest, required, scope)
            if self._set(conn, row, "consumed_at", self.clock.wall()) != 1:
                raise TokenRevoked("single-use token was already used")

    def _verified(self, conn: sqlite3.Connection, digest: bytes, required: SecurityLevel,
                  scope: str) -> tuple[sqlite3.Row, TokenInfo]:
        """The row of the token hashing to ``digest`` and its details, if it may be
        used for ``required`` at ``scope`` now; raises as :meth:`check` says."""
        row = conn.execute(
            "SELECT * FROM presence_tokens WHERE token_hash = ?", (digest,)).fetchone()
        # A row the daemon did not write (its MAC fails) is no token at all.
        if row is None or not self.store.integrity.row_ok(_ROW, row):
            raise Unauthorized("unknown token")
        info = _info(row)
        owner = self.owners.get_owner(conn)
        if owner is None or owner.id != info.owner_id:
            raise Unauthorized("token belongs to another owner")
        if row["revoked_at"] is not None:
            raise TokenRevoked("token was revoked")
        if row["consumed_at"] is not None:
            raise TokenRevoked("single-use token was already used")
        self._allows(info, required, scope)
        return row, info

    def _allows(self, info: TokenInfo, required: SecurityLevel, scope: str) -> None:
        """Whether a token whose row checks may be used for ``required`` at ``scope``
        now: the part of a check that depends on the clock and the request, not on
        the database."""
        self._check_expiry(info)
        if not info.level.satisfies(required):
            raise PresenceRequired(
                f"this needs presence level {required.value};"
                f" the token proves only {info.level.value}",
                required_level=required.value,
            )
        if info.scope not in (ANY_SCOPE, scope):
            raise PresenceRequired(
                "the token was issued for another action", required_level=required.value
            )

    def _set(self, conn: sqlite3.Connection, row: sqlite3.Row, column: str,
             value: float) -> int:
        """Set ``column`` (still NULL) of a checked row, with its new MAC; rows changed."""
        changed = dict(row) | {column: value}
        return int(conn.execute(
            f"UPDATE presence_tokens SET {column} = ?, mac = ?"  # noqa: S608 - fixed names
            f" WHERE token_id = ? AND {column} IS NULL",
            (value, self.store.integrity.seal_row(_ROW, changed), row["token_id"]),
        ).rowcount)

    def revoke(self, token_id: str) -> None:
        with self.store.transaction() as conn:
            row = conn.execute(
                "SELECT * FROM presence_tokens WHERE token_id = ?", (token_id,)
            ).fetchone()
            if row is None or not self.store.integrity.row_ok(_ROW, row):
                raise NotFound("no such token")
            if row["revoked_at"] is None:
                self._set(conn, row, "revoked_at", self.clock.wall())

    def revoke_all(self) -> int:
        with self.store.transaction() as conn:
            rows = conn.execute(
                "SELECT * FROM presence_tokens WHERE revoked_at IS NULL").fetchall()
            now = self.clock.wall()
            # Rows that fail their MAC are no tokens: reported, left as they are.
            return sum(self._set(conn, row, "revoked_at", now) for row in rows
                       if self.store.integrity.row_ok(_ROW, row))

    def _check_expiry(self, info: TokenInfo) -> None:
        wall, mono = self.clock.wall(), self.clock.monotonic()
        if wall >= info.expires_at:
            raise TokenExpired("token expired: run a presence ceremony again")
        with self._lock:
            deadline = self._deadlines.get(info.token_id)
            if deadline is None:
                # Issued by an earlier process: from now on this process counts
                # the remaining wall-clock lifetime on its monotonic clock.
                deadline = mono + (info.expires_at - wall)
                self._deadlines[info.token_id] = deadline
        if mono >= deadline:
            raise TokenExpired("token expired: run a presence ceremony again")


def _info(row: sqlite3.Row) -> TokenInfo:
    return TokenInfo(
        token_id=str(row["token_id"]),
        owner_id=str(row["owner_id"]),
        level=_level(str(row["level"])),
        scope=str(row["scope"]),
        single_use=bool(row["single_use"]),
        expires_at=float(row["expires_at"]),
    )
