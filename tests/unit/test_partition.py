"""The partition state machine, with no network: a fake invoker and a fake timer queue.

The registry is built from the demo services' descriptors. Every test drives its own
loop with `asyncio.run`; `settle` waits until every batch (and the batches its
post-commit actions submit) is durable and its actions ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from durable.v1 import invocation_pb2, journal_pb2, protocol_pb2, storage_pb2
from flights import flights_pb2
from google.protobuf import descriptor, descriptor_pb2
from trips import trips_pb2

from broker.config import Settings
from broker.core.model import Live
from broker.core.partition import IdempotencyConflict, Partition, UnknownInvocation
from broker.invoker import Attempt
from broker.registry import Registry
from broker.storage import (
    Batch,
    Committer,
    MemoryKV,
    idempotency,
    inbox,
    invocations,
    journal,
    keys,
)
from broker.storage import timers as timer_table
from broker.storage.kv import KV

Entry = journal_pb2.JournalEntry
Result = journal_pb2.Result
Status = invocation_pb2.InvocationStatus
T = TypeVar("T")

FLIGHTS = "flights.Flights"
TRIPS = "trips.Trips"


# ---- Fixtures and helpers


def _files(*services: descriptor.ServiceDescriptor) -> descriptor_pb2.FileDescriptorSet:
    """Every file the services are declared in, dependencies first (as the SDK does)."""
    out = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def visit(f: descriptor.FileDescriptor) -> None:
        if f.name in seen:
            return
        seen.add(f.name)
        for dep in f.dependencies:
            visit(dep)
        f.CopyToProto(out.file.add())

    for s in services:
        visit(s.file)
    return out


def make_registry() -> Registry:
    registry = Registry()
    registry.add(
        storage_pb2.DeploymentRecord(
            id="dp_1",
            uri="http://x",
            services=[FLIGHTS, TRIPS],
            files=_files(
                flights_pb2.DESCRIPTOR.services_by_name["Flights"],
                trips_pb2.DESCRIPTOR.services_by_name["Trips"],
            ),
            created_at_ms=1,
        )
    )
    return registry


class FakeInvoker:
    """Like the real invoker, "sends" a start (records it, with the object's state)
    only once the journal it carries is durable."""

    def __init__(self) -> None:
        self.starts: list[protocol_pb2.StartMessage] = []
        self.partition: Partition

    def start(self, live: Live, start: protocol_pb2.StartMessage) -> Attempt:
        attempt = Attempt(start.attempt, self.partition.committer.barrier())
        live.attempt = attempt
        copy = protocol_pb2.StartMessage()
        copy.CopyFrom(start)

        def sent(_: object) -> None:
            if copy.key:
                copy.state.update(self.partition.current_state(copy.service, copy.key))
            self.starts.append(copy)

        attempt.ready.add_done_callback(sent)
        return attempt

    def started(self, invocation_id: str) -> list[protocol_pb2.StartMessage]:
        return [s for s in self.starts if s.invocation_id == invocation_id]


class FakeTimers:
    def __init__(self) -> None:
        self.added: list[tuple[int, str, int]] = []

    def add(self, due_ms: int, invocation_id: str, entry_index: int) -> None:
        self.added.append((due_ms, invocation_id, entry_index))


def make_partition(kv: KV | None = None, **settings: Any) -> Partition:
    kv = MemoryKV() if kv is None else kv
    options: dict[str, Any] = {"data_dir": None, "retry_initial": 0.01}
    options.update(settings)
    partition = Partition(kv, Committer(kv, sync=False), make_registry(), Settings(**options))
    fake = FakeInvoker()
    fake.partition = partition
    partition.invoker = fake  # type: ignore[assignment]
    partition.timers = FakeTimers()  # type: ignore[assignment]
    return partition


def invoker(p: Partition) -> FakeInvoker:
    inv = p.invoker
    assert isinstance(inv, FakeInvoker)
    return inv


def fake_timers(p: Partition) -> FakeTimers:
    t = p.timers
    assert isinstance(t, FakeTimers)
    return t


def run(main: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(main())  # type: ignore[arg-type]


async def settle(p: Partition) -> None:
    """Waits until everything submitted (and submitted by post-commit actions) is done."""
    await p.committer.drain()
    await asyncio.sleep(0)
    await p.committer.drain()


def trip_request(run_type: str = "") -> bytes:
    return trips_pb2.ReserveTripRequest(run_type=run_type, amount_cents=100).SerializeToString()


def reserve_request(trip: str) -> bytes:
    return flights_pb2.ReserveRequest(trip_id=trip, to="LIS").SerializeToString()


def output(value: bytes = b"done") -> Entry:
    return Entry(output=journal_pb2.OutputCommand(), result=Result(value=value))


def call_flight(trip: str, method: str = "Reserve") -> Entry:
    request = (
        reserve_request(trip)
        if method == "Reserve"
        else flights_pb2.TripRef(trip_id=trip).SerializeToString()
    )
    return Entry(call=journal_pb2.CallCommand(service=FLIGHTS, method=method, request=request))


def propose(p: Partition, invocation_id: str, entry: Entry) -> int:
    """Proposes `entry` as the next entry of the running attempt; returns its index."""
    live = p.live[invocation_id]
    assert live.attempt is not None, f"{invocation_id} has no running attempt"
    index = len(live.journal)
    assert p.on_entry(live, live.attempt, index, entry) is None
    return index


def completions(attempt: Attempt | None) -> list[protocol_pb2.CompletionMessage]:
    assert attempt is not None
    out = []
    while not attempt.queue.empty():
        message = attempt.queue.get_nowait()
        assert message is not None
        out.append(message.completion)
    return out


def stored(p: Partition, invocation_id: str) -> invocation_pb2.Invocation:
    record = invocations.get(p.kv, invocation_id)
    assert record is not None, f"{invocation_id} is not stored"
    return record


# ---- Creation and starting


def test_registry_from_demo_descriptors() -> None:
    registry = make_registry()
    flights = registry.service(FLIGHTS)
    trips = registry.service(TRIPS)
    assert flights is not None and trips is not None
    assert flights.keyed and not trips.keyed
    assert flights.methods["Get"].shared and not flights.methods["Reserve"].shared
    assert flights.methods["Reserve"].key_field == "trip_id"


def test_invoke_starts_after_commit_with_input_journal() -> None:
    async def main() -> None:
        p = make_partition()
        inv_id, result = p.invoke(TRIPS, "Reserve", "", trip_request(), {"h": "v"})
        assert inv_id.startswith("inv_")
        # Effects wait for durability: nothing started, nothing stored yet.
        assert invoker(p).starts == []
        assert invocations.get(p.kv, inv_id) is None
        await settle(p)
        [start] = invoker(p).starts
        assert start.invocation_id == inv_id
        assert (start.service, start.method, start.key, start.attempt) == (TRIPS, "Reserve", "", 1)
        assert list(start.journal) == [
            Entry(input=journal_pb2.InputCommand(request=trip_request(), headers={"h": "v"}))
        ]
        assert start.suspend_after_ms == 1000
        record = stored(p, inv_id)
        assert record.status == Status.RUNNING
        assert p.live[inv_id].record.status == Status.RUNNING
        assert p.live[inv_id].record.deployment_id == "dp_1"
        assert not record.exclusive
        assert [e.WhichOneof("command") for e in journal.load(p.kv, inv_id)] == ["input"]
        assert not result.done()

        propose(p, inv_id, output(b"trip-ok"))
        await settle(p)
        assert result.done() and result.result().value == b"trip-ok"
        assert inv_id not in p.live
        record = stored(p, inv_id)
        assert record.status == Status.COMPLETED
        assert record.result.value == b"trip-ok"
        assert record.journal_length == 2
        # Attaching to a completed invocation answers at once.
        again = p.attach(inv_id)
        assert again.done() and again.result().value == b"trip-ok"
        unknown = p.attach("inv_nope")
        with pytest.raises(UnknownInvocation):
            unknown.result()

    run(main)


def test_exclusive_record_and_keyed_start() -> None:
    async def main() -> None:
        p = make_partition()
        inv_id, _ = p.invoke(FLIGHTS, "Reserve", "t1", reserve_request("t1"), {})
        get_id, _ = p.invoke(FLIGHTS, "Get", "t1", b"", {})
        await settle(p)
        assert p.live[inv_id].record.exclusive
        assert not p.live[get_id].record.exclusive
        assert invoker(p).started(inv_id)[0].key == "t1"

    run(main)


# ---- Calls between invocations


def test_call_creates_child_and_output_completes_parent() -> None:
    async def main() -> None:
        p = make_partition()
        parent_id, parent_result = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        parent_attempt = p.live[parent_id].attempt

        index = propose(p, parent_id, call_flight("trip-9"))
        assert index == 1
        call = p.live[parent_id].journal[1].call
        child_id = call.invocation_id
        assert child_id and child_id != parent_id
        child = p.live[child_id].record
        assert (child.service, child.method, child.key) == (FLIGHTS, "Reserve", "trip-9")
        assert child.caller.invocation_id == parent_id
        assert child.caller.entry_index == 1
        assert child.exclusive
        assert invoker(p).started(child_id) == []  # not before the commit
        await settle(p)
        [child_start] = invoker(p).started(child_id)
        assert child_start.journal[0].input.request == reserve_request("trip-9")
        # The call entry and the child are durable, linked both ways.
        assert journal.load(p.kv, parent_id)[1].call.invocation_id == child_id
        assert stored(p, child_id).caller.invocation_id == parent_id

        propose(p, child_id, output(b"booked"))
        # The parent's entry completes in memory at once; the attempt hears after commit.
        assert completions(parent_attempt) == []
        await settle(p)
        [completion] = completions(parent_attempt)
        assert completion.entry_index == 1
        assert completion.result.value == b"booked"
        assert p.live[parent_id].journal[1].result.value == b"booked"
        assert journal.load(p.kv, parent_id)[1].result.value == b"booked"
        assert stored(p, child_id).status == Status.COMPLETED
        assert child_id not in p.live
        assert not parent_result.done()

    run(main)


def test_call_to_unknown_service_fails_the_entry() -> None:
    async def main() -> None:
        p = make_partition()
        parent_id, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        attempt = p.live[parent_id].attempt
        entry = Entry(call=journal_pb2.CallCommand(service="nope.Nope", method="X"))
        propose(p, parent_id, entry)
        await settle(p)
        [completion] = completions(attempt)
        assert completion.entry_index == 1
        assert completion.result.failure.code == 12
        assert journal.load(p.kv, parent_id)[1].result.failure.code == 12
        assert len(p.live) == 1  # no child

    run(main)


def test_call_without_key_fails_the_entry() -> None:
    async def main() -> None:
        p = make_partition()
        parent_id, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        attempt = p.live[parent_id].attempt
        propose(p, parent_id, call_flight(""))
        await settle(p)
        [completion] = completions(attempt)
        assert completion.result.failure.code == 3
        assert len(p.live) == 1

    run(main)


def test_delayed_send_starts_when_its_timer_fires() -> None:
    async def main() -> None:
        p = make_partition()
        parent_id, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        due = 4_000_000_000_000
        send = Entry(
            send=journal_pb2.SendCommand(
                service=FLIGHTS,
                method="Cancel",
                request=flights_pb2.TripRef(trip_id="t").SerializeToString(),
                invoke_at_ms=due,
            )
        )
        propose(p, parent_id, send)
        await settle(p)
        child_id = p.live[parent_id].journal[1].send.invocation_id
        assert p.live[child_id].record.status == Status.PENDING
        assert not p.live[child_id].record.caller.invocation_id
        assert invoker(p).started(child_id) == []
        assert fake_timers(p).added == [(due, child_id, -1)]
        assert [(d, t.invocation_id, t.entry_index) for d, t in timer_table.scan(p.kv)] == [
            (due, child_id, -1)
        ]
        p.on_timer(due, child_id, -1)
        await settle(p)
        assert len(invoker(p).started(child_id)) == 1
        assert list(timer_table.scan(p.kv)) == []

    run(main)


def test_send_to_unknown_service_is_dropped() -> None:
    async def main() -> None:
        p = make_partition()
        parent_id, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        propose(p, parent_id, Entry(send=journal_pb2.SendCommand(service="nope.Nope", method="X")))
        await settle(p)
        assert len(p.live) == 1
        assert len(journal.load(p.kv, parent_id)) == 2
        assert not p.live[parent_id].journal[1].send.invocation_id

    run(main)


# ---- Key locks


def test_exclusive_handlers_of_one_key_are_serialized() -> None:
    async def main() -> None:
        p = make_partition()
        first, _ = p.invoke(FLIGHTS, "Reserve", "t1", reserve_request("t1"), {})
        second, second_result = p.invoke(FLIGHTS, "Reserve", "t1", reserve_request("t1"), {})
        other_key, _ = p.invoke(FLIGHTS, "Reserve", "t2", reserve_request("t2"), {})
        await settle(p)
        assert len(invoker(p).started(first)) == 1
        assert invoker(p).started(second) == []
        assert len(invoker(p).started(other_key)) == 1
        assert p.live[second].record.status == Status.PENDING
        assert stored(p, second).status == Status.PENDING
        assert [(s, k, i) for s, k, _, i in inbox.scan(p.kv)] == [(FLIGHTS, "t1", second)]

        # A shared handler runs at once although t1 is held.
        shared, _ = p.invoke(FLIGHTS, "Get", "t1", b"", {})
        await settle(p)
        assert len(invoker(p).started(shared)) == 1
        assert invoker(p).started(second) == []

        # State written by the first is what the second starts with.
        propose(p, first, Entry(set_state=journal_pb2.SetStateCommand(key="booking", value=b"b1")))
        propose(p, first, output(b"first"))
        await settle(p)
        [start] = invoker(p).started(second)
        assert dict(start.state) == {"booking": b"b1"}
        assert p.live[second].record.status == Status.RUNNING
        assert list(inbox.scan(p.kv)) == []
        assert not second_result.done()

    run(main)


def test_inbox_drains_in_arrival_order() -> None:
    async def main() -> None:
        p = make_partition()
        ids = [p.invoke(FLIGHTS, "Confirm", "k", b"", {})[0] for _ in range(4)]
        await settle(p)
        order = [s.invocation_id for s in invoker(p).starts]
        for inv_id in ids[:-1]:
            propose(p, inv_id, output())
            await settle(p)
            order = [s.invocation_id for s in invoker(p).starts]
        assert order == ids

    run(main)


def test_state_commands_need_an_exclusive_handler() -> None:
    async def main() -> None:
        p = make_partition()
        shared, _ = p.invoke(FLIGHTS, "Get", "t1", b"", {})
        await settle(p)
        live = p.live[shared]
        entry = Entry(set_state=journal_pb2.SetStateCommand(key="booking", value=b"x"))
        error = p.on_entry(live, live.attempt, 1, entry)  # type: ignore[arg-type]
        assert error is not None and "set_state" in error
        assert len(live.journal) == 1

    run(main)


def test_state_set_clear_and_get() -> None:
    async def main() -> None:
        p = make_partition()
        writer, _ = p.invoke(FLIGHTS, "Reserve", "t1", reserve_request("t1"), {})
        await settle(p)
        propose(p, writer, Entry(set_state=journal_pb2.SetStateCommand(key="a", value=b"1")))
        propose(p, writer, Entry(set_state=journal_pb2.SetStateCommand(key="b", value=b"2")))
        propose(p, writer, Entry(clear_state=journal_pb2.ClearStateCommand(key="a")))
        propose(p, writer, output())
        reader, _ = p.invoke(FLIGHTS, "Get", "t1", b"", {})
        await settle(p)
        [start] = invoker(p).started(reader)
        assert dict(start.state) == {"b": b"2"}
        live = p.live[reader]
        # get_state journals the value the handler read; it needs that result.
        bare = Entry(get_state=journal_pb2.GetStateCommand(key="b"))
        assert p.on_entry(live, live.attempt, 1, bare) is not None  # type: ignore[arg-type]
        bare.result.value = b"2"
        propose(p, reader, bare)
        assert p.live[reader].journal[1].result.value == b"2"
        # Keyless handlers have no state.
        plain, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        assert dict(invoker(p).started(plain)[0].state) == {}
        live = p.live[plain]
        assert p.on_entry(live, live.attempt, 1, bare) is not None  # type: ignore[arg-type]

    run(main)


# ---- Suspension


def test_suspension_on_incomplete_sleep_resumes_on_timer() -> None:
    async def main() -> None:
        p = make_partition()
        inv_id, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        due = 5_000_000_000_000
        propose(p, inv_id, Entry(sleep=journal_pb2.SleepCommand(wake_up_at_ms=due)))
        await settle(p)
        assert fake_timers(p).added == [(due, inv_id, 1)]
        live = p.live[inv_id]
        assert p.on_suspension(live, live.attempt, [1]) is None  # type: ignore[arg-type]
        assert live.attempt is None
        await settle(p)
        assert live.record.status == Status.SUSPENDED
        assert list(stored(p, inv_id).waiting_on) == [1]
        assert stored(p, inv_id).status == Status.SUSPENDED
        assert len(invoker(p).started(inv_id)) == 1

        p.on_timer(due, inv_id, 1)
        await settle(p)
        starts = invoker(p).started(inv_id)
        assert [s.attempt for s in starts] == [1, 2]
        assert starts[1].journal[1].result.HasField("empty")
        assert live.record.status == Status.RUNNING
        assert list(live.record.waiting_on) == []

    run(main)


def test_a_suspended_journal_leaves_memory_and_comes_back_whole() -> None:
    async def main() -> None:
        p = make_partition()
        inv_id, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        due = 5_000_000_000_000
        propose(p, inv_id, Entry(sleep=journal_pb2.SleepCommand(wake_up_at_ms=due)))
        await settle(p)
        live = p.live[inv_id]
        assert p.on_suspension(live, live.attempt, [1]) is None  # type: ignore[arg-type]
        await settle(p)
        assert live.evicted  # waiting costs no journal in memory
        # Reading it (describe) does not bring it back.
        _, entries = p.record(inv_id)
        assert [e.WhichOneof("command") for e in entries] == ["input", "sleep"]
        assert live.evicted
        # Completing the wait reads it back and resumes with everything.
        p.on_timer(due, inv_id, 1)
        await settle(p)
        assert not live.evicted
        start = invoker(p).started(inv_id)[-1]
        assert [e.WhichOneof("command") for e in start.journal] == ["input", "sleep"]
        assert start.journal[1].result.HasField("empty")

    run(main)


def test_a_write_after_suspending_keeps_the_journal_in_memory() -> None:
    async def main() -> None:
        p = make_partition()
        inv_id, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        due = 5_000_000_000_000
        propose(p, inv_id, Entry(sleep=journal_pb2.SleepCommand(wake_up_at_ms=due)))
        await settle(p)
        live = p.live[inv_id]
        assert p.on_suspension(live, live.attempt, [1]) is None  # type: ignore[arg-type]
        # The timer fires before the suspension is durable: its write is still pending
        # when the eviction would run, so the journal must stay.
        p.on_timer(due, inv_id, 1)
        await settle(p)
        assert live.journal[1].result.HasField("empty")

    run(main)


def test_suspended_parent_resumes_when_child_completes() -> None:
    async def main() -> None:
        p = make_partition()
        parent_id, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        propose(p, parent_id, call_flight("t1"))
        await settle(p)
        child_id = p.live[parent_id].journal[1].call.invocation_id
        live = p.live[parent_id]
        assert p.on_suspension(live, live.attempt, [1]) is None  # type: ignore[arg-type]
        await settle(p)
        assert stored(p, parent_id).status == Status.SUSPENDED
        propose(p, child_id, output(b"booked"))
        await settle(p)
        starts = invoker(p).started(parent_id)
        assert [s.attempt for s in starts] == [1, 2]
        assert starts[1].journal[1].result.value == b"booked"

    run(main)


def test_suspension_on_completed_entry_restarts_at_once() -> None:
    async def main() -> None:
        p = make_partition()
        inv_id, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        live = p.live[inv_id]
        first = live.attempt
        propose(p, inv_id, Entry(run=journal_pb2.RunCommand(name="pay")))
        assert p.on_run_result(live, first, 1, Result(value=b"paid")) is None  # type: ignore[arg-type]
        await settle(p)
        assert [c.entry_index for c in completions(first)] == [1]
        assert p.on_suspension(live, first, [1]) is None  # type: ignore[arg-type]
        await settle(p)
        starts = invoker(p).started(inv_id)
        assert [s.attempt for s in starts] == [1, 2]
        assert starts[1].journal[1].result.value == b"paid"
        assert live.record.status == Status.RUNNING
        assert live.attempt is not None and live.attempt is not first

    run(main)


def test_invalid_suspensions_are_protocol_violations() -> None:
    async def main() -> None:
        p = make_partition()
        inv_id, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        live = p.live[inv_id]
        attempt = live.attempt
        assert attempt is not None
        assert "nothing" in (p.on_suspension(live, attempt, []) or "")
        assert "cannot complete" in (p.on_suspension(live, attempt, [0]) or "")
        assert "cannot complete" in (p.on_suspension(live, attempt, [7]) or "")
        assert live.attempt is attempt
        assert live.record.status == Status.RUNNING

    run(main)


# ---- Protocol checks


def test_wrong_index_is_rejected_and_journals_nothing() -> None:
    async def main() -> None:
        p = make_partition()
        inv_id, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        live = p.live[inv_id]
        batches = p.committer.batches
        for index in (0, 2, 5):
            error = p.on_entry(live, live.attempt, index, output())  # type: ignore[arg-type]
            assert error is not None and "protocol violation" in error
            assert f"entry {index}" in error
        await settle(p)
        assert len(live.journal) == 1
        assert len(journal.load(p.kv, inv_id)) == 1
        assert p.committer.batches == batches
        assert live.record.status == Status.RUNNING

    run(main)


def test_events_from_a_stale_attempt_are_ignored() -> None:
    async def main() -> None:
        p = make_partition()
        inv_id, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        live = p.live[inv_id]
        stale = Attempt(99, asyncio.get_running_loop().create_future())
        assert p.on_entry(live, stale, 1, output()) is None
        assert p.on_suspension(live, stale, [0]) is None
        p.on_attempt_failed(live, stale, "late")
        await settle(p)
        assert len(live.journal) == 1
        assert live.record.status == Status.RUNNING
        assert live.attempt is not None and live.attempt is not stale

    run(main)


def test_output_without_result_and_end_without_output() -> None:
    async def main() -> None:
        p = make_partition()
        inv_id, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        live = p.live[inv_id]
        attempt = live.attempt
        assert attempt is not None
        bare = Entry(output=journal_pb2.OutputCommand())
        assert "without a result" in (p.on_entry(live, attempt, 1, bare) or "")
        assert "without an output" in (p.on_end(live, attempt) or "")
        propose(p, inv_id, output())
        assert p.on_end(live, attempt) is None
        assert live.attempt is None

    run(main)


# ---- Failures and retries


def test_failed_attempt_backs_off_then_retries() -> None:
    async def main() -> None:
        p = make_partition()
        inv_id, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        live = p.live[inv_id]
        p.on_attempt_failed(live, live.attempt, "handler raised ValueError")  # type: ignore[arg-type]
        assert live.attempt is None
        assert live.record.status == Status.BACKING_OFF
        assert live.record.last_error == "handler raised ValueError"
        await settle(p)
        record = stored(p, inv_id)
        assert record.status == Status.BACKING_OFF
        assert record.last_error == "handler raised ValueError"
        assert record.next_retry_at_ms > 0
        assert len(invoker(p).started(inv_id)) == 1
        for _ in range(100):  # retry_initial = 10 ms
            await asyncio.sleep(0.005)
            if len(invoker(p).started(inv_id)) > 1:
                break
        starts = invoker(p).started(inv_id)
        assert [s.attempt for s in starts] == [1, 2]
        assert live.record.attempts == 2
        assert live.record.status == Status.RUNNING
        assert live.attempt is not None

    run(main)


@pytest.mark.parametrize("terminal", [False, True])
def test_non_determinism_is_retried_unless_configured_terminal(terminal: bool) -> None:
    message = "non-determinism at journal entry 1: the journal has sleep, but ... run"

    async def main() -> None:
        p = make_partition(non_determinism_terminal=terminal)
        inv_id, result = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        live = p.live[inv_id]
        p.on_attempt_failed(live, live.attempt, message, non_determinism=True)  # type: ignore[arg-type]
        await settle(p)
        record = stored(p, inv_id)
        assert record.last_error == message
        if terminal:
            assert record.status == Status.COMPLETED
            assert (record.result.failure.code, record.result.failure.message) == (13, message)
            assert (await result).failure.message == message
        else:
            # Production: retried with backoff, so a fixed deployment can recover it.
            assert record.status == Status.BACKING_OFF

    run(main)


def test_failure_after_output_does_not_retry() -> None:
    async def main() -> None:
        p = make_partition()
        inv_id, result = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        live = p.live[inv_id]
        attempt = live.attempt
        propose(p, inv_id, output(b"ok"))
        p.on_attempt_failed(live, attempt, "stream broke")  # type: ignore[arg-type]
        await settle(p)
        await asyncio.sleep(0.03)
        assert len(invoker(p).started(inv_id)) == 1
        assert stored(p, inv_id).status == Status.COMPLETED
        assert (await result).value == b"ok"

    run(main)


# ---- Idempotency


def test_idempotency_key_returns_the_same_invocation() -> None:
    async def main() -> None:
        p = make_partition()
        first, r1 = p.invoke(TRIPS, "Reserve", "", trip_request(), {}, idempotency_key="k-1")
        second, r2 = p.invoke(TRIPS, "Reserve", "", trip_request(), {}, idempotency_key="k-1")
        other, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {}, idempotency_key="k-2")
        assert first == second
        assert other != first
        await settle(p)
        assert len(invoker(p).started(first)) == 1
        assert idempotency.get(p.kv, TRIPS, "Reserve", "", "k-1") == first
        propose(p, first, output(b"once"))
        await settle(p)
        assert (await r1).value == b"once"
        assert (await r2).value == b"once"
        # After completion (until purged) the key still finds the invocation.
        third, r3 = p.invoke(TRIPS, "Reserve", "", trip_request(), {}, idempotency_key="k-1")
        assert third == first
        assert r3.done() and r3.result().value == b"once"
        await settle(p)
        assert len(invoker(p).started(first)) == 1

    run(main)


def test_idempotency_key_with_another_request_is_refused() -> None:
    async def main() -> None:
        p = make_partition()
        first, _ = p.invoke(TRIPS, "Reserve", "", trip_request("a"), {}, idempotency_key="k-1")
        with pytest.raises(IdempotencyConflict) as conflict:
            p.invoke(TRIPS, "Reserve", "", trip_request("b"), {}, idempotency_key="k-1")
        assert conflict.value.invocation_id == first
        # While the row is only queued, and once it is written, the same request attaches.
        again, _ = p.invoke(TRIPS, "Reserve", "", trip_request("a"), {}, idempotency_key="k-1")
        assert again == first
        await settle(p)
        with pytest.raises(IdempotencyConflict):
            p.invoke(TRIPS, "Reserve", "", trip_request("b"), {}, idempotency_key="k-1")
        again, _ = p.invoke(TRIPS, "Reserve", "", trip_request("a"), {}, idempotency_key="k-1")
        assert again == first
        assert len(p.records()) == 1

    run(main)


def test_idempotency_digest_survives_recovery_and_old_rows_match_any_request() -> None:
    kv = MemoryKV()
    ids: dict[str, str] = {}

    async def before_crash() -> None:
        p = make_partition(kv)
        ids["new"], _ = p.invoke(TRIPS, "Reserve", "", trip_request("a"), {}, "k-new")
        ids["old"], _ = p.invoke(TRIPS, "Reserve", "", trip_request("a"), {}, "k-old")
        await settle(p)
        propose(p, ids["new"], output(b"done"))
        await settle(p)
        # Rewrite one row as a broker before request digests stored it: the id alone.
        batch = Batch()
        batch.put(idempotency._key(TRIPS, "Reserve", "", "k-old"), ids["old"].encode())
        p.committer.submit(batch)
        await settle(p)

    run(before_crash)

    async def after_crash() -> None:
        p = make_partition(kv)
        p.recover()
        await settle(p)
        with pytest.raises(IdempotencyConflict):
            p.invoke(TRIPS, "Reserve", "", trip_request("b"), {}, idempotency_key="k-new")
        same, result = p.invoke(TRIPS, "Reserve", "", trip_request("a"), {}, "k-new")
        assert same == ids["new"] and (await result).value == b"done"
        old, _ = p.invoke(TRIPS, "Reserve", "", trip_request("b"), {}, idempotency_key="k-old")
        assert old == ids["old"]

    run(after_crash)


# ---- Recovery


def test_recovery_restarts_what_was_in_flight() -> None:
    kv = MemoryKV()
    ids: dict[str, str] = {}
    due = 6_000_000_000_000

    async def before_crash() -> None:
        p = make_partition(kv, retry_initial=60.0)
        ids["running"], _ = p.invoke(TRIPS, "Reserve", "", trip_request("a"), {})
        ids["sleeping"], _ = p.invoke(TRIPS, "Reserve", "", trip_request("b"), {})
        ids["woken"], _ = p.invoke(TRIPS, "Reserve", "", trip_request("c"), {})
        ids["failing"], _ = p.invoke(TRIPS, "Reserve", "", trip_request("d"), {})
        ids["done"], _ = p.invoke(TRIPS, "Reserve", "", trip_request("e"), {})
        ids["holder"], _ = p.invoke(FLIGHTS, "Reserve", "t1", reserve_request("t1"), {})
        ids["queued1"], _ = p.invoke(FLIGHTS, "Reserve", "t1", reserve_request("t1"), {})
        ids["queued2"], _ = p.invoke(FLIGHTS, "Confirm", "t1", b"", {})
        ids["idem"], _ = p.invoke(TRIPS, "Reserve", "", trip_request("f"), {}, "idem-1")
        await settle(p)

        for name in ("sleeping", "woken"):
            propose(p, ids[name], Entry(sleep=journal_pb2.SleepCommand(wake_up_at_ms=due)))
            live = p.live[ids[name]]
            assert p.on_suspension(live, live.attempt, [1]) is None  # type: ignore[arg-type]
        await settle(p)
        # Completing the wait resumes "woken"; the new attempt's start is saved too.
        p.on_timer(due, ids["woken"], 1)
        live = p.live[ids["failing"]]
        p.on_attempt_failed(live, live.attempt, "boom")  # type: ignore[arg-type]
        propose(p, ids["done"], output(b"finished"))
        await settle(p)

    run(before_crash)
    assert stored_in(kv, ids["woken"]).status == Status.RUNNING
    assert stored_in(kv, ids["woken"]).attempts == 2
    assert stored_in(kv, ids["failing"]).status == Status.BACKING_OFF

    async def after_crash() -> None:
        p = make_partition(kv)
        p.recover()
        await settle(p)
        restarted = {s.invocation_id for s in invoker(p).starts}
        assert restarted == {ids[n] for n in ("running", "woken", "failing", "holder", "idem")}
        assert ids["done"] not in p.live
        assert p.live[ids["sleeping"]].record.status == Status.SUSPENDED
        assert p.live[ids["queued1"]].record.status == Status.PENDING
        assert p.live[ids["queued2"]].record.status == Status.PENDING
        # Timers are re-armed, the journal comes back with the start.
        assert (due, ids["sleeping"], 1) in fake_timers(p).added
        [woken] = invoker(p).started(ids["woken"])
        assert woken.journal[1].result.HasField("empty")
        assert [s.attempt for s in invoker(p).started(ids["failing"])] == [2]
        # Idempotency keys still resolve to the in-flight invocation.
        again, _ = p.invoke(TRIPS, "Reserve", "", trip_request("f"), {}, "idem-1")
        assert again == ids["idem"]

        # The inbox keeps its order, and new arrivals queue behind it.
        late, _ = p.invoke(FLIGHTS, "Cancel", "t1", b"", {})
        await settle(p)
        assert invoker(p).started(late) == []
        propose(p, ids["holder"], output())
        await settle(p)
        assert len(invoker(p).started(ids["queued1"])) == 1
        assert invoker(p).started(ids["queued2"]) == []
        propose(p, ids["queued1"], output())
        await settle(p)
        assert len(invoker(p).started(ids["queued2"])) == 1
        assert invoker(p).started(late) == []
        propose(p, ids["queued2"], output())
        await settle(p)
        assert len(invoker(p).started(late)) == 1

        # The sleeping one resumes once its timer fires.
        p.on_timer(due, ids["sleeping"], 1)
        await settle(p)
        assert len(invoker(p).started(ids["sleeping"])) == 1

    run(after_crash)


def test_recovery_with_a_free_key_starts_the_inbox_head() -> None:
    """A queued invocation whose key holder is gone is started by recovery."""
    kv = MemoryKV()
    ids: dict[str, str] = {}

    async def before() -> None:
        p = make_partition(kv)
        ids["holder"], _ = p.invoke(FLIGHTS, "Reserve", "t1", reserve_request("t1"), {})
        ids["queued"], _ = p.invoke(FLIGHTS, "Reserve", "t1", reserve_request("t1"), {})
        await settle(p)

    run(before)
    # Simulate a holder removed from storage (e.g. an operator purge).
    kv.write([(keys.INVOCATIONS + keys.part(ids["holder"]), None)])

    async def after() -> None:
        p = make_partition(kv)
        p.recover()
        await settle(p)
        assert [s.invocation_id for s in invoker(p).starts] == [ids["queued"]]
        assert list(inbox.scan(kv)) == []

    run(after)


def stored_in(kv: KV, invocation_id: str) -> invocation_pb2.Invocation:
    record = invocations.get(kv, invocation_id)
    assert record is not None
    return record


# ---- Retention


def test_purge_expired_removes_completed_invocations() -> None:
    async def main() -> None:
        p = make_partition(retention=0)
        done, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {}, idempotency_key="k-1")
        running, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {}, idempotency_key="k-2")
        await settle(p)
        propose(p, done, Entry(run=journal_pb2.RunCommand(name="x")))
        propose(p, done, output(b"bye"))
        await settle(p)
        assert stored(p, done).status == Status.COMPLETED
        assert len(journal.load(p.kv, done)) == 3
        await asyncio.sleep(0.002)  # past the (zero) retention

        assert p.purge_expired() == 1
        await settle(p)
        assert invocations.get(p.kv, done) is None
        assert journal.load(p.kv, done) == []
        assert idempotency.get(p.kv, TRIPS, "Reserve", "", "k-1") is None
        assert list(invocations.expired(p.kv, 10**15)) == []
        with pytest.raises(UnknownInvocation):
            p.record(done)
        with pytest.raises(UnknownInvocation):
            await p.attach(done)
        # The running invocation and its key are untouched.
        assert stored(p, running).status == Status.RUNNING
        assert idempotency.get(p.kv, TRIPS, "Reserve", "", "k-2") == running
        assert len(journal.load(p.kv, running)) == 1
        # The key is free again: a new invocation.
        fresh, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {}, idempotency_key="k-1")
        assert fresh != done
        assert p.purge_expired() == 0

    run(main)


def test_purge_keeps_invocations_within_retention() -> None:
    async def main() -> None:
        p = make_partition(retention=3600)
        done, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        propose(p, done, output())
        await settle(p)
        assert p.purge_expired() == 0
        assert stored(p, done).status == Status.COMPLETED

    run(main)


def test_record_and_records() -> None:
    async def main() -> None:
        p = make_partition()
        done, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        live_id, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        propose(p, done, output())
        propose(p, live_id, Entry(run=journal_pb2.RunCommand(name="r")))
        await settle(p)
        record, entries = p.record(live_id)
        assert record.journal_length == 2 and len(entries) == 2
        record, entries = p.record(done)
        assert record.status == Status.COMPLETED and len(entries) == 2
        assert {r.id for r in p.records()} == {done, live_id}
        with pytest.raises(UnknownInvocation):
            p.record("inv_missing")

    run(main)


def test_a_name_storage_cannot_key_fails_the_invocation_not_the_broker() -> None:
    async def main() -> None:
        p = make_partition()
        parent_id, result = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        live = p.live[parent_id]
        assert live.attempt is not None
        huge = Entry(attach=journal_pb2.AttachCommand(invocation_id="inv_" + "x" * 70_000))
        assert p.on_entry(live, live.attempt, 1, huge) is None
        await settle(p)
        failure = (await result).failure
        assert failure.code == 3  # INVALID_ARGUMENT: retrying would change nothing
        assert "entry 1 (attach)" in failure.message and "65535-byte limit" in failure.message
        assert [e.WhichOneof("command") for e in journal.load(p.kv, parent_id)] == ["input"]

    run(main)


def test_a_call_with_a_key_over_the_limit_fails_the_entry() -> None:
    async def main() -> None:
        p = make_partition()
        parent_id, _ = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        await settle(p)
        attempt = p.live[parent_id].attempt
        propose(p, parent_id, call_flight("t" * 65_536))
        await settle(p)
        [completion] = completions(attempt)
        assert completion.result.failure.code == 3
        assert "over the limit of 65535 bytes" in completion.result.failure.message
        assert len(p.live) == 1  # no child

    run(main)
