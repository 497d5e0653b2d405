"""The admin API's index of completed invocations keeps a row for each one retained (a
day of them by default): what a row costs is paid millions of times over."""

from __future__ import annotations

import asyncio
import collections
import random

from durable.v1 import invocation_pb2

from broker import admin_query
from broker.storage import Batch, MemoryKV, invocations

Invocation = invocation_pb2.Invocation


class _Partition:
    def __init__(self) -> None:
        self.kv = MemoryKV()
        self.completion_listeners: list[object] = []


def _completed(n: int, key: str) -> Invocation:
    return Invocation(
        id=f"inv_{n:022d}",
        service="benchsvc.Counter",
        method="Add",
        key=key,
        status=invocation_pb2.COMPLETED,
        created_at_ms=1_000 + n,
        expires_at_ms=2**62,
    )


def test_rows_share_the_names_that_repeat_from_one_invocation_to_the_next() -> None:
    partition = _Partition()
    index = admin_query.CompletedIndex(partition)  # type: ignore[arg-type]
    asyncio.run(index.build())
    [listener] = partition.completion_listeners
    for n in range(3):
        listener(_completed(n, key="k7"))  # type: ignore[operator]
    first, second, third = index.rows()
    # Each record's fields are new strings as protobuf hands them out; the rows hold one.
    for field in (2, 3, 4):  # service, method, key
        assert first[field] is second[field] is third[field], field
    assert [row[1] for row in (first, second, third)] == [f"inv_{n:022d}" for n in range(3)]


def _outcome(record: Invocation, n: int) -> Invocation:
    """`record`, failed with code n % 3 (0: succeeded)."""
    if n % 3:
        record.result.failure.code = n % 3
    else:
        record.result.value = b"ok"
    return record


def test_the_index_keeps_the_newest_rows_up_to_its_bound_and_says_it_dropped_some() -> None:
    partition = _Partition()
    index = admin_query.CompletedIndex(partition, max_rows=32)  # type: ignore[arg-type]
    asyncio.run(index.build())
    [listener] = partition.completion_listeners
    # Completed out of creation order, as long and short invocations are.
    order = list(range(200))
    random.Random(5).shuffle(order)
    for done, n in enumerate(order):
        listener(_outcome(_completed(n, key=f"k{n % 4}"), n))  # type: ignore[operator]
        rows = index.rows()
        assert len(rows) <= 32, "past the bound"
        # Every invocation completed so far and created after the oldest row is listed:
        # no gap, even where older ones completed after newer ones were dropped.
        oldest = int(rows[0][1][4:])
        listed = [m for m in sorted(order[: done + 1]) if m >= oldest]
        assert [row[1] for row in rows] == [f"inv_{m:022d}" for m in listed]
        assert index.by_code == collections.Counter(row[6] for row in rows)
    assert index.truncated
    assert len(index.rows()) >= 30, "cut to the bound less a sixteenth, not emptied"
    assert int(index.rows()[0][1][4:]) > 150, "the newest are kept"


def test_an_index_under_its_bound_lists_everything_and_says_so() -> None:
    partition = _Partition()
    index = admin_query.CompletedIndex(partition, max_rows=32)  # type: ignore[arg-type]
    asyncio.run(index.build())
    [listener] = partition.completion_listeners
    for n in range(32):
        listener(_outcome(_completed(n, key="k"), n))  # type: ignore[operator]

    assert not index.truncated
    assert len(index.rows()) == 32


def test_building_from_storage_keeps_the_newest_and_the_ones_completed_meanwhile() -> None:
    partition = _Partition()
    batch = Batch()
    for n in range(100):
        invocations.put(batch, _outcome(_completed(n, key="k"), n))
    partition.kv.write(batch.puts)
    index = admin_query.CompletedIndex(partition, max_rows=16)  # type: ignore[arg-type]
    [listener] = partition.completion_listeners
    listener(_outcome(_completed(500, key="k"), 500))  # type: ignore[operator]

    asyncio.run(index.build())

    ids = [row[1] for row in index.rows()]
    assert len(ids) <= 16
    assert ids[-1] == f"inv_{500:022d}"
    assert ids[:-1] == [f"inv_{n:022d}" for n in range(100)][-(len(ids) - 1) :]
    assert index.truncated
    assert index.by_code == collections.Counter(row[6] for row in index.rows())
