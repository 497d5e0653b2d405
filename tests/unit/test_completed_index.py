"""The admin API's index of completed invocations keeps a row for each one retained (a
day of them by default): what a row costs is paid millions of times over."""

from __future__ import annotations

import asyncio

from durable.v1 import invocation_pb2

from broker import admin_query
from broker.storage import MemoryKV

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
