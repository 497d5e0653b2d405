"""The journal store: the KV contract on both backends, key encoding, tables, group commit.

Every KV test runs against MemoryKV and against RocksKV in a temporary directory. The
committer tests drive their own loop with `asyncio.run` (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from durable.v1 import invocation_pb2, journal_pb2, storage_pb2

from broker.storage import (
    Batch,
    Committer,
    MemoryKV,
    RocksKV,
    commit,
    deployments,
    idempotency,
    inbox,
    invocations,
    journal,
    keys,
    open_kv,
    state,
    timers,
)
from broker.storage.kv import KV

Entry = journal_pb2.JournalEntry


@pytest.fixture(params=["memory", "rocks"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KV]:
    store: KV = MemoryKV() if request.param == "memory" else RocksKV(str(tmp_path / "db"))
    yield store
    store.close()


def write(kv: KV, batch: Batch) -> None:
    """Applies a batch the way the committer does (one write of all its puts)."""
    kv.write(batch.puts)


# ---- The KV contract


def test_get_put_delete(kv: KV) -> None:
    assert kv.get(b"a") is None
    kv.write([(b"a", b"1")])
    assert kv.get(b"a") == b"1"
    kv.write([(b"a", b"2")])
    assert kv.get(b"a") == b"2"
    kv.write([(b"a", None)])
    assert kv.get(b"a") is None
    # Deleting a missing key is harmless.
    kv.write([(b"a", None)])
    assert kv.get(b"a") is None


def test_empty_value_is_a_value(kv: KV) -> None:
    kv.write([(b"k", b"")])
    assert kv.get(b"k") == b""
    assert list(kv.scan(b"k")) == [(b"k", b"")]


def test_scan_returns_only_the_prefix_in_key_order(kv: KV) -> None:
    pairs = [
        (b"ab\x02", b"2"),
        (b"aa", b"x"),
        (b"ab\x01", b"1"),
        (b"ab", b"0"),
        (b"ac", b"y"),
        (b"ab\xff\xff", b"3"),
        (b"b", b"z"),
    ]
    kv.write(list(pairs))
    assert list(kv.scan(b"ab")) == [
        (b"ab", b"0"),
        (b"ab\x01", b"1"),
        (b"ab\x02", b"2"),
        (b"ab\xff\xff", b"3"),
    ]
    assert list(kv.scan(b"zz")) == []
    assert [k for k, _ in kv.scan(b"")] == sorted(k for k, _ in pairs)


def test_scan_of_a_prefix_ending_in_ff_bytes(kv: KV) -> None:
    # RocksDB's scan is bounded above by the least key past the prefix: for b"a\xff"
    # that is b"b", and a prefix of 0xff bytes only has no bound at all.
    kv.write([(b"a\xfe\xff", b"0"), (b"a\xff", b"1"), (b"a\xff\x00", b"2"), (b"b", b"3")])
    kv.write([(b"\xff\xff", b"4"), (b"\xff\xff\xff", b"5"), (b"\xff\xfe", b"6")])
    assert [v for _, v in kv.scan(b"a\xff")] == [b"1", b"2"]
    assert [v for _, v in kv.scan(b"a\xfe")] == [b"0"]
    assert [v for _, v in kv.scan(b"\xff\xff")] == [b"4", b"5"]


def test_scan_honors_start(kv: KV) -> None:
    puts: list[tuple[bytes, bytes | None]] = [(b"p" + bytes([i]), bytes([i])) for i in range(10)]
    kv.write([*puts, (b"q", b"q")])
    assert [k for k, _ in kv.scan(b"p", start=b"p\x05")] == [
        b"p" + bytes([i]) for i in range(5, 10)
    ]
    # A start between keys begins at the next key.
    assert [k for k, _ in kv.scan(b"p", start=b"p\x07\x00")] == [b"p\x08", b"p\x09"]
    # A start before the prefix is the prefix; one past it yields nothing.
    assert len(list(kv.scan(b"p", start=b"a"))) == 10
    assert list(kv.scan(b"p", start=b"p\xff")) == []


def test_scan_skips_deleted_keys(kv: KV) -> None:
    kv.write([(b"s1", b"1"), (b"s2", b"2"), (b"s3", b"3")])
    kv.write([(b"s2", None)])
    assert list(kv.scan(b"s")) == [(b"s1", b"1"), (b"s3", b"3")]


def test_write_while_scanning(kv: KV) -> None:
    kv.write([(b"w" + bytes([i]), b"v") for i in range(5)])
    seen = []
    for key, _ in kv.scan(b"w"):
        seen.append(key)
        kv.write([(key + b"!", b"new")])
    # At least the original keys are seen, in order; nothing breaks.
    assert [k for k in seen if not k.endswith(b"!")] == [b"w" + bytes([i]) for i in range(5)]


def test_batch_puts_and_deletes_apply_together(kv: KV) -> None:
    kv.write([(b"old", b"1"), (b"keep", b"k")])
    batch = Batch()
    batch.put(b"new", b"2")
    batch.delete(b"old")
    batch.put(b"twice", b"a")
    batch.put(b"twice", b"b")  # the last write of a key wins
    batch.put(b"gone", b"x")
    batch.delete(b"gone")
    assert kv.get(b"new") is None  # nothing applies before the write
    write(kv, batch)
    assert kv.get(b"new") == b"2"
    assert kv.get(b"old") is None
    assert kv.get(b"keep") == b"k"
    assert kv.get(b"twice") == b"b"
    assert kv.get(b"gone") is None
    assert [k for k, _ in kv.scan(b"")] == [b"keep", b"new", b"twice"]


def test_rocks_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    first = RocksKV(path)
    first.write([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
    first.write([(b"b", None)])
    first.sync()
    first.close()
    second = RocksKV(path)
    try:
        assert second.get(b"a") == b"1"
        assert second.get(b"b") is None
        assert list(second.scan(b"")) == [(b"a", b"1"), (b"c", b"3")]
    finally:
        second.close()


def test_committed_batches_survive_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    store = RocksKV(path)

    async def main() -> None:
        committer = Committer(store, sync=True)
        for i in range(20):
            batch = Batch()
            journal.put(batch, "inv_x", i, Entry(run=journal_pb2.RunCommand(name=str(i))))
            committer.submit(batch)
        await committer.barrier()

    asyncio.run(main())
    store.close()
    reopened = RocksKV(path)
    try:
        assert [e.run.name for e in journal.load(reopened, "inv_x")] == [str(i) for i in range(20)]
    finally:
        reopened.close()


def test_open_kv(tmp_path: Path) -> None:
    assert isinstance(open_kv(None), MemoryKV)
    store = open_kv(str(tmp_path / "nested" / "db"))
    try:
        assert isinstance(store, RocksKV)
    finally:
        store.close()


# ---- Keys


def test_part_round_trips() -> None:
    for value in ["", "a", "inv_abc", "ü-ñ", "x" * 300, "x" * 0xFFFF]:
        raw = keys.part(value)
        decoded, offset = keys.read_part(b"pre" + raw + b"tail", 3)
        assert decoded == value.encode()
        assert offset == 3 + len(raw)
    assert keys.read_part(keys.part(b"\x00\xff"), 0) == (b"\x00\xff", 4)
    with pytest.raises(ValueError):
        keys.part("x" * 0x10000)


def test_parts_are_unambiguous() -> None:
    # Concatenations that would collide without the length prefix differ.
    assert keys.part("ab") + keys.part("c") != keys.part("a") + keys.part("bc")
    # A part is never a prefix of another part's encoding.
    assert not keys.part("abc").startswith(keys.part("ab"))


def test_ints_round_trip_and_sort_numerically() -> None:
    rng = random.Random(1234)
    for width, encode, decode in (
        (32, keys.u32, keys.read_u32),
        (64, keys.u64, keys.read_u64),
    ):
        top = (1 << width) - 1
        values = [0, 1, 255, 256, 65535, 65536, top - 1, top]
        values += [rng.randrange(0, top + 1) for _ in range(500)]
        values += [rng.randrange(0, 1 << 20) for _ in range(200)]
        for v in values:
            raw = encode(v)
            assert len(raw) == width // 8
            assert decode(b"xx" + raw, 2) == v
        assert sorted(values, key=encode) == sorted(values)
        for _ in range(500):
            a, b = rng.randrange(0, top + 1), rng.randrange(0, top + 1)
            assert (a < b) == (encode(a) < encode(b))
        with pytest.raises(Exception):  # noqa: B017 - struct.error
            encode(top + 1)
        with pytest.raises(Exception):  # noqa: B017 - struct.error
            encode(-1)


def test_table_prefixes_are_distinct() -> None:
    prefixes = [
        keys.INVOCATIONS,
        keys.JOURNAL,
        keys.STATE,
        keys.INBOX,
        keys.TIMERS,
        keys.IDEMPOTENCY,
        keys.DEPLOYMENTS,
        keys.EXPIRY,
    ]
    assert all(len(p) == 2 for p in prefixes)
    assert len(set(prefixes)) == len(prefixes)


# ---- Tables


def test_journal_loads_in_index_order_past_byte_boundaries(kv: KV) -> None:
    indexes = [*range(301), 65535, 65536, 65537, 1 << 24]
    shuffled = list(indexes)
    random.Random(7).shuffle(shuffled)
    batch = Batch()
    for i in shuffled:
        journal.put(batch, "inv_a", i, Entry(run=journal_pb2.RunCommand(name=str(i))))
    # A neighbour whose id extends this one's must not leak into its scan.
    journal.put(batch, "inv_ab", 0, Entry(run=journal_pb2.RunCommand(name="other")))
    journal.put(batch, "inv_", 0, Entry(run=journal_pb2.RunCommand(name="other")))
    write(kv, batch)
    assert [int(e.run.name) for e in journal.load(kv, "inv_a")] == indexes
    assert [e.run.name for e in journal.load(kv, "inv_ab")] == ["other"]
    assert journal.load(kv, "inv_missing") == []


def test_journal_put_overwrites_and_delete_removes(kv: KV) -> None:
    batch = Batch()
    for i in range(3):
        journal.put(batch, "inv_a", i, Entry(sleep=journal_pb2.SleepCommand(wake_up_at_ms=i)))
    write(kv, batch)
    done = Entry(sleep=journal_pb2.SleepCommand(wake_up_at_ms=1))
    done.result.empty.SetInParent()
    batch = Batch()
    journal.put(batch, "inv_a", 1, done)
    write(kv, batch)
    loaded = journal.load(kv, "inv_a")
    assert len(loaded) == 3 and loaded[1] == done and not loaded[2].HasField("result")
    batch = Batch()
    journal.delete(batch, "inv_a", 3)
    write(kv, batch)
    assert journal.load(kv, "inv_a") == []


def test_timers_scan_in_due_order(kv: KV) -> None:
    due = [5, 1_700_000_000_000, 256, 1, 1 << 40, 65536, 300]
    batch = Batch()
    for n, d in enumerate(due):
        timers.put(batch, d, f"inv_{n}", n - 1)  # the first is a delayed start (-1)
    write(kv, batch)
    scanned = list(timers.scan(kv))
    assert [d for d, _ in scanned] == sorted(due)
    by_due = {d: (t.invocation_id, t.entry_index) for d, t in scanned}
    assert by_due[5] == ("inv_0", -1)
    assert by_due[1] == ("inv_3", 2)
    batch = Batch()
    timers.delete(batch, 5, "inv_0", -1)
    write(kv, batch)
    assert 5 not in [d for d, _ in timers.scan(kv)]
    assert len(list(timers.scan(kv))) == len(due) - 1


def test_timers_same_due_time(kv: KV) -> None:
    batch = Batch()
    timers.put(batch, 10, "inv_a", 3)
    timers.put(batch, 10, "inv_a", 4)
    timers.put(batch, 10, "inv_b", -1)
    write(kv, batch)
    got = [(d, t.invocation_id, t.entry_index) for d, t in timers.scan(kv)]
    assert sorted(got) == [(10, "inv_a", 3), (10, "inv_a", 4), (10, "inv_b", -1)]


def test_inbox_scan_order(kv: KV) -> None:
    batch = Batch()
    # Arrival order per key, by sequence number, even past byte boundaries.
    for seq in [300, 2, 256, 1, 70000]:
        inbox.put(batch, "flights.Flights", "trip-1", seq, f"inv_{seq}")
    inbox.put(batch, "flights.Flights", "trip-2", 3, "inv_other")
    inbox.put(batch, "cars.Cars", "trip-1", 4, "inv_car")
    write(kv, batch)
    got = list(inbox.scan(kv))
    trip1 = [(seq, i) for s, k, seq, i in got if (s, k) == ("flights.Flights", "trip-1")]
    assert trip1 == [
        (1, "inv_1"),
        (2, "inv_2"),
        (256, "inv_256"),
        (300, "inv_300"),
        (70000, "inv_70000"),
    ]
    assert ("flights.Flights", "trip-2", 3, "inv_other") in got
    assert ("cars.Cars", "trip-1", 4, "inv_car") in got
    assert len(got) == 7
    batch = Batch()
    inbox.delete(batch, "flights.Flights", "trip-1", 1)
    write(kv, batch)
    assert ("flights.Flights", "trip-1", 1, "inv_1") not in list(inbox.scan(kv))


def test_invocations_round_trip_and_expiry(kv: KV) -> None:
    batch = Batch()
    for n in range(3):
        invocations.put(
            batch,
            invocation_pb2.Invocation(
                id=f"inv_{n}", service="s", status=invocation_pb2.COMPLETED, attempts=n
            ),
        )
    invocations.schedule_expiry(batch, 1000, "inv_0")
    invocations.schedule_expiry(batch, 3000, "inv_2")
    invocations.schedule_expiry(batch, 2000, "inv_1")
    invocations.schedule_expiry(batch, 256, "inv_early")
    write(kv, batch)
    record = invocations.get(kv, "inv_1")
    assert record is not None and record.attempts == 1
    assert invocations.get(kv, "inv_none") is None
    assert [r.id for r in invocations.scan(kv)] == ["inv_0", "inv_1", "inv_2"]

    assert list(invocations.expired(kv, 0)) == []
    assert list(invocations.expired(kv, 2000)) == [
        (256, "inv_early"),
        (1000, "inv_0"),
        (2000, "inv_1"),
    ]
    assert [i for _, i in invocations.expired(kv, 10**13)] == [
        "inv_early",
        "inv_0",
        "inv_1",
        "inv_2",
    ]
    batch = Batch()
    invocations.unschedule_expiry(batch, 1000, "inv_0")
    invocations.delete(batch, "inv_0")
    write(kv, batch)
    assert invocations.get(kv, "inv_0") is None
    assert list(invocations.expired(kv, 2000)) == [(256, "inv_early"), (2000, "inv_1")]


def test_state_table(kv: KV) -> None:
    batch = Batch()
    state.put(batch, "flights.Flights", "t1", "booking", b"b1")
    state.put(batch, "flights.Flights", "t1", "seat", b"12A")
    state.put(batch, "flights.Flights", "t10", "booking", b"other")
    state.put(batch, "cars.Cars", "t1", "booking", b"car")
    write(kv, batch)
    assert state.load(kv, "flights.Flights", "t1") == {"booking": b"b1", "seat": b"12A"}
    assert state.load(kv, "flights.Flights", "t10") == {"booking": b"other"}
    assert state.load(kv, "flights.Flights", "t2") == {}
    batch = Batch()
    state.delete(batch, "flights.Flights", "t1", "seat")
    write(kv, batch)
    assert state.load(kv, "flights.Flights", "t1") == {"booking": b"b1"}


def test_idempotency_table(kv: KV) -> None:
    batch = Batch()
    idempotency.put(batch, "s", "m", "k", "idem-1", "inv_1")
    idempotency.put(batch, "s", "m", "", "idem-1", "inv_2")
    write(kv, batch)
    assert idempotency.get(kv, "s", "m", "k", "idem-1") == "inv_1"
    assert idempotency.get(kv, "s", "m", "", "idem-1") == "inv_2"
    assert idempotency.get(kv, "s", "m2", "k", "idem-1") is None
    batch = Batch()
    idempotency.delete(batch, "s", "m", "k", "idem-1")
    write(kv, batch)
    assert idempotency.get(kv, "s", "m", "k", "idem-1") is None
    assert idempotency.get(kv, "s", "m", "", "idem-1") == "inv_2"


def test_idempotency_table_keeps_the_request_digest(kv: KV) -> None:
    digest = idempotency.request_digest(b"request")
    batch = Batch()
    idempotency.put(batch, "s", "m", "", "with", "inv_1", digest)
    # A row as stored before digests existed: the invocation id alone.
    batch.put(idempotency._key("s", "m", "", "old"), b"inv_2")
    write(kv, batch)
    assert idempotency.lookup(kv, "s", "m", "", "with") == idempotency.Binding("inv_1", digest)
    assert idempotency.get(kv, "s", "m", "", "with") == "inv_1"
    assert idempotency.lookup(kv, "s", "m", "", "old") == idempotency.Binding("inv_2", b"")
    assert idempotency.lookup(kv, "s", "m", "", "none") is None


def test_deployments_table(kv: KV) -> None:
    batch = Batch()
    for n in (2, 1):
        deployments.put(
            batch,
            storage_pb2.DeploymentRecord(
                id=f"dp_{n}", uri=f"http://h:{n}", services=["a.A"], created_at_ms=n
            ),
        )
    write(kv, batch)
    assert [(d.id, d.uri) for d in deployments.scan(kv)] == [
        ("dp_1", "http://h:1"),
        ("dp_2", "http://h:2"),
    ]
    batch = Batch()
    deployments.put(batch, storage_pb2.DeploymentRecord(id="dp_1", uri="http://new"))
    write(kv, batch)
    assert [d.uri for d in deployments.scan(kv)] == ["http://new", "http://h:2"]


# ---- The committer


def test_concurrent_batches_share_a_group() -> None:
    kv = MemoryKV()
    order: list[int] = []

    async def main() -> Committer:
        committer = Committer(kv, sync=False, carry_out=_call_each)
        futures = []
        for i in range(50):
            batch = Batch()
            batch.put(b"k%03d" % i, b"v")

            def action(i: int = i) -> None:
                # Actions run after the write: the batch's key is already there.
                assert kv.get(b"k%03d" % i) == b"v"
                order.append(i)

            batch.then(action)
            futures.append(committer.submit(batch))
        assert kv.get(b"k000") is None  # nothing is written before the loop turns
        await asyncio.gather(*futures)
        return committer

    committer = asyncio.run(main())
    assert order == list(range(50))
    assert committer.groups <= 2
    assert committer.batches == 50
    assert len(list(kv.scan(b"k"))) == 50


def test_grouping_with_sync_follows_load() -> None:
    kv = MemoryKV()
    synced: list[int] = []
    kv.sync = lambda: synced.append(1)  # type: ignore[method-assign]

    async def main() -> Committer:
        committer = Committer(kv, sync=True, carry_out=_call_each)
        first = [committer.submit(_batch(b"a%d" % i)) for i in range(10)]
        await asyncio.sleep(0)  # the first group is being synced ...
        second = [committer.submit(_batch(b"b%d" % i)) for i in range(10)]
        await asyncio.gather(*first, *second)  # ... while the second accumulates
        return committer

    committer = asyncio.run(main())
    assert committer.batches == 20
    assert committer.groups <= 3
    assert len(synced) == committer.groups


def _call_each(actions: list[object]) -> None:
    """These tests' actions are plain callables (the broker's are data for its driver)."""
    for action in actions:
        assert callable(action)
        action()


def _batch(key: bytes, action: Callable[[], None] | None = None) -> Batch:
    batch = Batch()
    batch.put(key, b"v")
    if action is not None:
        batch.then(action)
    return batch


def test_actions_run_in_submission_order_across_groups() -> None:
    kv = MemoryKV()
    order: list[str] = []

    async def main() -> None:
        committer = Committer(kv, sync=False, carry_out=_call_each)
        futures = []
        for i in range(5):
            action = functools.partial(order.append, f"a{i}")
            futures.append(committer.submit(_batch(b"a%d" % i, action)))
        await asyncio.sleep(0)
        for i in range(5):
            action = functools.partial(order.append, f"b{i}")
            futures.append(committer.submit(_batch(b"b%d" % i, action)))
        await asyncio.gather(*futures)

    asyncio.run(main())
    assert order == [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]


def test_actions_can_submit_more_batches() -> None:
    kv = MemoryKV()
    order: list[str] = []

    async def main() -> Committer:
        committer = Committer(kv, sync=False, carry_out=_call_each)

        def chain() -> None:
            order.append("first")
            committer.submit(_batch(b"second", lambda: order.append("second")))

        await committer.submit(_batch(b"first", chain))
        await committer.barrier()
        return committer

    asyncio.run(main())
    assert order == ["first", "second"]
    assert kv.get(b"second") == b"v"


def test_barrier_resolves_after_earlier_batches() -> None:
    kv = MemoryKV()
    events: list[str] = []

    async def main() -> None:
        committer = Committer(kv, sync=False, carry_out=_call_each)
        for i in range(3):
            committer.submit(_batch(b"k%d" % i, functools.partial(events.append, f"batch{i}")))
        barrier = committer.barrier()
        barrier.add_done_callback(lambda _: events.append("barrier"))
        await barrier
        assert kv.get(b"k2") == b"v"
        await committer.drain()

    asyncio.run(main())
    assert events == ["batch0", "batch1", "batch2", "barrier"]


def test_commit_waits_for_durability() -> None:
    kv = MemoryKV()

    async def main() -> None:
        committer = Committer(kv, sync=True, carry_out=_call_each)
        await committer.commit(_batch(b"x"))
        assert kv.get(b"x") == b"v"
        await committer.drain()

    asyncio.run(main())


class ThreadRecordingKV(MemoryKV):
    """Records which thread each fsync ran on, and can make fsyncs slow."""

    def __init__(self, sync_seconds: float = 0.0) -> None:
        super().__init__()
        self.sync_threads: list[str] = []
        self.sync_seconds = sync_seconds

    def sync(self) -> None:
        self.sync_threads.append(threading.current_thread().name)
        time.sleep(self.sync_seconds)


def _urgent_batch(key: bytes) -> Batch:
    batch = _batch(key)
    batch.now(lambda: None)
    return batch


@pytest.mark.parametrize(
    ("quiet", "urgent", "sync_seconds", "on_loop"),
    [
        (True, False, 0.0, [True, True]),
        (False, False, 0.0, [False, False]),
        (True, True, 0.0, [False, False]),
        # A disk slower than the limit is synced on the thread once it is seen to be.
        (True, False, commit.INLINE_SYNC_LIMIT * 2, [True, False]),
    ],
    ids=["quiet", "busy", "urgent-work-handed-over", "slow-disk"],
)
def test_a_quiet_committer_fsyncs_on_the_loop(
    quiet: bool, urgent: bool, sync_seconds: float, on_loop: list[bool]
) -> None:
    # One flow of work (e.g. a lone call) saves the sync thread's wake-ups; anything
    # else keeps the loop free while the disk syncs.
    kv = ThreadRecordingKV(sync_seconds)

    async def main() -> None:
        committer = Committer(kv, sync=True, carry_out=_call_each, quiet=lambda: quiet)
        make = _urgent_batch if urgent else _batch
        await committer.commit(make(b"a"))
        await committer.commit(make(b"b"))
        assert kv.get(b"a") == kv.get(b"b") == b"v"

    asyncio.run(main())
    loop_thread = threading.main_thread().name
    assert [name == loop_thread for name in kv.sync_threads] == on_loop


class OrderRecordingKV(MemoryKV):
    """Notes each write in a shared list of events."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def write(self, puts: list[tuple[bytes, bytes | None]]) -> None:
        self.events.append("write")
        super().write(puts)


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "busy"])
def test_urgent_work_gets_under_way_before_its_batch_is_written(quiet: bool) -> None:
    # A new invocation's first attempt is urgent work: its start should reach the
    # endpoint while the creation is written and synced, not after the write. Here, as
    # in the invoker, the urgent action starts an attempt task, which queues its message
    # for the stream's writer task; both run before the batch is written, and the batch
    # is still durable before its future resolves.
    events: list[str] = []
    kv = OrderRecordingKV(events)

    async def main() -> None:
        committer = Committer(kv, sync=True, carry_out=_call_each, quiet=lambda: quiet)
        outgoing: asyncio.Queue[str] = asyncio.Queue()

        async def writer() -> None:
            events.append(await outgoing.get())

        async def attempt() -> None:
            events.append("attempt started")
            outgoing.put_nowait("message sent")

        sending = asyncio.create_task(writer())
        await asyncio.sleep(0)  # the writer waits on its queue, as a stream's does
        batch = _batch(b"created")
        batch.now(lambda: events.append("handed over"))
        batch.now(lambda: asyncio.ensure_future(attempt()))
        await committer.submit(batch)
        assert kv.get(b"created") == b"v"
        await sending

    asyncio.run(main())
    assert events == ["handed over", "attempt started", "message sent", "write"]


def test_a_failing_urgent_action_still_leaves_its_batch_written() -> None:
    kv = MemoryKV()

    async def main() -> None:
        committer = Committer(kv, sync=False, carry_out=_call_each)
        batch = _batch(b"created")

        def fail() -> None:
            raise RuntimeError("urgent action failed")

        batch.now(fail)
        with pytest.raises(RuntimeError, match="urgent action failed"):
            committer.submit(batch)
        await asyncio.wait_for(committer.drain(), timeout=5)
        assert committer.idle

    asyncio.run(main())
    assert kv.get(b"created") == b"v"


class FailingKV(MemoryKV):
    """Refuses every write (or every sync)."""

    def __init__(self, fail_write: bool = True, fail_sync: bool = False) -> None:
        super().__init__()
        self.fail_write = fail_write
        self.fail_sync = fail_sync

    def write(self, puts: list[tuple[bytes, bytes | None]]) -> None:
        if self.fail_write:
            raise OSError("disk full")
        super().write(puts)

    def sync(self) -> None:
        if self.fail_sync:
            raise OSError("fsync failed")

    recovered = 0

    def recover(self) -> None:
        self.recovered += 1


@pytest.mark.parametrize(
    ("fail_write", "fail_sync", "sync"),
    [(True, False, False), (True, False, True), (False, True, True)],
    ids=["write-nosync", "write-sync", "sync"],
)
def test_a_failed_write_is_retried_until_durable_never_acknowledged_early(
    fail_write: bool, fail_sync: bool, sync: bool
) -> None:
    kv = FailingKV(fail_write=fail_write, fail_sync=fail_sync)
    ran: list[int] = []

    async def main() -> None:
        committer = Committer(kv, sync=sync, carry_out=_call_each)
        futures = [
            committer.submit(_batch(b"k%d" % i, functools.partial(ran.append, i))) for i in range(5)
        ]
        # While the store refuses writes nothing is acknowledged and no action runs.
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert not any(f.done() for f in futures)
        assert ran == []
        assert not committer.healthy
        assert committer.last_error in ("disk full", "fsync failed")
        assert kv.recovered >= 1  # the store was asked to get writable again
        # Space returns: the same group is written, then acknowledged, in order.
        kv.fail_write = kv.fail_sync = False
        await asyncio.wait_for(asyncio.gather(*futures), timeout=10)
        assert committer.healthy
        assert committer.groups == 1 and committer.batches == 5

    asyncio.run(main())
    assert ran == [0, 1, 2, 3, 4]
    assert all(kv.get(b"k%d" % i) == b"v" for i in range(5))


def test_failing_action_does_not_block_the_rest() -> None:
    kv = MemoryKV()
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        committer = Committer(kv, sync=False, carry_out=_call_each)
        a = committer.submit(_batch(b"a", boom))
        b = committer.submit(_batch(b"b", lambda: ran.append("b")))
        await asyncio.gather(a, b)

    asyncio.run(main())
    assert ran == ["b"]


def test_a_batch_writes_an_objects_state_only_under_its_own_key() -> None:
    batch = Batch()
    state.put(batch, "flights.Flights", "trip-22", "seat", b"1")
    state.delete(batch, "cars.Cars", "trip-2", "car")
    assert state.written_in(batch, "flights.Flights", "trip-22")
    assert state.written_in(batch, "cars.Cars", "trip-2")
    # Length-prefixed parts: neither a key that is a prefix of another nor another
    # service's same key counts.
    assert not state.written_in(batch, "flights.Flights", "trip-2")
    assert not state.written_in(batch, "flights.Flights2", "trip-22")
    assert not state.written_in(Batch(), "flights.Flights", "trip-22")


def test_a_prior_barrier_waits_for_the_batches_before_the_latest_only() -> None:
    kv = MemoryKV()
    seen: dict[str, bool] = {}

    async def main() -> None:
        committer = Committer(kv, sync=True, carry_out=_call_each)
        # Alone and with nothing in flight: nothing before it to wait for.
        lone = Batch()
        lone.put(b"a", b"1")
        lone.now(lambda: seen.setdefault("lone", committer.prior_barrier().done()))
        first = committer.submit(lone)
        await first
        # Behind a batch not yet durable: it waits for that one, not for its own.
        earlier, latest = Batch(), Batch()
        earlier.put(b"b", b"1")
        latest.put(b"c", b"1")
        prior: list[asyncio.Future[None]] = []
        latest.now(lambda: prior.append(committer.prior_barrier()))
        before = committer.submit(earlier)
        own = committer.submit(latest)
        assert not prior[0].done()
        await prior[0]
        assert before.done() and kv.get(b"b") == b"1"
        await own
        # A waiter cancelled leaves the submitter's future alone.
        third, fourth = Batch(), Batch()
        third.put(b"d", b"1")
        fourth.now(lambda: prior.append(committer.prior_barrier()))
        behind = committer.submit(third)
        committer.submit(fourth)
        prior[-1].cancel()
        await behind
        assert not behind.cancelled()

    asyncio.run(main())
    assert seen == {"lone": True}
