"""A new leader's snapshot loop (`Replica._snapshots`) trims the partition's log only
below a snapshot it stored itself: the stored one's claim says when the next is due, but
its bytes were never read, and junk that claims a position the leader reached would
otherwise let it cut the log below a snapshot that does not restore.

The loop runs for real on a real store; NATS is replaced by a fake object store and a
fake stream purge that record what they are asked."""

from __future__ import annotations

import asyncio
import json
import types
from pathlib import Path
from typing import Any

import pytest

from broker.cluster import replica as replica_module
from broker.cluster.replica import Replica
from broker.storage import position
from broker.storage.kv import RocksKV

EVERY = 40


class _Store:
    """The snapshot object store: one object whose description claims a position."""

    def __init__(self, claim: int) -> None:
        self.claim = claim
        self.puts: list[int] = []

    async def get_info(self, name: str) -> Any:
        return types.SimpleNamespace(description=json.dumps({"position": self.claim}))

    async def put(self, name: str, data: bytes, meta: Any = None) -> None:
        self.claim = json.loads(meta.description)["position"]
        self.puts.append(self.claim)


def _leader(tmp_path: Path, store: _Store, applied: int) -> tuple[Replica, list[int]]:
    purged: list[int] = []

    async def purge_stream(name: str, seq: int) -> None:
        purged.append(seq)

    kv = RocksKV(str(tmp_path / "store"))
    kv.write([position.put(applied)])
    node = types.SimpleNamespace(
        name="node1",
        settings=types.SimpleNamespace(snapshot_entries=EVERY, data_dir=str(tmp_path)),
        engine=types.SimpleNamespace(
            snapshots=store, js=types.SimpleNamespace(purge_stream=purge_stream)
        ),
        alive=lambda: ["node1"],
        beats={},
    )
    leader = Replica.__new__(Replica)
    leader.node = node
    leader.partition = 0
    leader.kv = kv
    leader._log = types.SimpleNamespace(last=applied)  # type: ignore[assignment]
    return leader, purged


async def _checks(n: int) -> None:
    """Lets the loop run about `n` checks (each sleeps SNAPSHOT_CHECK_S, patched to 0)."""
    for _ in range(n * 20):
        await asyncio.sleep(0)


def test_a_stored_claim_is_never_trimmed_below_until_the_leader_snapshots_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replica_module, "SNAPSHOT_CHECK_S", 0)
    # Junk (or a real snapshot: the leader cannot tell without reading it) claiming
    # entry 100; this leader applied 120, under a snapshot's worth past the claim.
    store = _Store(claim=100)
    leader, purged = _leader(tmp_path, store, applied=120)

    async def run() -> None:
        loop = asyncio.create_task(leader._snapshots())
        try:
            await _checks(5)
            assert purged == [], "trimmed below a snapshot it never read"
            assert store.puts == []
            # A snapshot's worth past the claim: it takes its own and trims below it.
            leader._log.last = 100 + EVERY  # type: ignore[union-attr]
            for _ in range(200):
                if purged:
                    break
                await asyncio.sleep(0.01)
            assert store.puts == [120]
            assert purged == [121]
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
            leader.kv.close()

    asyncio.run(run())
