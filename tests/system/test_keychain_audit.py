"""The audit log with its key from the vault and its checkpoint in the real gnome-keyring."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from pacd.audit import AuditLog, checkpoint_name
from pacd.store import Store
from pacd.vault import KeyringSecretStore, Vault

pytestmark = pytest.mark.system


@pytest.fixture
def secrets(real_keychain: str) -> Iterator[KeyringSecretStore]:
    namespace = f"pacd-test:{uuid.uuid4().hex[:12]}"
    yield KeyringSecretStore(namespace)
    import secretstorage

    with closing(secretstorage.dbus_init()) as conn:
        for item in secretstorage.get_default_collection(conn).search_items(
                {"service": namespace}):
            item.delete()


def test_checkpoint_in_the_keychain_catches_truncation(
    tmp_path: Path, secrets: KeyringSecretStore
) -> None:
    vault = Vault(Store(tmp_path / "state.sqlite3"), secrets)
    vault.initialize()
    key = vault.derive_subkey("audit-log")
    path = tmp_path / "audit.sqlite3"

    log = AuditLog.open(path, key, secrets)
    threads = [
        threading.Thread(target=lambda n=n: [
            log.append(f"agent{n}", "data.read", f"k{i}", "allow", "connected")
            for i in range(50)])
        for n in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()  # writes the final checkpoint synchronously

    raw = secrets.get(checkpoint_name(path))
    assert raw is not None
    checkpoint = json.loads(raw)
    assert checkpoint["seq"] == 200

    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq > 180")
    # a restarted daemon derives the same key from the vault and sees the cut
    key_again = Vault(Store(tmp_path / "state.sqlite3"), secrets).derive_subkey("audit-log")
    log = AuditLog.open(path, key_again, secrets)
    result = log.verify()
    assert (result.ok, result.entries, result.first_bad_seq) == (False, 180, 181)
    assert log.untrusted is not None and log.untrusted.first_bad_seq == 181
    # It keeps recording, but the checkpoint keeps the evidence until re-anchored.
    log.append("owner", "x", "y", "info", "z", checkpoint=True)
    log.close()
    assert json.loads(secrets.get(checkpoint_name(path)) or b"{}")["seq"] == 200


def test_key_survives_master_rotation(tmp_path: Path, secrets: KeyringSecretStore) -> None:
    store = Store(tmp_path / "state.sqlite3")
    vault = Vault(store, secrets)
    vault.initialize()
    path = tmp_path / "audit.sqlite3"
    log = AuditLog.open(path, vault.derive_subkey("audit-log"), secrets)
    log.append("owner", "vault.rotate", "master", "allow", "carbonProof")
    log.close()
    vault.rotate_master_key()
    log = AuditLog.open(path, Vault(store, secrets).derive_subkey("audit-log"), secrets)
    result = log.verify()
    log.close()
    assert (result.ok, result.entries) == (True, 1)
