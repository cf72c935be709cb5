"""The row MAC: what it binds, and how failures are remembered and reported."""

from __future__ import annotations

import pytest

from pacd.integrity import MAX_LISTED, RowSealer, RowSpec

SPEC = RowSpec("things", ("id",), ("owner", "level", "blob"))
ROW = {"id": "t1", "owner": "alice", "level": "enhanced", "blob": b"\x00\x01"}


def test_the_mac_binds_table_key_and_every_column() -> None:
    sealer = RowSealer(b"k" * 32)
    mac = sealer.seal_row(SPEC, ROW)
    assert sealer.row_ok(SPEC, ROW | {"mac": mac})
    assert not sealer.row_ok(SPEC, ROW | {"id": "t2", "mac": mac})
    assert not sealer.row_ok(SPEC, ROW | {"level": "carbonProof", "mac": mac})
    assert not sealer.row_ok(SPEC, ROW | {"blob": b"\x00\x02", "mac": mac})
    assert not sealer.row_ok(RowSpec("others", SPEC.keys, SPEC.columns), ROW | {"mac": mac})
    assert not sealer.row_ok(SPEC, ROW | {"mac": None})
    # Another key (another vault) accepts none of it.
    assert not RowSealer(b"j" * 32).row_ok(SPEC, ROW | {"mac": mac})


def test_a_failing_row_is_reported_once_per_run() -> None:
    sealer = RowSealer(b"k" * 32)
    seen: list[tuple[str, str]] = []
    sealer.on_failure(lambda table, key: seen.append((table, key)))
    for _ in range(3):
        assert not sealer.row_ok(SPEC, ROW | {"mac": b"\x00" * 32})
    assert seen == [("things", "t1")]
    assert sealer.failures() == [{"table": "things", "key": "t1"}]
    assert sealer.quietly_ok(SPEC, ROW | {"mac": b"\x00" * 32}) is False
    assert seen == [("things", "t1")]


def test_failures_listed_are_bounded_but_all_are_reported() -> None:
    sealer = RowSealer(b"k" * 32)
    seen: list[str] = []
    sealer.on_failure(lambda _table, key: seen.append(key))
    for i in range(MAX_LISTED + 5):
        sealer.report("things", str(i))
    assert len(seen) == MAX_LISTED + 5
    assert len(sealer.failures()) == MAX_LISTED
    assert sealer.failure_count == MAX_LISTED + 5


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError):
        RowSealer(b"short")


def test_a_blob_rewritten_as_text_loses_its_mac() -> None:
    sealer = RowSealer(b"k" * 32)
    mac = sealer.seal_row(SPEC, ROW)
    assert not sealer.row_ok(SPEC, ROW | {"blob": ROW["blob"].hex(), "mac": mac})


def test_a_verified_row_is_remembered_and_an_edited_one_is_not() -> None:
    sealer = RowSealer(b"k" * 32)
    row = ROW | {"mac": sealer.seal_row(SPEC, ROW)}
    assert sealer.row_ok(SPEC, row) and sealer.row_ok(SPEC, row)
    assert not sealer.row_ok(SPEC, row | {"level": "carbonProof"})
