"""The demo authenticator: pacd's software authenticator, kept between runs.

For a first run on a machine without a security key (``pacd enroll --demo``).
Its credentials' private keys are never in a plain file: the authenticator's
state is sealed by a :class:`~pacd.vault.Vault` of its own — a database
``demo-authenticator.sqlite3`` in ``PACD_HOME`` whose master key lives in the
OS keychain under a namespace of its own (never the daemon's master key, which
the daemon alone holds). Whoever can read that keychain as the owner can use
these keys without touching anything: that is why the daemon accepts them only
with ``allow_software_authenticator = true`` and marks them ``software``.

The signature counter is part of the sealed state and saved after every
ceremony, so the daemon's clone check sees it move forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pacd.config import Config
from pacd.errors import ConfigError, IntegrityError
from pacd.presence.software_authenticator import SoftAuthenticator
from pacd.store import Store
from pacd.vault import KeyringSecretStore, Vault, namespace_for_home

STATE_FILE = "demo-authenticator.sqlite3"
_SCOPE = "demo-authenticator"
_DOMAIN = "credentials"
_KEY = "state"

_SCHEMA = """
CREATE TABLE demo_authenticator (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    sealed BLOB NOT NULL
)
"""


def keychain_namespace(home: Path) -> str:
    """Its own keychain namespace: the daemon's vault master key is never shared."""
    return namespace_for_home(home) + ":demo-authenticator"


class DemoAuthenticatorStore:
    """Loads and saves the demo authenticator of one ``PACD_HOME``, sealed."""

    def __init__(self, config: Config) -> None:
        if config.keystore != "keychain":
            # The passphrase keystore is one file the daemon rewrites; a second
            # writer could lose the daemon's keys.
            raise ConfigError(
                "the demo authenticator keeps its key in the OS keychain; it is not "
                f"available with keystore = {config.keystore!r}")
        self.path = config.home / STATE_FILE
        self._store = Store(self.path)
        self._store.migrate("demo_authenticator", 1, _SCHEMA)
        secrets = KeyringSecretStore(keychain_namespace(config.home),
                                     config.keychain_timeout_s)
        self._vault = Vault(self._store, secrets)
        self._vault.initialize()

    def load(self) -> SoftAuthenticator:
        """The authenticator with its credentials; a new one when none was saved."""
        row = self._store.query_one("SELECT sealed FROM demo_authenticator")
        if row is None:
            return SoftAuthenticator()
        state = self._vault.open(_SCOPE, _DOMAIN, _KEY, bytes(row[0]))
        try:
            return SoftAuthenticator.from_state(state)
        except ValueError as exc:
            raise IntegrityError(f"the demo authenticator's state is unreadable: {exc}") from exc

    def save(self, authenticator: SoftAuthenticator) -> None:
        sealed = self._vault.seal(_SCOPE, _DOMAIN, _KEY, authenticator.export_state())
        with self._store.transaction() as conn:
            conn.execute("INSERT INTO demo_authenticator (id, sealed) VALUES (1, ?)"
                         " ON CONFLICT (id) DO UPDATE SET sealed = excluded.sealed", (sealed,))

    def close(self) -> None:
        self._store.close()


@contextmanager
def demo_authenticator(config: Config) -> Iterator[SoftAuthenticator]:
    """The demo authenticator for one ceremony; its state is saved afterwards, also
    when the ceremony failed (a counter that moved must stay moved)."""
    store = DemoAuthenticatorStore(config)
    try:
        authenticator = store.load()
        try:
            yield authenticator
        finally:
            store.save(authenticator)
    finally:
        store.close()
