"""The keychain adapter against the real gnome-keyring (run via scripts/dev-session).

Refused backends are keyring's own fail and null backends, handed to the store
as an in-process choice (``backend=``; a configured one arrives by
``PYTHON_KEYRING_BACKEND``, see tests/integration/test_daemon_start.py), and
plaintext-file backends shaped like keyrings.alt.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import keyring
import pytest
from keyring.backends import SecretService, chainer, fail, null

from pacd.config import Config
from pacd.errors import KeychainError, KeychainLocked, KeychainUnavailable
from pacd.store import Store
from pacd.vault import KeyringSecretStore, Vault, namespace_for_home, open_secret_store
from tests.conftest import require_system

pytestmark = pytest.mark.system


@pytest.fixture
def namespace(real_keychain: str) -> Iterator[str]:
    ns = f"pacd-test:{uuid.uuid4().hex[:12]}"
    yield ns
    # remove whatever the test left in the shared test keychain
    import secretstorage

    with closing(secretstorage.dbus_init()) as conn:
        collection = secretstorage.get_default_collection(conn)
        if not collection.is_locked():
            for service in (ns, ns + "-b"):  # -b: a second store's, in a few tests
                for item in collection.search_items({"service": service}):
                    item.delete()


def secret_service_items(namespace: str) -> dict[str, bytes]:
    """What the Secret Service itself holds for ``namespace`` (read without keyring)."""
    import secretstorage

    with closing(secretstorage.dbus_init()) as conn:
        collection = secretstorage.get_default_collection(conn)
        return {
            item.get_attributes()["username"]: item.get_secret()
            for item in collection.search_items({"service": namespace})
        }


def test_roundtrip_binary_values(namespace: str) -> None:
    store = KeyringSecretStore(namespace)
    assert store.backend_name == "keyring.backends.SecretService.Keyring"
    value = bytes(range(256))
    assert store.get("k") is None
    store.set("k", value)
    assert store.get("k") == value
    assert secret_service_items(namespace)["k"] == base64.b64encode(value)
    store.delete("k")
    store.delete("k")  # absent: not an error
    assert store.get("k") is None


def test_namespaces_do_not_collide(real_keychain: str, tmp_path: Path) -> None:
    a_ns = namespace_for_home(tmp_path / "a")
    b_ns = namespace_for_home(tmp_path / "b")
    assert a_ns != b_ns and a_ns.startswith("pacd:")
    assert namespace_for_home(tmp_path / "a" / ".." / "a") == a_ns
    a, b = KeyringSecretStore(a_ns), KeyringSecretStore(b_ns)
    try:
        a.set("vault-master-key-v1", b"A")
        b.set("vault-master-key-v1", b"B")
        assert a.get("vault-master-key-v1") == b"A"
        assert b.get("vault-master-key-v1") == b"B"
    finally:
        a.delete("vault-master-key-v1")
        b.delete("vault-master-key-v1")


def test_master_key_lives_in_the_secret_service(namespace: str, tmp_path: Path) -> None:
    secrets = KeyringSecretStore(namespace)
    store = Store(tmp_path / "state.sqlite3")
    vault = Vault(store, secrets)
    vault.initialize()
    items = secret_service_items(namespace)
    assert set(items) == {"vault-master-key-v1"}
    master = base64.b64decode(items["vault-master-key-v1"])
    assert len(master) == 32
    store.close()
    assert master not in (tmp_path / "state.sqlite3").read_bytes()

    store = Store(tmp_path / "state.sqlite3")
    vault = Vault(store, secrets)
    sealed = vault.seal("home", "personal", "k", b"value")
    vault.rotate_master_key()
    items = secret_service_items(namespace)
    assert set(items) == {"vault-master-key-v2"}
    assert Vault(store, KeyringSecretStore(namespace)).open("home", "personal", "k", sealed) == (
        b"value")

    # the keychain loses the key: pacd refuses rather than inventing a new one
    secrets.delete("vault-master-key-v2")
    with pytest.raises(KeychainError, match="no master key"):
        Vault(store, secrets).open("home", "personal", "k", sealed)


def test_open_secret_store_uses_the_keychain_by_default(real_keychain: str, tmp_path: Path) -> None:
    store = open_secret_store(Config(home=tmp_path))
    assert isinstance(store, KeyringSecretStore)
    assert store.namespace == namespace_for_home(tmp_path)


class PlaintextFileKeyring(keyring.backend.KeyringBackend):
    """A plaintext JSON-file backend shaped like keyrings.alt's PlaintextKeyring.

    keyrings.alt itself is not installed here: once installed, keyring would
    chain it behind the Secret Service for every process on the machine.
    """

    priority = 0.5  # type: ignore[assignment]  # the value keyrings.alt uses

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def _load(self) -> dict[str, str]:
        return dict(json.loads(self.path.read_text())) if self.path.exists() else {}

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(f"{service}/{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        data = self._load()
        data[f"{service}/{username}"] = password
        self.path.write_text(json.dumps(data))

    def delete_password(self, service: str, username: str) -> None:
        data = self._load()
        data.pop(f"{service}/{username}", None)
        self.path.write_text(json.dumps(data))


class HighPriorityAltKeyring(PlaintextFileKeyring):
    """Claims a high priority but lives in keyrings.alt: refused by its module."""

    priority = 5  # type: ignore[assignment]


HighPriorityAltKeyring.__module__ = "keyrings.alt.file"


@pytest.mark.parametrize("make_backend", [
    lambda tmp: fail.Keyring(),
    lambda tmp: null.Keyring(),
    lambda tmp: PlaintextFileKeyring(tmp / "plain.json"),
    lambda tmp: HighPriorityAltKeyring(tmp / "alt.json"),
], ids=["fail", "null", "plaintext-file", "keyrings.alt-module"])
def test_insecure_backends_are_refused(
    real_keychain: str, tmp_path: Path, make_backend: Any
) -> None:
    backend = make_backend(tmp_path)
    with pytest.raises(KeychainUnavailable) as info:
        KeyringSecretStore("pacd-test:refused", backend=backend)
    message = str(info.value)
    assert f"{type(backend).__module__}.{type(backend).__name__}" in message
    assert "gnome-keyring" in message
    assert "passphrase" in message
    assert not list(tmp_path.iterdir())  # nothing was written anywhere


def test_chainer_uses_only_its_secure_member(real_keychain: str, tmp_path: Path) -> None:
    plain = PlaintextFileKeyring(tmp_path / "plain.json")
    members: list[Any] = [plain, fail.Keyring()]
    with pytest.MonkeyPatch.context() as mp:
        # ChainerBackend discovers its members per class; this is the set a
        # misconfigured machine would offer it.
        mp.setattr(chainer.ChainerBackend, "backends", members)
        chain = chainer.ChainerBackend()
        with pytest.raises(KeychainUnavailable, match="PlaintextFileKeyring"):
            KeyringSecretStore("pacd-test:refused", backend=chain)
        members.insert(0, SecretService.Keyring())
        store = KeyringSecretStore("pacd-test:chained", backend=chain)
        assert store.backend_name == "keyring.backends.SecretService.Keyring"
        store.set("k", b"v")
        try:
            assert store.get("k") == b"v"
            assert not (tmp_path / "plain.json").exists()
        finally:
            store.delete("k")


def _unlock_default_collection() -> None:
    """Unlock the test keychain the way gnome-keyring's own login does (no prompt)."""
    import secretstorage
    from jeepney import DBusAddress, new_method_call
    from secretstorage.util import format_secret, open_session

    password = os.environ.get("PACD_DEV_KEYRING_PASSWORD", "pacd-dev").encode()
    with closing(secretstorage.dbus_init()) as conn:
        collection = secretstorage.get_default_collection(conn)
        secret = format_secret(open_session(conn), password, "text/plain")
        internal = DBusAddress(
            "/org/freedesktop/secrets", bus_name="org.freedesktop.secrets",
            interface="org.gnome.keyring.InternalUnsupportedGuiltRiddenInterface",
        )
        conn.send_and_get_reply(new_method_call(
            internal, "UnlockWithMasterPassword", "o(oayays)",
            (collection.collection_path, secret)))
        assert not collection.is_locked()


def private_keychain_only() -> None:
    """Locking or freezing the keychain is only done to scripts/dev-session's own one."""
    if os.environ.get("PACD_IN_DEV_SESSION") != "1":
        require_system("the private keychain of scripts/dev-session (this test locks it)")


def test_locked_collection_is_keychain_locked(namespace: str) -> None:
    import secretstorage

    private_keychain_only()
    store = KeyringSecretStore(namespace)
    store.set("k", b"v")
    with closing(secretstorage.dbus_init()) as conn:
        collection = secretstorage.get_default_collection(conn)
        collection.lock()
        assert collection.is_locked()
    try:
        # Locked: keyring asks for an unlock prompt, which nobody can answer here.
        for attempt in (lambda: store.get("k"), lambda: store.set("k", b"w")):
            with pytest.raises(KeychainLocked, match="locked"):
                attempt()
    finally:
        _unlock_default_collection()
    assert store.get("k") == b"v"


def _secret_service_pid() -> int:
    from jeepney.bus_messages import message_bus
    from jeepney.io.blocking import open_dbus_connection

    with closing(open_dbus_connection(bus="SESSION")) as conn:
        reply = conn.send_and_get_reply(
            message_bus.GetConnectionUnixProcessID("org.freedesktop.secrets"))
        return int(reply.body[0])


def test_unresponsive_keychain_times_out(namespace: str) -> None:
    private_keychain_only()
    store = KeyringSecretStore(namespace, timeout_s=1.0)
    store.set("k", b"v")
    # Freeze this session's own keychain daemon: calls reach D-Bus and get no answer.
    pid = _secret_service_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(KeychainLocked, match="did not answer"):
            store.get("k")
        assert time.monotonic() - started < 5.0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert store.get("k") == b"v"


class _OverlapCountingKeyring:
    """The real Secret Service backend, counting how many of its calls overlap.

    A wrapper, not a subclass: keyring registers every subclass of its backends as
    one more candidate, which would change its own choice for the rest of the run.
    """

    priority = 5.0

    def __init__(self) -> None:
        self._real = SecretService.Keyring()
        self._guard = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0

    def _counted(self, call: Callable[[], Any]) -> Any:
        with self._guard:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return call()
        finally:
            with self._guard:
                self.in_flight -= 1

    def get_password(self, service: str, username: str) -> Any:
        return self._counted(lambda: self._real.get_password(service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self._counted(lambda: self._real.set_password(service, username, password))

    def delete_password(self, service: str, username: str) -> None:
        self._counted(lambda: self._real.delete_password(service, username))


def test_overlapping_calls_cannot_make_gnome_keyring_lose_an_object(namespace: str) -> None:
    # gnome-keyring answers "no such object" now and then to a call overlapping
    # another's replace (the audit checkpoint's writes beside a request's read
    # failed a daemon's owner creation with ItemNotFoundException): the store's
    # calls reach it one at a time, even from two stores on many threads.
    backend = _OverlapCountingKeyring()
    stores = [KeyringSecretStore(namespace, backend=backend),
              KeyringSecretStore(namespace + "-b", backend=backend)]
    failures: list[BaseException] = []

    def work(n: int) -> None:
        store = stores[n % 2]
        try:
            for i in range(15):
                store.set(f"w{n}", str(i).encode())
                assert store.get(f"w{n}") == str(i).encode()
                assert store.get("absent") is None
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert backend.most_in_flight == 1


class _VanishingKeyring(_OverlapCountingKeyring):
    """The real backend, but its next ``vanish`` reads meet a vanished D-Bus object,
    as gnome-keyring answers when another process's call overlaps."""

    def __init__(self, vanish: int) -> None:
        super().__init__()
        self.vanish = vanish
        self.reads = 0

    def get_password(self, service: str, username: str) -> Any:
        from secretstorage.exceptions import ItemNotFoundException

        self.reads += 1
        if self.vanish > 0:
            self.vanish -= 1
            raise ItemNotFoundException("Item does not exist!")
        return super().get_password(service, username)


def test_a_read_meeting_a_vanished_object_is_asked_again(namespace: str) -> None:
    KeyringSecretStore(namespace).set("k", b"v")
    backend = _VanishingKeyring(vanish=2)
    assert KeyringSecretStore(namespace, backend=backend).get("k") == b"v"
    assert backend.reads == 3


def test_an_object_that_stays_vanished_is_keychain_locked(namespace: str) -> None:
    backend = _VanishingKeyring(vanish=10)
    with pytest.raises(KeychainLocked, match="ItemNotFoundException"):
        KeyringSecretStore(namespace, backend=backend).get("k")
    assert backend.reads == 3


class _HangingKeyring(_OverlapCountingKeyring):
    """The real backend, but a read of ``name`` waits until ``released`` is set, as
    one waiting on an unlock prompt nobody answers."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.released = threading.Event()

    def get_password(self, service: str, username: str) -> Any:
        if username == self.name:
            self.released.wait()
        return super().get_password(service, username)


def test_a_call_that_never_returns_does_not_shut_out_later_ones(namespace: str) -> None:
    backend = _HangingKeyring("prompted")
    store = KeyringSecretStore(namespace, timeout_s=0.5, backend=backend)
    try:
        with pytest.raises(KeychainLocked, match="did not answer"):
            store.get("prompted")
        # Still hanging; the calls after it are made and answered.
        store.set("k", b"v")
        assert store.get("k") == b"v"
    finally:
        backend.released.set()
