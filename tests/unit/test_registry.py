"""The container registry over the real state store: how a path's ``{id}`` is found."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacd.core.spec import parse_container_spec
from pacd.registry import ContainerRecord, ContainerRegistry
from pacd.store import Store
from pacd.vault import PassphraseSecretStore, Vault

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "specs" / "home.json"
T0 = 1_700_000_000.0


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ContainerRegistry]:
    store = Store(tmp_path / "state.sqlite3")
    Vault(store, PassphraseSecretStore(tmp_path / "keys.sealed", b"pw")).initialize()
    yield ContainerRegistry(store)
    store.close()


def _add(registry: ContainerRegistry, name: str) -> ContainerRecord:
    spec = json.loads(EXAMPLE.read_text())
    spec["name"] = name
    return registry.add(parse_container_spec(spec), "owner-1", T0)


def test_a_name_spelling_another_containers_id_never_takes_its_place(
        registry: ContainerRegistry) -> None:
    victim = _add(registry, "victim")
    # The API refuses such a name at create; a state database written before that
    # rule may still hold one, and lookups must not let it stand in for the id.
    impostor = _add(registry, victim.id)
    assert registry.get(victim.id).id == victim.id
    assert registry.get("victim").id == victim.id
    assert registry.get(impostor.id).name == victim.id
