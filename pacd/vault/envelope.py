"""Envelope encryption: keychain master key → KEK → one data key per (container, domain).

Key hierarchy
  - a 256-bit **master key** lives only in the :class:`SecretStore` (keychain),
    under a name carrying its version;
  - the **KEK** is HKDF-SHA256(master key, info = version) and never stored;
  - each (container, concern domain) has AES-256-GCM **data keys** with an
    increasing key id, stored in the state database wrapped by the KEK, with
    the wrap's AAD binding (container, domain, key id, master version);
  - a random **derivation root**, wrapped the same way, feeds
    :meth:`Vault.derive_subkey` so that subkeys (audit MAC key, token hashing)
    stay stable when the master key rotates.

Sealed value formats (all failures to open are one opaque IntegrityError)
  - single shot: ``0x01 ‖ key_id (4) ‖ nonce (12) ‖ AES-GCM(ct ‖ tag)``; random
    96-bit nonce; AAD = (format, container, domain, key name, key id).
  - stream: ``0x02 ‖ key_id (4) ‖ salt (32)`` then chunks of at most 1 MiB
    plaintext. The chunks are sealed under a per-stream key HKDF(data key,
    salt, AAD) with the nonce = chunk index ‖ last flag, and each chunk's AAD
    also binds the index and the last flag, so truncation, reordering and
    splicing between streams all fail. Because the per-stream key is fresh and
    its nonces are a counter, chunk nonces cannot collide; the data key itself
    is used once per stream (to derive), which is what its counter counts.

Encryption counters: every AES-GCM invocation under a data key (one per
single-shot seal, one per stream) is counted. Counts are reserved in blocks in
the database *before* use, so a crash can waste a reservation but never reuse
one; when a key reaches ``max_encryptions`` a new key id is created
automatically. Random 96-bit nonces are safe to about 2^32 uses per key; the
default limit 2^24 keeps the collision probability below 2^-49.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import struct
import threading
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pacd.core.canonical import canonical_json
from pacd.errors import IntegrityError, KeychainError
from pacd.integrity import INTEGRITY_LABEL, RowSealer
from pacd.store import Store
from pacd.vault.keychain import SecretStore

CHUNK_SIZE = 1 << 20
DEFAULT_MAX_ENCRYPTIONS = 1 << 24
_RESERVE_BLOCK = 4096
_TAG = 16
_NONCE = 12
_SALT = 32
_SINGLE = 1
_STREAM = 2
_HEADER = struct.Struct(">BI")
_MAX_CHUNKS = 1 << 40

_SCHEMA = """
CREATE TABLE vault_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    master_version INTEGER NOT NULL,
    master_check BLOB NOT NULL,
    wrapped_root BLOB NOT NULL
);
CREATE TABLE vault_data_keys (
    container TEXT NOT NULL,
    domain TEXT NOT NULL,
    key_id INTEGER NOT NULL,
    master_version INTEGER NOT NULL,
    wrapped BLOB NOT NULL,
    reserved INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (container, domain, key_id)
)
"""


def _hkdf(key: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


def _master_name(version: int) -> str:
    return f"vault-master-key-v{version}"


def _opaque() -> IntegrityError:
    # One message for every cause, so a caller cannot probe which part was wrong.
    return IntegrityError("sealed data failed authentication")


@dataclass
class _DataKey:
    container: str
    domain: str
    key_id: int
    key: bytes
    aead: AESGCM
    used: int
    reserved: int


class Vault:
    """Seals and opens values bound to (container, domain, key name). Thread-safe."""

    def __init__(
        self,
        store: Store,
        secrets: SecretStore,
        *,
        max_encryptions: int = DEFAULT_MAX_ENCRYPTIONS,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        if max_encryptions < 1:
            raise ValueError("max_encryptions must be at least 1")
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self._store = store
        self._secrets = secrets
        self.max_encryptions = max_encryptions
        self.chunk_size = chunk_size
        self._lock = threading.RLock()
        self._master: tuple[int, bytes] | None = None
        self._root: bytes | None = None
        #: (container, domain) -> active key;  (container, domain, key_id) -> key
        self._active: dict[tuple[str, str], _DataKey] = {}
        self._keys: dict[tuple[str, str, int], _DataKey] = {}
        store.migrate("vault", 1, _SCHEMA)

    # --- master key -----------------------------------------------------

    @staticmethod
    def _check_value(master: bytes) -> bytes:
        return hmac.new(master, b"pacd vault master key check", hashlib.sha256).digest()

    @staticmethod
    def _kek(master: bytes, version: int) -> AESGCM:
        return AESGCM(_hkdf(master, b"pacd vault kek v%d" % version))

    @staticmethod
    def _wrap_aad(container: str, domain: str, key_id: int, version: int) -> bytes:
        return canonical_json(["pacd-data-key", container, domain, key_id, version])

    @staticmethod
    def _root_aad(version: int) -> bytes:
        return canonical_json(["pacd-derivation-root", version])

    @staticmethod
    def _wrap(kek: AESGCM, key: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + kek.encrypt(nonce, key, aad)

    @staticmethod
    def _unwrap(kek: AESGCM, wrapped: bytes, aad: bytes) -> bytes:
        try:
            return kek.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], aad)
        except (InvalidTag, ValueError):
            raise _opaque() from None

    def has_master_key(self) -> bool:
        """True when the database has a vault and the keychain holds its master key."""
        row = self._store.query_one("SELECT master_version, master_check FROM vault_meta")
        if row is None:
            return False
        master = self._secrets.get(_master_name(int(row[0])))
        return master is not None and hmac.compare_digest(
            self._check_value(master), bytes(row[1])
        )

    def initialize(self) -> None:
        """Create the master key and derivation root if absent; idempotent."""
        with self._lock:
            row = self._store.query_one("SELECT master_version FROM vault_meta")
            if row is not None:
                version = int(row[0])
                self._load_master()
                # A crash after a rotation's commit may leave the previous key behind.
                if version > 1 and self._secrets.get(_master_name(version - 1)) is not None:
                    self._secrets.delete(_master_name(version - 1))
                return
            master = os.urandom(32)
            root = os.urandom(32)
            # Keychain first: if the DB insert then fails, the orphan key wraps nothing.
            self._secrets.set(_master_name(1), master)
            with self._store.transaction() as conn:
                conn.execute(
                    "INSERT INTO vault_meta (id, master_version, master_check, wrapped_root)"
                    " VALUES (1, 1, ?, ?)",
                    (self._check_value(master),
                     self._wrap(self._kek(master, 1), root, self._root_aad(1))),
                )
            self._master = (1, master)
            self._root = root

    def _load_master(self) -> tuple[int, bytes]:
        with self._lock:
            if self._master is not None:
                return self._master
            row = self._store.query_one(
                "SELECT master_version, master_check, wrapped_root FROM vault_meta"
            )
            if row is None:
                raise KeychainError("the vault has no master key yet; run `pacd init` first")
            version = int(row[0])
            master = self._secrets.get(_master_name(version))
            if master is None:
                raise KeychainError(
                    f"the keychain ({self._secrets.backend_name}) has no master key version "
                    f"{version} for this PACD_HOME; sealed data cannot be opened"
                )
            if not hmac.compare_digest(self._check_value(master), bytes(row[1])):
                raise KeychainError(
                    "the keychain holds a different master key than this PACD_HOME was "
                    "sealed with; sealed data cannot be opened"
                )
            self._root = self._unwrap(self._kek(master, version), bytes(row[2]),
                                      self._root_aad(version))
            self._master = (version, master)
            return self._master

    def derive_subkey(self, label: str) -> bytes:
        """A 256-bit key for ``label``, stable across master-key rotations."""
        if not label:
            raise ValueError("subkey label must not be empty")
        with self._lock:
            self._load_master()
            assert self._root is not None
            root = self._root
        return _hkdf(root, b"pacd subkey " + label.encode("utf-8"))

    def row_sealer(self) -> RowSealer:
        """The MAC of state rows that decide access (pacd.integrity), keyed from here."""
        return RowSealer(self.derive_subkey(INTEGRITY_LABEL))

    def rotate_master_key(self) -> int:
        """Replace the master key, re-wrapping every data key; returns the new version.

        Order for crash safety: the new key is stored in the keychain first, then
        every wrapped key and the version switch are committed in one transaction,
        and only then is the old key removed. A crash at any point leaves a state
        in which the version recorded in the database has its key in the keychain.
        """
        with self._lock:
            old_version, old_master = self._load_master()
            new_version = old_version + 1
            new_master = os.urandom(32)
            old_kek = self._kek(old_master, old_version)
            new_kek = self._kek(new_master, new_version)
            self._secrets.set(_master_name(new_version), new_master)
            try:
                with self._store.transaction() as conn:
                    rows = conn.execute(
                        "SELECT container, domain, key_id, master_version, wrapped"
                        " FROM vault_data_keys"
                    ).fetchall()
                    for container, domain, key_id, version, wrapped in rows:
                        if int(version) != old_version:
                            raise _opaque()
                        key = self._unwrap(
                            old_kek, bytes(wrapped),
                            self._wrap_aad(container, domain, key_id, old_version),
                        )
                        conn.execute(
                            "UPDATE vault_data_keys SET wrapped = ?, master_version = ?"
                            " WHERE container = ? AND domain = ? AND key_id = ?",
                            (self._wrap(new_kek, key,
                                        self._wrap_aad(container, domain, key_id, new_version)),
                             new_version, container, domain, key_id),
                        )
                    assert self._root is not None
                    conn.execute(
                        "UPDATE vault_meta SET master_version = ?, master_check = ?,"
                        " wrapped_root = ? WHERE id = 1 AND master_version = ?",
                        (new_version, self._check_value(new_master),
                         self._wrap(new_kek, self._root, self._root_aad(new_version)),
                         old_version),
                    )
            except BaseException:
                # Nothing refers to the new key; do not leave it lying around.
                with contextlib.suppress(KeychainError):
                    self._secrets.delete(_master_name(new_version))
                raise
            self._master = (new_version, new_master)
            # The database now needs only the new key. A failure here leaves a
            # harmless orphan that initialize() removes later.
            with contextlib.suppress(KeychainError):
                self._secrets.delete(_master_name(old_version))
            return new_version

    # --- data keys --------------------------------------------------------

    def _load_key(self, container: str, domain: str, key_id: int) -> _DataKey:
        """A data key by id (cached); IntegrityError if it does not exist."""
        cached = self._keys.get((container, domain, key_id))
        if cached is not None:
            return cached
        with self._lock:
            cached = self._keys.get((container, domain, key_id))
            if cached is not None:
                return cached
            version, master = self._load_master()
            row = self._store.query_one(
                "SELECT master_version, wrapped, reserved FROM vault_data_keys"
                " WHERE container = ? AND domain = ? AND key_id = ?",
                (container, domain, key_id),
            )
            if row is None or int(row[0]) != version:
                raise _opaque()
            key = self._unwrap(self._kek(master, version), bytes(row[1]),
                               self._wrap_aad(container, domain, key_id, version))
            # Counts reserved before a restart may have been used: start past them.
            reserved = int(row[2])
            entry = _DataKey(container, domain, key_id, key, AESGCM(key), reserved, reserved)
            self._keys[(container, domain, key_id)] = entry
            return entry

    def _new_key(self, container: str, domain: str) -> _DataKey:
        with self._lock:
            version, master = self._load_master()
            key = AESGCM.generate_key(bit_length=256)
            with self._store.transaction() as conn:
                row = conn.execute(
                    "SELECT COALESCE(MAX(key_id), 0) FROM vault_data_keys"
                    " WHERE container = ? AND domain = ?",
                    (container, domain),
                ).fetchone()
                key_id = int(row[0]) + 1
                conn.execute(
                    "INSERT INTO vault_data_keys"
                    " (container, domain, key_id, master_version, wrapped, reserved)"
                    " VALUES (?, ?, ?, ?, ?, 0)",
                    (container, domain, key_id, version,
                     self._wrap(self._kek(master, version), key,
                                self._wrap_aad(container, domain, key_id, version))),
                )
            entry = _DataKey(container, domain, key_id, key, AESGCM(key), 0, 0)
            self._keys[(container, domain, key_id)] = entry
            self._active[(container, domain)] = entry
            return entry

    def _active_key(self, container: str, domain: str) -> _DataKey:
        with self._lock:
            entry = self._active.get((container, domain))
            if entry is None:
                row = self._store.query_one(
                    "SELECT MAX(key_id) FROM vault_data_keys WHERE container = ? AND domain = ?",
                    (container, domain),
                )
                if row is None or row[0] is None:
                    return self._new_key(container, domain)
                entry = self._load_key(container, domain, int(row[0]))
                self._active[(container, domain)] = entry
            return entry

    def _reserve_use(self, container: str, domain: str) -> _DataKey:
        """The key to encrypt with, after durably counting one more use of it."""
        with self._lock:
            entry = self._active_key(container, domain)
            if entry.used >= self.max_encryptions:
                entry = self._new_key(container, domain)
            if entry.used >= entry.reserved:
                reserved = min(entry.used + _RESERVE_BLOCK, self.max_encryptions)
                with self._store.transaction() as conn:
                    conn.execute(
                        "UPDATE vault_data_keys SET reserved = ?"
                        " WHERE container = ? AND domain = ? AND key_id = ?",
                        (reserved, container, domain, entry.key_id),
                    )
                entry.reserved = reserved
            entry.used += 1
            return entry

    def rotate_data_key(self, container: str, domain: str) -> int:
        """Start a new data key for new seals; old key ids still open old data."""
        _check_names(container, domain)
        return self._new_key(container, domain).key_id

    def active_key_id(self, container: str, domain: str) -> int | None:
        """The key id new seals would use, or None before the first seal."""
        row = self._store.query_one(
            "SELECT MAX(key_id) FROM vault_data_keys WHERE container = ? AND domain = ?",
            (container, domain),
        )
        return None if row is None or row[0] is None else int(row[0])

    def forget_container(self, container: str) -> int:
        """Delete every data key of ``container`` (crypto-erase); returns how many."""
        with self._lock, self._store.transaction() as conn:
            count = conn.execute(
                "DELETE FROM vault_data_keys WHERE container = ?", (container,)
            ).rowcount
            for cache_key in [k for k in self._keys if k[0] == container]:
                del self._keys[cache_key]
            for active_key in [k for k in self._active if k[0] == container]:
                del self._active[active_key]
            return int(count)

    # --- sealing ------------------------------------------------------------

    @staticmethod
    def _aad(fmt: int, container: str, domain: str, key_name: str, key_id: int,  # noqa: PLR0917
             version: int | None = None) -> bytes:
        # Length-prefixed binary rather than JSON: this runs on every seal and open.
        c, d, k = container.encode(), domain.encode(), key_name.encode()
        aad = b"pacd-sealed\0" + struct.pack(
            ">BIIII", fmt, key_id, len(c), len(d), len(k)
        ) + c + d + k
        # The version follows the length-prefixed names, so a versioned AAD is never
        # equal to an unversioned one or to one with another version.
        return aad if version is None else aad + struct.pack(">Q", version)

    def seal(self, container: str, domain: str, key_name: str, plaintext: bytes,
             version: int | None = None) -> bytes:
        """Seal ``plaintext`` for (container, domain, key name[, version]).

        ``version`` (0 .. 2^64-1) is bound into the AAD: a caller that keeps the
        version it wrote (MACed, see SealedData) refuses any other ciphertext of
        the same key, an older one included.
        """
        _check_names(container, domain)
        entry = self._reserve_use(container, domain)
        nonce = os.urandom(_NONCE)
        aad = self._aad(_SINGLE, container, domain, key_name, entry.key_id, version)
        if len(plaintext) < 65536:
            return _HEADER.pack(_SINGLE, entry.key_id) + nonce + entry.aead.encrypt(
                nonce, plaintext, aad)
        head = _HEADER.size + _NONCE
        # Large values: encrypt straight into the output buffer, one copy fewer.
        out = bytearray(head + len(plaintext) + _TAG)
        _HEADER.pack_into(out, 0, _SINGLE, entry.key_id)
        out[_HEADER.size:head] = nonce
        entry.aead.encrypt_into(nonce, plaintext, aad, memoryview(out)[head:])
        return bytes(out)

    def open(self, container: str, domain: str, key_name: str, sealed: bytes,
             version: int | None = None) -> bytes:
        head = _HEADER.size + _NONCE
        if len(sealed) < head + _TAG:
            raise _opaque()
        fmt, key_id = _HEADER.unpack_from(sealed)
        if fmt != _SINGLE:
            raise _opaque()
        entry = self._load_key(container, domain, key_id)
        aad = self._aad(_SINGLE, container, domain, key_name, key_id, version)
        view = memoryview(sealed)
        try:
            return entry.aead.decrypt(bytes(view[_HEADER.size:head]), view[head:], aad)
        except InvalidTag:
            raise _opaque() from None

    def _stream_cipher(
        self, entry: _DataKey, salt: bytes, container: str, domain: str, key_name: str
    ) -> tuple[AESGCM, bytes]:
        aad = self._aad(_STREAM, container, domain, key_name, entry.key_id)
        return AESGCM(_hkdf(entry.key, b"pacd stream " + aad, salt=salt)), aad

    @staticmethod
    def _chunk_nonce_aad(base_aad: bytes, index: int, last: bool) -> tuple[bytes, bytes]:
        tail = struct.pack(">QB", index, 1 if last else 0)
        return b"\0\0\0" + tail, base_aad + tail

    def seal_stream(
        self, container: str, domain: str, key_name: str, src: BinaryIO, dst: BinaryIO
    ) -> int:
        """Seal everything readable from ``src`` into ``dst``; returns plaintext bytes.

        Memory stays at about two chunks whatever the size of the input.
        """
        _check_names(container, domain)
        entry = self._reserve_use(container, domain)
        salt = os.urandom(_SALT)
        cipher, base_aad = self._stream_cipher(entry, salt, container, domain, key_name)
        dst.write(_HEADER.pack(_STREAM, entry.key_id) + salt)
        size = self.chunk_size
        bufs = (bytearray(size), bytearray(size))
        out = bytearray(size + _TAG)
        current = 0
        filled = _read_full(src, bufs[current])
        index = 0
        total = 0
        while True:
            following = _read_full(src, bufs[1 - current])
            last = following == 0
            nonce, aad = self._chunk_nonce_aad(base_aad, index, last)
            view = memoryview(bufs[current])[:filled]
            out_view = memoryview(out)[:filled + _TAG]
            cipher.encrypt_into(nonce, view, aad, out_view)
            dst.write(out_view)
            total += filled
            if last:
                return total
            index += 1
            if index >= _MAX_CHUNKS:
                raise ValueError("stream too long to seal")
            current = 1 - current
            filled = following

    def open_stream(
        self, container: str, domain: str, key_name: str, src: BinaryIO, dst: BinaryIO
    ) -> int:
        """Open a sealed stream into ``dst``; returns plaintext bytes.

        Each chunk is authenticated before it is written, but a damaged stream is
        only known to be damaged when the bad chunk is reached: on IntegrityError
        discard whatever ``dst`` received.
        """
        header = _read_exact(src, _HEADER.size + _SALT)
        if header is None:
            raise _opaque()
        fmt, key_id = _HEADER.unpack_from(header)
        if fmt != _STREAM:
            raise _opaque()
        entry = self._load_key(container, domain, key_id)
        cipher, base_aad = self._stream_cipher(
            entry, bytes(header[_HEADER.size:]), container, domain, key_name
        )
        size = self.chunk_size + _TAG
        bufs = (bytearray(size), bytearray(size))
        plain = bytearray(self.chunk_size)
        current = 0
        filled = _read_full(src, bufs[current])
        index = 0
        total = 0
        while True:
            if filled < _TAG:
                raise _opaque()
            following = _read_full(src, bufs[1 - current]) if filled == size else 0
            last = following == 0
            nonce, aad = self._chunk_nonce_aad(base_aad, index, last)
            out_view = memoryview(plain)[:filled - _TAG]
            try:
                cipher.decrypt_into(nonce, memoryview(bufs[current])[:filled], aad, out_view)
            except InvalidTag:
                raise _opaque() from None
            dst.write(out_view)
            total += filled - _TAG
            if last:
                return total
            index += 1
            current = 1 - current
            filled = following


def _check_names(container: str, domain: str) -> None:
    if not container or not domain:
        raise ValueError("container and domain names must not be empty")


def _read_full(src: BinaryIO, buf: bytearray) -> int:
    """Fill ``buf`` from ``src`` as far as the stream allows; returns bytes read."""
    view = memoryview(buf)
    filled = 0
    while filled < len(buf):
        readinto = getattr(src, "readinto", None)
        if readinto is not None:
            n = readinto(view[filled:])
        else:
            chunk = src.read(len(buf) - filled)
            n = len(chunk)
            view[filled:filled + n] = chunk
        if not n:
            break
        filled += n
    return filled


def _read_exact(src: BinaryIO, n: int) -> bytearray | None:
    buf = bytearray(n)
    return buf if _read_full(src, buf) == n else None
