"""What the admin API's answers other than ListInvocations hold at most: ListAwaiting's
lists (cut to the coerced limit, with totals) and a key's inbox in DescribeKey, over a
partition built in memory. No network, no event loop but the one a test runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import pytest
from durable.v1 import admin_pb2, invocation_pb2, journal_pb2

from broker import admin_query
from broker.core.model import Live, UnknownInvocation
from broker.core.partition import Partition
from broker.storage import Batch, MemoryKV, promises

Invocation = invocation_pb2.Invocation
Entry = journal_pb2.JournalEntry
Result = journal_pb2.Result
Status = invocation_pb2.InvocationStatus
Ident = tuple[str, str, str]


class _Partition:
    """What the queries read of a partition: live invocations with their journals,
    completed promises, and one key's lock and inbox."""

    def __init__(self) -> None:
        self.kv = MemoryKV()
        self.live: dict[str, tuple[Invocation, list[Entry]]] = {}
        self.completed_promises: dict[Ident, Result] = {}
        self.queue: list[str] = []
        self.reads = 0
        # Called before each journal read: a test changes the partition there, as the
        # calls the loop serves between slices would.
        self.before_read: Callable[[str], None] = lambda invocation_id: None

    @property
    def waits(self) -> _Partition:
        return self

    def promise(self, service: str, key: str, name: str) -> Result | None:
        return self.completed_promises.get((service, key, name))

    def listed(self) -> list[Live]:
        return [Live(record, journal) for record, journal in self.live.values()]

    def record(self, invocation_id: str) -> tuple[Invocation, list[Entry]]:
        self.before_read(invocation_id)
        self.reads += 1
        if invocation_id not in self.live:
            raise UnknownInvocation(invocation_id)
        return self.live[invocation_id]

    def current_state(self, service: str, key: str) -> dict[str, bytes]:
        return {}

    def lock_holder(self, service: str, key: str) -> str | None:
        return "inv_holder"

    def inbox(self, service: str, key: str) -> list[str]:
        return list(self.queue)

    def add(
        self,
        invocation_id: str,
        created_at_ms: int,
        entries: list[Entry],
        status: invocation_pb2.InvocationStatus.ValueType = Status.SUSPENDED,
        service: str = "w.W",
        key: str = "k",
    ) -> None:
        record = Invocation(
            id=invocation_id,
            service=service,
            method="Run",
            key=key,
            status=status,
            created_at_ms=created_at_ms,
        )
        self.live[invocation_id] = (record, [Entry(input=journal_pb2.InputCommand()), *entries])


def _awakeable(n: int, resolved: bool = False) -> Entry:
    entry = Entry(awakeable=journal_pb2.AwakeableCommand(awakeable_id=f"awk_{n}"))
    if resolved:
        entry.result.value = b"1"
    return entry


def _promise(name: str) -> Entry:
    return Entry(get_promise=journal_pb2.GetPromiseCommand(name=name))


def _awaiting(p: _Partition, limit: int) -> admin_pb2.ListAwaitingResponse:
    return asyncio.run(admin_query.awaiting(cast(Partition, p), limit))


def test_awaiting_lists_oldest_invocation_first_and_cuts_each_list_exactly() -> None:
    p = _Partition()
    p.add("inv_b", 20, [_awakeable(1), _awakeable(2, resolved=True), _awakeable(3)])
    p.add("inv_a", 20, [_awakeable(4)])  # as old as inv_b: the id decides
    p.add("inv_c", 10, [_awakeable(5), _promise("z"), _promise("y")], key="k1")
    p.add("inv_d", 30, [_promise("z")], key="k1", status=Status.RUNNING)

    everything = _awaiting(p, 0)
    cut = _awaiting(p, 3)

    assert [w.awakeable_id for w in everything.awakeables] == ["awk_5", "awk_4", "awk_1", "awk_3"]
    assert [(w.invocation_id, w.entry_index) for w in everything.awakeables[2:]] == [
        ("inv_b", 1),
        ("inv_b", 3),
    ]
    assert everything.awakeables[0].created_at_ms == 10
    assert [(x.key, x.name, list(x.waiting)) for x in everything.promises] == [
        ("k1", "y", ["inv_c"]),
        ("k1", "z", ["inv_c", "inv_d"]),
    ]
    # The last invocation listed has more awakeables than room: the list stops at 3.
    assert [w.awakeable_id for w in cut.awakeables] == ["awk_5", "awk_4", "awk_1"]
    assert (cut.total_awakeables, cut.total_promises) == (4, 2)
    one = _awaiting(p, 1)
    assert ([w.awakeable_id for w in one.awakeables], [x.name for x in one.promises]) == (
        ["awk_5"],
        ["y"],
    )


def test_awaiting_lists_what_still_waits_only() -> None:
    p = _Partition()
    p.add("inv_p", 1, [_awakeable(1)], status=Status.PENDING)
    p.add("inv_c", 2, [_awakeable(2)], status=Status.COMPLETED)
    p.add("inv_b", 3, [_awakeable(3), _promise("x")], status=Status.BACKING_OFF)
    p.add("inv_s", 4, [_promise("done"), _promise("open")])
    p.completed_promises[("w.W", "k", "done")] = Result(value=b"1")

    listed = _awaiting(p, 0)

    # A backing-off invocation's awakeable can be resolved; it awaits no promise now.
    assert [w.awakeable_id for w in listed.awakeables] == ["awk_3"]
    assert [x.name for x in listed.promises] == ["open"]
    assert (listed.total_awakeables, listed.total_promises) == (1, 1)


def test_awaiting_past_1000_holds_1000_of_each_and_counts_them_all() -> None:
    p = _Partition()
    for n in range(1500):
        p.add(f"inv_{n:05d}", n, [_awakeable(n), _promise(f"p{n:05d}")])

    for limit in (0, 1000, 1001, 2**32 - 1):
        listed = _awaiting(p, limit)
        assert [w.awakeable_id for w in listed.awakeables] == [f"awk_{n}" for n in range(1000)]
        assert [x.name for x in listed.promises] == [f"p{n:05d}" for n in range(1000)]
        assert (listed.total_awakeables, listed.total_promises) == (1500, 1500)


def test_awaiting_serves_the_loop_between_slices_and_skips_what_ended_meanwhile() -> None:
    p = _Partition()
    for n in range(1200):
        p.add(f"inv_{n:05d}", n, [_awakeable(n)])

    def meanwhile(invocation_id: str) -> None:
        if invocation_id == "inv_00000":
            del p.live["inv_00700"]  # completed and purged
            p.live["inv_00800"][0].status = Status.COMPLETED  # completing

    p.before_read = meanwhile
    seen: list[int] = []

    async def scan_while_serving() -> admin_pb2.ListAwaitingResponse:
        async def other_calls() -> None:
            while True:
                seen.append(p.reads)
                await asyncio.sleep(0)

        served = asyncio.create_task(other_calls())
        listed = await admin_query.awaiting(cast(Partition, p), 0)
        served.cancel()
        return listed

    listed = asyncio.run(scan_while_serving())

    assert any(0 < reads < 1200 for reads in seen), "the loop ran other work mid-scan"
    ids = [w.invocation_id for w in listed.awakeables]
    assert "inv_00700" not in ids and "inv_00800" not in ids
    assert listed.total_awakeables == 1198 and len(ids) == 1000


def test_a_key_lists_the_head_of_its_inbox_and_counts_all_of_it() -> None:
    p = _Partition()
    for size, listed in ((0, 0), (3, 3), (1000, 1000), (1001, 1000), (25_000, 1000)):
        p.queue = [f"inv_{n:06d}" for n in range(size)]

        described = admin_query.describe_key(cast(Partition, p), "w.W", "k")

        assert list(described.inbox) == p.queue[:listed], size
        assert described.inbox_length == size
        assert described.holder == "inv_holder"


def test_a_key_whose_promises_pass_the_cap_is_refused_saying_so() -> None:
    p = _Partition()
    batch = Batch()
    for name in ("a", "b", "c"):
        promises.put(batch, "w.W", "k", name, Result(value=b"v" * 2_000))
    p.kv.write(batch.puts)

    described = admin_query.describe_key(cast(Partition, p), "w.W", "k")
    assert [pr.name for pr in described.promises] == ["a", "b", "c"]
    with pytest.raises(admin_query.TooBig) as too_big:
        admin_query.describe_key(cast(Partition, p), "w.W", "k", cap=5_000)
    assert str(too_big.value) == (
        "w.W key 'k''s state values and promises take 0.0 MiB, over the 64 MiB an admin "
        "answer can carry"
    )
