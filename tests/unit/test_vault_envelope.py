"""Envelope encryption over a real SQLite store and the real passphrase keystore.

The keychain-backed runs of the same Vault are in tests/system/test_keychain_*.py.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import struct
import threading
import tracemalloc
from pathlib import Path

import pytest

from pacd.errors import IntegrityError, KeychainError
from pacd.store import Store
from pacd.vault import PassphraseSecretStore, Vault

OPAQUE = "sealed data failed authentication"


@pytest.fixture
def secrets(tmp_path: Path) -> PassphraseSecretStore:
    return PassphraseSecretStore(tmp_path / "keys.sealed", b"correct horse")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state.sqlite3")


@pytest.fixture
def vault(store: Store, secrets: PassphraseSecretStore) -> Vault:
    v = Vault(store, secrets)
    v.initialize()
    return v


def key_id_of(sealed: bytes) -> int:
    return int(struct.unpack_from(">BI", sealed)[1])


def test_initialize_is_idempotent_and_creates_one_master_key(
    store: Store, secrets: PassphraseSecretStore
) -> None:
    v = Vault(store, secrets)
    assert not v.has_master_key()
    v.initialize()
    assert v.has_master_key()
    master = secrets.get("vault-master-key-v1")
    assert master is not None and len(master) == 32
    v.initialize()
    Vault(store, secrets).initialize()
    assert secrets.get("vault-master-key-v1") == master


def test_seal_open_roundtrip(vault: Vault) -> None:
    for value in (b"", b"x", os.urandom(5000)):
        sealed = vault.seal("home", "personal", "diary", value)
        # A 1-byte value may appear in random ciphertext by chance; longer ones must not.
        assert len(value) < 16 or value not in sealed
        assert vault.open("home", "personal", "diary", sealed) == value


def test_value_moved_to_other_place_fails_with_one_opaque_error(vault: Vault) -> None:
    # Give every place a key with the same id, so only the AAD can tell them apart.
    for container, domain in (("home", "personal"), ("home", "work"), ("other", "personal")):
        vault.seal(container, domain, "warmup", b"x")
    sealed = vault.seal("home", "personal", "diary", b"secret")
    messages = set()
    for container, domain, name in (
        ("home", "work", "diary"),
        ("other", "personal", "diary"),
        ("home", "personal", "notes"),
        ("home", "nonexistent", "diary"),
    ):
        with pytest.raises(IntegrityError) as info:
            vault.open(container, domain, name, sealed)
        messages.add(str(info.value))
    assert messages == {OPAQUE}


def test_any_altered_byte_or_truncation_fails(vault: Vault) -> None:
    sealed = vault.seal("home", "personal", "diary", b"secret value")
    for i in range(len(sealed)):
        bad = bytearray(sealed)
        bad[i] ^= 0x01
        with pytest.raises(IntegrityError, match=OPAQUE):
            vault.open("home", "personal", "diary", bytes(bad))
    for cut in (0, 3, 17, len(sealed) - 1):
        with pytest.raises(IntegrityError, match=OPAQUE):
            vault.open("home", "personal", "diary", sealed[:cut])


def test_data_key_rotation_keeps_old_data_readable(vault: Vault) -> None:
    old = vault.seal("home", "personal", "a", b"before")
    assert key_id_of(old) == 1
    assert vault.rotate_data_key("home", "personal") == 2
    new = vault.seal("home", "personal", "a", b"after")
    assert key_id_of(new) == 2
    assert vault.open("home", "personal", "a", old) == b"before"
    assert vault.open("home", "personal", "a", new) == b"after"
    # the other domain is untouched
    assert key_id_of(vault.seal("home", "work", "a", b"w")) == 1


def test_master_rotation_rewraps_without_reencrypting(
    store: Store, secrets: PassphraseSecretStore, vault: Vault
) -> None:
    sealed = {
        (c, d): vault.seal(c, d, "k", f"{c}/{d}".encode())
        for c in ("home", "lab") for d in ("personal", "work")
    }
    vault.rotate_data_key("home", "work")
    wrapped_before = {tuple(r[:3]): bytes(r[3]) for r in store.query(
        "SELECT container, domain, key_id, wrapped FROM vault_data_keys")}
    subkey = vault.derive_subkey("audit-log")
    old_master = secrets.get("vault-master-key-v1")

    assert vault.rotate_master_key() == 2

    assert secrets.get("vault-master-key-v1") is None
    new_master = secrets.get("vault-master-key-v2")
    assert new_master is not None and new_master != old_master
    wrapped_after = {tuple(r[:3]): bytes(r[3]) for r in store.query(
        "SELECT container, domain, key_id, wrapped FROM vault_data_keys")}
    assert wrapped_after.keys() == wrapped_before.keys()
    assert all(wrapped_after[k] != wrapped_before[k] for k in wrapped_after)
    # a fresh process (new Vault, keys loaded from the store) still opens old data
    fresh = Vault(store, secrets)
    for (c, d), value in sealed.items():
        assert fresh.open(c, d, "k", value) == f"{c}/{d}".encode()
    assert fresh.derive_subkey("audit-log") == subkey
    assert fresh.derive_subkey("tokens") != subkey


def test_master_key_missing_or_replaced_fails_closed(
    store: Store, secrets: PassphraseSecretStore, vault: Vault
) -> None:
    sealed = vault.seal("home", "personal", "k", b"v")
    secrets.set("vault-master-key-v1", os.urandom(32))
    with pytest.raises(KeychainError, match="different master key"):
        Vault(store, secrets).open("home", "personal", "k", sealed)
    assert not Vault(store, secrets).has_master_key()
    secrets.delete("vault-master-key-v1")
    with pytest.raises(KeychainError, match="no master key"):
        Vault(store, secrets).open("home", "personal", "k", sealed)


def test_initialize_removes_a_previous_master_key_left_by_a_crash(
    store: Store, secrets: PassphraseSecretStore, vault: Vault
) -> None:
    old = secrets.get("vault-master-key-v1")
    assert old is not None
    vault.rotate_master_key()
    # simulate a crash between the DB commit and the keychain delete
    secrets.set("vault-master-key-v1", old)
    Vault(store, secrets).initialize()
    assert secrets.get("vault-master-key-v1") is None
    assert secrets.get("vault-master-key-v2") is not None


def test_encryption_counter_forces_rotation(store: Store, secrets: PassphraseSecretStore) -> None:
    vault = Vault(store, secrets, max_encryptions=3)
    vault.initialize()
    sealed = [vault.seal("home", "personal", "k", bytes([i])) for i in range(7)]
    assert [key_id_of(s) for s in sealed] == [1, 1, 1, 2, 2, 2, 3]
    opened = [vault.open("home", "personal", "k", s) for s in sealed]
    assert opened == [bytes([i]) for i in range(7)]
    rows = store.query("SELECT key_id, reserved FROM vault_data_keys ORDER BY key_id")
    assert [(r[0], r[1]) for r in rows] == [(1, 3), (2, 3), (3, 3)]


def test_counter_reservation_survives_restart(store: Store, secrets: PassphraseSecretStore) -> None:
    # One use reserves a block (capped at the limit). A restart must treat the whole
    # reservation as used: it cannot know how much of it the dead process consumed.
    first = Vault(store, secrets, max_encryptions=3)
    first.initialize()
    assert key_id_of(first.seal("home", "personal", "k", b"a")) == 1
    second = Vault(store, secrets, max_encryptions=3)
    assert key_id_of(second.seal("home", "personal", "k", b"b")) == 2

    big = Vault(store, secrets, max_encryptions=100_000)
    assert key_id_of(big.seal("home", "work", "k", b"c")) == 1
    reserved = store.query_one(
        "SELECT reserved FROM vault_data_keys WHERE domain = 'work' AND key_id = 1"
    )
    assert reserved is not None and reserved[0] >= 1
    again = Vault(store, secrets, max_encryptions=100_000)
    again.seal("home", "work", "k", b"d")
    after = store.query_one(
        "SELECT reserved FROM vault_data_keys WHERE domain = 'work' AND key_id = 1"
    )
    assert after is not None and after[0] > reserved[0]


def test_concurrent_seals_are_all_counted_and_open(
    store: Store, secrets: PassphraseSecretStore
) -> None:
    vault = Vault(store, secrets, max_encryptions=50)
    vault.initialize()
    results: list[tuple[int, bytes]] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        for i in range(40):
            value = f"{n}-{i}".encode()
            sealed = vault.seal("home", "personal", "k", value)
            with lock:
                results.append((key_id_of(sealed), sealed))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 320
    per_key: dict[int, int] = {}
    for key_id, sealed in results:
        per_key[key_id] = per_key.get(key_id, 0) + 1
        vault.open("home", "personal", "k", sealed)
    assert max(per_key.values()) <= 50
    assert len(per_key) >= 320 // 50


def test_no_master_or_data_key_in_the_database_file(
    tmp_path: Path, store: Store, secrets: PassphraseSecretStore, vault: Vault
) -> None:
    vault.seal("home", "personal", "k", b"value")
    master = secrets.get("vault-master-key-v1")
    assert master is not None
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("state.sqlite3*"))
    assert master not in raw
    assert vault.derive_subkey("audit-log") not in raw


# --- streams -------------------------------------------------------------------


def seal_bytes(vault: Vault, data: bytes, name: str = "blob") -> bytes:
    out = io.BytesIO()
    assert vault.seal_stream("home", "personal", name, io.BytesIO(data), out) == len(data)
    return out.getvalue()


def open_bytes(vault: Vault, sealed: bytes, name: str = "blob", domain: str = "personal") -> bytes:
    out = io.BytesIO()
    vault.open_stream("home", domain, name, io.BytesIO(sealed), out)
    return out.getvalue()


@pytest.fixture
def small_chunks(store: Store, secrets: PassphraseSecretStore) -> Vault:
    v = Vault(store, secrets, chunk_size=64)
    v.initialize()
    return v


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 128, 64 * 5 + 7])
def test_stream_roundtrip(small_chunks: Vault, size: int) -> None:
    data = os.urandom(size)
    sealed = seal_bytes(small_chunks, data)
    assert open_bytes(small_chunks, sealed) == data


def chunks_of(sealed: bytes) -> tuple[bytes, list[bytes]]:
    header, body = sealed[:37], sealed[37:]
    return header, [body[i:i + 80] for i in range(0, len(body), 80)]


def test_stream_truncation_reorder_and_splice_fail(small_chunks: Vault) -> None:
    data = os.urandom(64 * 4)
    sealed = seal_bytes(small_chunks, data)
    header, chunks = chunks_of(sealed)
    assert len(chunks) == 4
    other_header, other_chunks = chunks_of(seal_bytes(small_chunks, os.urandom(64 * 4)))
    attacks = {
        "drop last chunk": header + b"".join(chunks[:3]),
        "drop first chunk": header + b"".join(chunks[1:]),
        "swap chunks": header + chunks[1] + chunks[0] + chunks[2] + chunks[3],
        "splice chunk from another stream": header + chunks[0] + other_chunks[1] + b"".join(
            chunks[2:]),
        "other header": other_header + b"".join(chunks),
        "trailing garbage": sealed + b"\0" * 5,
        "cut inside a chunk": sealed[:-5],
        "header only": header,
        "flipped byte": sealed[:50] + bytes([sealed[50] ^ 1]) + sealed[51:],
    }
    for name, attack in attacks.items():
        with pytest.raises(IntegrityError, match=OPAQUE):
            open_bytes(small_chunks, attack)
        assert name
    with pytest.raises(IntegrityError, match=OPAQUE):
        open_bytes(small_chunks, sealed, name="other-name")
    with pytest.raises(IntegrityError, match=OPAQUE):
        open_bytes(small_chunks, sealed, domain="work")
    # streams and single-shot values are not interchangeable
    with pytest.raises(IntegrityError, match=OPAQUE):
        small_chunks.open("home", "personal", "blob", sealed)
    single = small_chunks.seal("home", "personal", "blob", b"x")
    with pytest.raises(IntegrityError, match=OPAQUE):
        open_bytes(small_chunks, single)


def test_stream_old_data_opens_after_both_rotations(small_chunks: Vault) -> None:
    data = os.urandom(500)
    sealed = seal_bytes(small_chunks, data)
    small_chunks.rotate_data_key("home", "personal")
    small_chunks.rotate_master_key()
    assert open_bytes(small_chunks, sealed) == data


class _Pattern(io.RawIOBase):
    """A readable stream of ``size`` deterministic bytes, produced on the fly."""

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.block = hashlib.sha256(b"pattern").digest() * 2048  # 64 KiB

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        n = min(len(buf), self.remaining, len(self.block))
        buf[:n] = self.block[:n]
        self.remaining -= n
        return n


class _Digest(io.RawIOBase):
    """A writable sink that only hashes what it receives."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.hash.update(data)
        self.size += len(data)
        return len(data)


def test_64_mib_stream_with_bounded_memory(tmp_path: Path, vault: Vault) -> None:
    size = 64 << 20
    sealed_path = tmp_path / "big.sealed"
    tracemalloc.start()
    try:
        with sealed_path.open("wb") as dst:
            vault.seal_stream("home", "personal", "big", _Pattern(size), dst)  # type: ignore[arg-type]
        _, seal_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        sink = _Digest()
        with sealed_path.open("rb") as src:
            assert vault.open_stream("home", "personal", "big", src, sink) == size  # type: ignore[arg-type]
        _, open_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected = hashlib.sha256()
    pattern = _Pattern(size)
    buf = bytearray(1 << 20)
    while n := pattern.readinto(memoryview(buf)):
        expected.update(buf[:n])
    assert sink.size == size
    assert sink.hash.digest() == expected.digest()
    assert sealed_path.stat().st_size == size + 37 + 64 * 16
    # about two plaintext chunks plus one ciphertext chunk (1 MiB each), never the value
    assert seal_peak < 4 << 20, seal_peak
    assert open_peak < 4 << 20, open_peak


def test_forget_container_crypto_erases(vault: Vault) -> None:
    sealed = vault.seal("gone", "personal", "k", b"v")
    kept = vault.seal("home", "personal", "k", b"w")
    assert vault.forget_container("gone") == 1
    with pytest.raises(IntegrityError):
        vault.open("gone", "personal", "k", sealed)
    assert vault.open("home", "personal", "k", kept) == b"w"


def test_wrapped_key_moved_between_domains_fails(store: Store, vault: Vault) -> None:
    vault.seal("home", "personal", "k", b"x")
    sealed_work = vault.seal("home", "work", "k", b"y")
    # an attacker with DB access copies the personal key's wrapping over the work key
    with sqlite3.connect(store.path) as conn:
        wrapped = conn.execute(
            "SELECT wrapped FROM vault_data_keys WHERE domain = 'personal'").fetchone()[0]
        conn.execute("UPDATE vault_data_keys SET wrapped = ? WHERE domain = 'work'", (wrapped,))
    fresh = Vault(store, vault._secrets)
    with pytest.raises(IntegrityError, match=OPAQUE):
        fresh.open("home", "work", "k", sealed_work)
