"""A snapshot is unpacked and checked beside the store before it replaces it
(`snapshot.stage`, then `swap`): one that is not a leader's leaves the store as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.replication import snapshot
from broker.storage import position
from broker.storage.kv import RocksKV


def _store(path: Path, at: int, marker: bytes) -> None:
    kv = RocksKV(str(path))
    try:
        kv.write([(b"marker", marker), position.put(at)])
        kv.sync()
    finally:
        kv.close()


def _packed(tmp_path: Path, at: int) -> bytes:
    source = tmp_path / "leader"
    _store(source, at, b"snapshot")
    kv = RocksKV(str(source))
    try:
        kv.checkpoint(str(tmp_path / "checkpoint"))
    finally:
        kv.close()
    return snapshot._pack(str(tmp_path / "checkpoint"))


def _marker(path: Path) -> bytes | None:
    kv = RocksKV(str(path))
    try:
        return kv.get(b"marker")
    finally:
        kv.close()


def test_a_leaders_snapshot_is_staged_then_swapped_in(tmp_path: Path) -> None:
    live = tmp_path / "p000"
    _store(live, 3, b"live")
    staged = snapshot.stage(_packed(tmp_path, 57), str(live), 57)
    assert _marker(live) == b"live"  # untouched until the swap
    snapshot.swap(staged, str(live))
    assert _marker(live) == b"snapshot"


@pytest.mark.parametrize(
    ("data", "claims", "says"),
    [
        (b"not a tar", 57, "does not unpack into a store"),
        (None, 99, "holds log position 57, not the 99 it claims"),
    ],
    ids=["garbage", "wrong-position"],
)
def test_a_snapshot_no_leader_took_leaves_the_store_as_it_was(
    tmp_path: Path, data: bytes | None, claims: int, says: str
) -> None:
    live = tmp_path / "p000"
    _store(live, 3, b"live")
    with pytest.raises(snapshot.BadSnapshot, match=says):
        snapshot.stage(data if data is not None else _packed(tmp_path, 57), str(live), claims)
    assert _marker(live) == b"live"
    assert not (tmp_path / "p000.restoring").exists()
