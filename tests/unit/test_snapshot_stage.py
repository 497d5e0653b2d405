"""A snapshot is unpacked and checked beside the store before it replaces it
(`snapshot.stage`, then `swap`): one that is not a leader's leaves the store as it was."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats.errors
import nats.js.errors
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


class _Info:
    def __init__(self, size: int, position: int) -> None:
        self.size = size
        self.description = f'{{"position": {position}}}'


class _Result:
    def __init__(self, info: _Info, data: bytes) -> None:
        self.info = info
        self.data = data


class _Store:
    """An object store whose reads of the object's chunks stall when `stalls` (as
    nats-py's do for chunks a replacement purged) or are missing altogether."""

    def __init__(self, size: int | None, stalls: bool = False, unanswered: bool = False) -> None:
        self._info = None if size is None else _Info(size, 42)
        self._stalls = stalls
        self._unanswered = unanswered

    async def get_info(self, name: str) -> _Info:
        if self._unanswered:
            raise nats.errors.TimeoutError()
        if self._info is None:
            raise nats.js.errors.ObjectNotFoundError()
        return self._info

    async def get(self, name: str) -> _Result:
        info = await self.get_info(name)
        if self._stalls:
            await asyncio.Event().wait()  # never set
        return _Result(info, b"packed")


def _latest(store: _Store, base_s: float) -> tuple[int, bytes] | None:
    return asyncio.run(snapshot.latest(store, 3, base_s=base_s))  # type: ignore[arg-type]


def test_a_snapshot_read_that_stalls_fails_instead_of_waiting_forever() -> None:
    started = time.monotonic()
    with pytest.raises(snapshot.SnapshotUnreadable, match="took over"):
        _latest(_Store(size=1000, stalls=True), base_s=0.05)
    assert time.monotonic() - started < 5  # the base time plus a millisecond per kB
    assert _latest(_Store(size=1000), base_s=0.05) == (42, b"packed")
    assert _latest(_Store(size=None), base_s=0.05) is None


def test_an_unanswered_request_for_the_size_is_reported_as_itself() -> None:
    # NATS's request timeout is a TimeoutError too: it once fell into the read's
    # handler, which named the size it never got (UnboundLocalError).
    with pytest.raises(nats.errors.TimeoutError):
        _latest(_Store(size=1000, unanswered=True), base_s=0.05)
