"""The explicit passphrase keystore (scrypt + AES-GCM file)."""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path

import pytest

from pacd.config import Config
from pacd.errors import ConfigError, KeychainError, KeychainLocked
from pacd.vault import PassphraseSecretStore, open_secret_store


def test_roundtrip_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "keys.sealed"
    first = PassphraseSecretStore(path, b"pass phrase")
    assert first.get("a") is None
    first.set("a", b"\x00\xffbinary")
    first.set("b", b"two")
    first.delete("b")
    first.delete("never-there")
    second = PassphraseSecretStore(path, b"pass phrase")
    assert second.get("a") == b"\x00\xffbinary"
    assert second.get("b") is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"binary" not in path.read_bytes()
    assert "passphrase" in second.backend_name
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind


def test_wrong_passphrase_is_keychain_locked(tmp_path: Path) -> None:
    path = tmp_path / "keys.sealed"
    PassphraseSecretStore(path, b"right").set("a", b"1")
    with pytest.raises(KeychainLocked, match="wrong passphrase"):
        PassphraseSecretStore(path, b"wrong")


def test_weakened_kdf_parameters_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.sealed"
    PassphraseSecretStore(path, b"right").set("a", b"1")
    doc = json.loads(path.read_bytes())
    assert doc["header"]["kdf"]["n"] >= 2**15
    doc["header"]["kdf"]["n"] = 2**10
    path.write_text(json.dumps(doc))
    with pytest.raises(KeychainError, match="damaged"):
        PassphraseSecretStore(path, b"right")


def test_altered_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.sealed"
    PassphraseSecretStore(path, b"right").set("a", b"1")
    doc = json.loads(path.read_bytes())
    doc["header"]["kdf"]["n"] = 2**16  # stronger, but not what the file was sealed with
    path.write_text(json.dumps(doc))
    with pytest.raises(KeychainLocked):
        PassphraseSecretStore(path, b"right")
    path.write_text("not json")
    with pytest.raises(KeychainError, match="damaged"):
        PassphraseSecretStore(path, b"right")


def test_empty_passphrase_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        PassphraseSecretStore(tmp_path / "k", b"")


def test_open_secret_store_passphrase_only_when_configured(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_bytes(b"from a file\n")
    pw.chmod(0o600)
    config = Config(home=tmp_path / "home", keystore="passphrase", passphrase_file=pw)
    store = open_secret_store(config)
    assert isinstance(store, PassphraseSecretStore)
    store.set("x", b"y")
    assert PassphraseSecretStore(tmp_path / "home" / "keystore.sealed", b"from a file").get(
        "x") == b"y"
    pw.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        open_secret_store(config)
    with pytest.raises(ConfigError, match="passphrase_file"):
        open_secret_store(Config(home=tmp_path, keystore="passphrase"))
    with pytest.raises(ConfigError, match="keystore"):
        open_secret_store(Config(home=tmp_path, keystore="plaintext"))


def test_planted_symlink_at_the_keystore_temp_name_receives_nothing(tmp_path: Path) -> None:
    """Another writer of the directory plants symlinks where a temp file would go:
    the keystore never writes through them (the sealed secrets stay where meant)."""
    path = tmp_path / "keys.sealed"
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    # The name an older keystore wrote through (pid-based, predictable).
    (tmp_path / f".keys.sealed.{os.getpid()}.tmp").symlink_to(victim)
    store = PassphraseSecretStore(path, b"pass phrase")
    store.set("a", b"1")
    assert victim.read_bytes() == b"untouched"
    assert not path.is_symlink() and PassphraseSecretStore(path, b"pass phrase").get("a") == b"1"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_keystore_temp_file_is_created_exclusively(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a planted symlink at the very name chosen is refused, not followed."""
    path = tmp_path / "keys.sealed"
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    monkeypatch.setattr(secrets, "token_hex", lambda n=None: "guessed")
    (tmp_path / ".keys.sealed.guessed.tmp").symlink_to(victim)
    store = PassphraseSecretStore(path, b"pass phrase")
    with pytest.raises(KeychainError, match="cannot write passphrase keystore"):
        store.set("a", b"1")
    assert victim.read_bytes() == b"untouched"
    assert not path.exists()
    assert store.get("a") is None  # the failed write is not kept in memory either
