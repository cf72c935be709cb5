"""Vault seal+open throughput against raw AES-256-GCM, measured in the same run.

Crypto only: the master key is read from its store once and cached, so this
uses the passphrase keystore in a temporary directory and needs no keychain
(it runs the same under scripts/dev-session). Baselines: one
``AESGCM.encrypt`` + ``decrypt`` per value (1 KiB), and one whole-buffer
``encrypt`` + ``decrypt`` (64 MiB).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.loadavg import reports_load
from pacd.store import Store
from pacd.vault import PassphraseSecretStore, Vault

SMALL = 1024
SMALL_COUNT = 20_000
LARGE = 64 << 20
ROUNDS = 3
#: ``--smoke``: the smallest configuration
SMOKE = {"SMALL_COUNT": 200, "LARGE": 1 << 20, "ROUNDS": 1}


def best_of(rounds: int, fn: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


class _Sink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return len(data)


@reports_load
def main(smoke: bool = False) -> None:
    """The benchmark; ``smoke``: its smallest configuration, once (seconds), to show it
    still runs and prints its ratios — the numbers mean nothing then."""
    if smoke:
        globals().update(SMOKE)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        vault = Vault(Store(home / "state.sqlite3"),
                      PassphraseSecretStore(home / "keys.sealed", b"bench"))
        vault.initialize()
        raw = AESGCM(AESGCM.generate_key(bit_length=256))

        small = os.urandom(SMALL)

        def raw_small() -> None:
            for _ in range(SMALL_COUNT):
                nonce = os.urandom(12)
                raw.decrypt(nonce, raw.encrypt(nonce, small, b"aad"), b"aad")

        def vault_small() -> None:
            for i in range(SMALL_COUNT):
                name = f"k{i}"
                vault.open("bench", "personal", name, vault.seal("bench", "personal", name, small))

        vault_small()  # warm up: creates the data key, first counter reservation
        t_raw_small = best_of(ROUNDS, raw_small)
        t_vault_small = best_of(ROUNDS, vault_small)

        large = os.urandom(LARGE)

        def raw_large() -> None:
            nonce = os.urandom(12)
            raw.decrypt(nonce, raw.encrypt(nonce, large, None), None)

        def vault_large() -> None:
            sealed = io.BytesIO()
            vault.seal_stream("bench", "personal", "big", io.BytesIO(large), sealed)
            sealed.seek(0)
            vault.open_stream("bench", "personal", "big", sealed, _Sink())  # type: ignore[arg-type]

        def vault_large_single() -> None:
            vault.open("bench", "personal", "big", vault.seal("bench", "personal", "big", large))

        t_raw_large = best_of(ROUNDS, raw_large)
        t_vault_large = best_of(ROUNDS, vault_large)
        t_vault_large_single = best_of(ROUNDS, vault_large_single)

    mib = LARGE / (1 << 20)
    print("secret store: passphrase keystore (crypto-only benchmark)")
    print(f"1 KiB seal+open   raw AESGCM {SMALL_COUNT / t_raw_small:10.0f} ops/s   "
          f"vault {SMALL_COUNT / t_vault_small:10.0f} ops/s   "
          f"ratio {t_raw_small / t_vault_small:.2f}")
    print(f"{mib:g} MiB seal+open  raw AESGCM {mib / t_raw_large:10.1f} MiB/s  "
          f"vault stream {mib / t_vault_large:7.1f} MiB/s  "
          f"ratio {t_raw_large / t_vault_large:.2f} (target >= 0.50)")
    print(f"{mib:g} MiB seal+open  (single-shot vault.seal: "
          f"{mib / t_vault_large_single:.1f} MiB/s, "
          f"ratio {t_raw_large / t_vault_large_single:.2f})")


if __name__ == "__main__":
    main(smoke="--smoke" in sys.argv[1:])
