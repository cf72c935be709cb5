"""Keys and sealed data: keychain adapter, envelope encryption, sealed concern data."""

from pacd.vault.datastore import SealedData
from pacd.vault.envelope import CHUNK_SIZE, DEFAULT_MAX_ENCRYPTIONS, Vault
from pacd.vault.keychain import (
    KeyringSecretStore,
    PassphraseSecretStore,
    SecretStore,
    namespace_for_home,
    open_secret_store,
)

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_MAX_ENCRYPTIONS",
    "KeyringSecretStore",
    "PassphraseSecretStore",
    "SealedData",
    "SecretStore",
    "Vault",
    "namespace_for_home",
    "open_secret_store",
]
