"""Cluster mode: a node's partitions take turns to append, so their groups grow under load.

Committers over in-memory stores and a log that stands in for JetStream (its appends
finish when the test says so): only the order of appends and the groups they carry are
checked here; the real appends are tested against NATS in tests/integration.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager, nullcontext

from broker.replication.turns import Turns
from broker.storage import Batch, Committer, MemoryKV
from broker.storage.commit import Write


class HeldLog:
    """A partition's log whose appends wait until `answer` is set."""

    def __init__(self, turns: Turns | None) -> None:
        self.turns = turns
        self.answer = asyncio.Event()
        self.entries: list[list[Write]] = []
        self.in_flight = 0
        self.started = asyncio.Event()

    async def append_batches(self, batches: list[list[Write]]) -> list[tuple[list[Write], int]]:
        writes = [w for batch in batches for w in batch]
        self.in_flight += 1
        self.started.set()
        try:
            await self.answer.wait()
        finally:
            self.in_flight -= 1
        self.entries.append(writes)
        return [(writes, len(self.entries))]

    def turn(self) -> AbstractAsyncContextManager[None]:
        return nullcontext() if self.turns is None else self.turns.turn()


def _batch(key: bytes) -> Batch:
    batch = Batch()
    batch.put(key, b"v")
    return batch


async def _two_partitions(turns: Turns | None) -> tuple[HeldLog, HeldLog, int]:
    """Partition a appends; meanwhile partition b gets three batches, one loop turn
    apart. Returns both logs and the most appends that were in flight at once."""
    a, b = HeldLog(turns), HeldLog(turns)
    first = Committer(MemoryKV(), sync=False, log=a)
    second = Committer(MemoryKV(), sync=False, log=b)
    done = [first.submit(_batch(b"a"))]
    await a.started.wait()
    most = 0
    for key in (b"b1", b"b2", b"b3"):
        done.append(second.submit(_batch(key)))
        for _ in range(3):
            await asyncio.sleep(0)
        most = max(most, a.in_flight + b.in_flight)
    b.answer.set()
    a.answer.set()
    await asyncio.gather(*done)
    return a, b, most


def test_a_partition_appends_once_the_other_is_answered_with_everything_it_queued() -> None:
    a, b, most = asyncio.run(_two_partitions(Turns()))
    assert most == 1
    assert a.entries == [[(b"a", b"v")]]
    assert b.entries == [[(b"b1", b"v"), (b"b2", b"v"), (b"b3", b"v")]]


def test_without_turns_each_partition_appends_as_soon_as_it_has_a_batch() -> None:
    # What the turns change: b's first batch would go out alone, beside a's append.
    _, b, most = asyncio.run(_two_partitions(None))
    assert most == 2
    assert b.entries[0] == [(b"b1", b"v")]


def test_an_append_that_hangs_gives_up_its_turn_after_the_hold_time() -> None:
    async def main() -> None:
        turns = Turns(hold_s=0.05)
        stuck, other = HeldLog(turns), HeldLog(turns)
        other.answer.set()
        first = Committer(MemoryKV(), sync=False, log=stuck)
        second = Committer(MemoryKV(), sync=False, log=other)
        hung = first.submit(_batch(b"a"))
        await stuck.started.wait()
        # Partition b is served although a's append is still unanswered.
        await asyncio.wait_for(second.submit(_batch(b"b")), 5.0)
        assert not hung.done()
        assert other.entries == [[(b"b", b"v")]]
        stuck.answer.set()
        await asyncio.wait_for(hung, 5.0)

    asyncio.run(main())


def test_barriers_alone_do_not_wait_for_a_turn() -> None:
    async def main() -> None:
        turns = Turns(hold_s=60.0)
        busy, idle = HeldLog(turns), HeldLog(turns)
        first = Committer(MemoryKV(), sync=False, log=busy)
        second = Committer(MemoryKV(), sync=False, log=idle)
        hung = first.submit(_batch(b"a"))
        await busy.started.wait()
        # Nothing of b's waits to be appended: its barrier resolves at once.
        await asyncio.wait_for(second.barrier(), 5.0)
        assert idle.entries == []
        busy.answer.set()
        await hung

    asyncio.run(main())
