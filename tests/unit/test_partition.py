"""The partition state machine fed with events, asserting on the batches that come out.

No invoker, no timer queue, no event loop: each test feeds events to the partition and
looks at the writes and actions it emits. `commit` plays the driver (broker/driver.py):
it makes every emitted batch "durable" by applying its puts to the store, feeds the
partition's own follow-ups back to it, and returns every action for the test to check.
The registry is built from the demo services' descriptors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, TypeVar, cast

import pytest
from durable.v1 import invocation_pb2, journal_pb2, storage_pb2
from flights import flights_pb2
from google.protobuf import descriptor, descriptor_pb2
from trips import trips_pb2

from broker import codes
from broker.config import Settings
from broker.core import actions, control
from broker.core.events import AttemptEvent, Ended, Failed, Proposed, RanResult, Suspended
from broker.core.model import IdempotencyConflict, UnknownInvocation
from broker.core.model import Status as PlainStatus
from broker.core.partition import Partition
from broker.registry import Registry
from broker.storage import (
    Batch,
    MemoryKV,
    idempotency,
    inbox,
    invocations,
    journal,
    keys,
    state,
)
from broker.storage import timers as timer_table
from broker.storage.kv import KV

Entry = journal_pb2.JournalEntry
Result = journal_pb2.Result
Status = invocation_pb2.InvocationStatus
Action = actions.Action
A = TypeVar("A")

FLIGHTS = "flights.Flights"
TRIPS = "trips.Trips"
# Far in the future: a timer the test fires itself.
DUE = 5_000_000_000_000


# ---- The registry


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


# ---- The harness: the driver's part, without a loop


def make_partition(kv: KV | None = None, **settings: Any) -> Partition:
    options: dict[str, Any] = {"data_dir": None}
    options.update(settings)
    return Partition(MemoryKV() if kv is None else kv, make_registry(), Settings(**options))


def carry_out(p: Partition, batch_actions: Iterable[object]) -> None:
    """Feeds the partition its own follow-ups, exactly as `Driver._carry_out` does; the
    actions meant for the invoker and the clocks are left for the test to assert on."""
    for action in batch_actions:
        match action:
            case actions.AnswerCallers(invocation_id, _):
                p.finished(invocation_id)
            case actions.IdentityWritten(identity, invocation_id):
                p.dedup.written(identity, invocation_id)
            case actions.PromiseWritten(service, key, name):
                p.waits.promise_written(service, key, name)
            case actions.Evict(invocation_id, version):
                p.evict(invocation_id, version)
            case (
                actions.StartAttempt()
                | actions.SendCompletion()
                | actions.AbandonAttempt()
                | actions.ArmTimer()
                | actions.ScheduleRetry()
                | actions.CancelRetry()
                | actions.WakeLimits()
            ):
                pass
            case _:
                raise TypeError(f"unknown action {action!r}")


def apply(p: Partition, batch: Batch) -> None:
    """One batch as the committer handles it: urgent actions when queued, then the
    writes, then the actions that wait for them."""
    carry_out(p, batch.urgent)
    p.kv.write(batch.puts)
    carry_out(p, batch.actions)


def commit_batches(p: Partition) -> list[Batch]:
    """Makes every emitted batch durable in order (and any its follow-ups emit)."""
    done: list[Batch] = []
    while batches := p.take():
        for batch in batches:
            apply(p, batch)
            done.append(batch)
    return done


def commit(p: Partition) -> list[Action]:
    """Every action of every batch committed now, urgent ones first within a batch."""
    return actions_of(commit_batches(p))


def actions_of(batches: Iterable[Batch]) -> list[Action]:
    # Storage types a batch's actions as objects; the partition only attaches Actions.
    return cast("list[Action]", [a for b in batches for a in (*b.urgent, *b.actions)])


def of_type(found: Iterable[object], kind: type[A]) -> list[A]:
    return [a for a in found if isinstance(a, kind)]


def started(found: Iterable[object], invocation_id: str) -> list[actions.StartAttempt]:
    return [a for a in of_type(found, actions.StartAttempt) if a.invocation_id == invocation_id]


def completions(found: Iterable[object], invocation_id: str) -> list[actions.SendCompletion]:
    return [a for a in of_type(found, actions.SendCompletion) if a.invocation_id == invocation_id]


def answers(found: Iterable[object], invocation_id: str) -> list[Result]:
    return [
        a.result for a in of_type(found, actions.AnswerCallers) if a.invocation_id == invocation_id
    ]


def propose(p: Partition, invocation_id: str, entry: Entry) -> int:
    """Proposes `entry` as the next entry of the running attempt; returns its index."""
    live = p.live[invocation_id]
    assert live.attempt, f"{invocation_id} has no running attempt"
    index = len(live.journal)
    assert p.on_attempt(invocation_id, live.attempt, Proposed(index, entry)) is None
    return index


def attempt_event(p: Partition, invocation_id: str, event: AttemptEvent) -> str | None:
    """An event of the invocation's current attempt."""
    return p.on_attempt(invocation_id, p.live[invocation_id].attempt, event)


def start(p: Partition, service: str, method: str, key: str, request: bytes, **kw: Any) -> str:
    """Invokes and commits; the invocation must have started its first attempt."""
    invocation_id = p.invoke(service, method, key, request, {}, **kw)
    assert [s.attempt for s in started(commit(p), invocation_id)] == [1]
    return invocation_id


def start_trip(p: Partition, run_type: str = "") -> str:
    return start(p, TRIPS, "Reserve", "", trip_request(run_type))


def trip_calling_a_flight(p: Partition) -> tuple[str, str]:
    """A trip whose handler called Flights/Reserve for "t1", durably: (trip, flight)."""
    parent_id = start_trip(p)
    propose(p, parent_id, call_flight("t1"))
    commit(p)
    return parent_id, p.live[parent_id].journal[1].call.invocation_id


def trip_request(run_type: str = "") -> bytes:
    return trips_pb2.ReserveTripRequest(run_type=run_type, amount_cents=100).SerializeToString()


def reserve_request(trip: str) -> bytes:
    return flights_pb2.ReserveRequest(trip_id=trip, to="LIS").SerializeToString()


def output(value: bytes = b"done") -> Entry:
    return Entry(output=journal_pb2.OutputCommand(), result=Result(value=value))


def sleep(due: int = DUE) -> Entry:
    return Entry(sleep=journal_pb2.SleepCommand(wake_up_at_ms=due))


def call_flight(trip: str, method: str = "Reserve") -> Entry:
    request = (
        reserve_request(trip)
        if method == "Reserve"
        else flights_pb2.TripRef(trip_id=trip).SerializeToString()
    )
    return Entry(call=journal_pb2.CallCommand(service=FLIGHTS, method=method, request=request))


def stored(p: Partition, invocation_id: str) -> invocation_pb2.Invocation:
    return stored_in(p.kv, invocation_id)


def stored_in(kv: KV, invocation_id: str) -> invocation_pb2.Invocation:
    record = invocations.get(kv, invocation_id)
    assert record is not None, f"{invocation_id} is not stored"
    return record


def kinds(entries: Iterable[Entry]) -> list[str | None]:
    return [e.WhichOneof("command") for e in entries]


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
    p = make_partition()
    inv_id = p.invoke(TRIPS, "Reserve", "", trip_request(), {"h": "v"})
    assert inv_id.startswith("inv_")
    # The partition wrote nothing itself: the input, the record and the start travel in
    # one batch, and the start is urgent (the invoker sends it behind its barrier).
    assert list(p.kv.scan(b"")) == []
    [batch] = p.take()
    [start_action] = batch.urgent
    assert isinstance(start_action, actions.StartAttempt)
    assert journal.load(p.kv, inv_id) == []
    apply(p, batch)
    msg = start_action.start
    assert start_action.deployment_id == "dp_1"
    assert msg.invocation_id == inv_id
    assert (msg.service, msg.method, msg.key) == (TRIPS, "Reserve", "")
    assert msg.attempt == start_action.attempt == 1
    assert list(msg.journal) == [
        Entry(input=journal_pb2.InputCommand(request=trip_request(), headers={"h": "v"}))
    ]
    assert msg.suspend_after_ms == 1000
    record = stored(p, inv_id)
    assert record.status == Status.RUNNING
    assert p.live[inv_id].record.status == Status.RUNNING
    assert p.live[inv_id].record.deployment_id == "dp_1"
    assert not record.exclusive
    assert kinds(journal.load(p.kv, inv_id)) == ["input"]
    assert p.output(inv_id) is None

    propose(p, inv_id, output(b"trip-ok"))
    # Callers hear once the output is durable, not before.
    [batch] = p.take()
    assert of_type(batch.urgent, actions.AnswerCallers) == []
    assert [r.value for r in answers(batch.actions, inv_id)] == [b"trip-ok"]
    apply(p, batch)
    assert inv_id not in p.live
    record = stored(p, inv_id)
    assert record.status == Status.COMPLETED
    assert record.result.value == b"trip-ok"
    assert record.journal_length == 2
    # A completed invocation answers from storage at once.
    done = p.output(inv_id)
    assert done is not None and done.value == b"trip-ok"
    with pytest.raises(UnknownInvocation):
        p.output("inv_nope")


def test_exclusive_record_and_keyed_start() -> None:
    p = make_partition()
    inv_id = p.invoke(FLIGHTS, "Reserve", "t1", reserve_request("t1"), {})
    get_id = p.invoke(FLIGHTS, "Get", "t1", b"", {})
    found = commit(p)
    assert p.live[inv_id].record.exclusive
    assert not p.live[get_id].record.exclusive
    assert started(found, inv_id)[0].start.key == "t1"
    assert len(started(found, get_id)) == 1


# ---- Calls between invocations


def test_call_creates_child_and_output_completes_parent() -> None:
    p = make_partition()
    parent_id = start_trip(p)

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
    assert invocations.get(p.kv, child_id) is None  # nothing written before the commit
    found = commit(p)
    [child_start] = started(found, child_id)
    assert child_start.start.journal[0].input.request == reserve_request("trip-9")
    # The call entry and the child are durable, linked both ways.
    assert journal.load(p.kv, parent_id)[1].call.invocation_id == child_id
    assert stored(p, child_id).caller.invocation_id == parent_id

    propose(p, child_id, output(b"booked"))
    # The parent's entry completes in memory at once; its attempt hears after the commit.
    assert p.live[parent_id].journal[1].result.value == b"booked"
    [batch] = p.take()
    assert completions(batch.urgent, parent_id) == []
    apply(p, batch)
    [completion] = completions(batch.actions, parent_id)
    assert (completion.attempt, completion.index) == (1, 1)
    assert completion.result.value == b"booked"
    assert journal.load(p.kv, parent_id)[1].result.value == b"booked"
    assert stored(p, child_id).status == Status.COMPLETED
    assert child_id not in p.live
    assert answers(batch.actions, parent_id) == []
    assert p.output(parent_id) is None


def test_call_to_unknown_service_fails_the_entry() -> None:
    p = make_partition()
    parent_id = start_trip(p)
    propose(p, parent_id, Entry(call=journal_pb2.CallCommand(service="nope.Nope", method="X")))
    [completion] = completions(commit(p), parent_id)
    assert completion.index == 1
    assert completion.result.failure.code == codes.UNIMPLEMENTED
    assert journal.load(p.kv, parent_id)[1].result.failure.code == codes.UNIMPLEMENTED
    assert len(p.live) == 1  # no child


def test_call_without_key_fails_the_entry() -> None:
    p = make_partition()
    parent_id = start_trip(p)
    propose(p, parent_id, call_flight(""))
    [completion] = completions(commit(p), parent_id)
    assert completion.result.failure.code == codes.INVALID_ARGUMENT
    assert len(p.live) == 1


def test_delayed_send_starts_when_its_timer_fires() -> None:
    p = make_partition()
    parent_id = start_trip(p)
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
    found = commit(p)
    child_id = p.live[parent_id].journal[1].send.invocation_id
    assert p.live[child_id].record.status == Status.PENDING
    assert not p.live[child_id].record.caller.invocation_id
    assert started(found, child_id) == []
    assert of_type(found, actions.ArmTimer) == [actions.ArmTimer(due, child_id, -1)]
    assert [(d, t.invocation_id, t.entry_index) for d, t in timer_table.scan(p.kv)] == [
        (due, child_id, -1)
    ]
    p.on_timer(due, child_id, -1)
    assert len(started(commit(p), child_id)) == 1
    assert list(timer_table.scan(p.kv)) == []


def test_send_to_unknown_service_is_on_record_as_a_failed_invocation() -> None:
    p = make_partition()
    parent_id = start_trip(p)
    propose(p, parent_id, Entry(send=journal_pb2.SendCommand(service="nope.Nope", method="X")))
    found = commit(p)
    assert of_type(found, actions.StartAttempt) == []
    child_id = p.live[parent_id].journal[1].send.invocation_id
    assert child_id and child_id != parent_id
    assert len(journal.load(p.kv, parent_id)) == 2
    child = stored(p, child_id)
    assert (child.service, child.method) == ("nope.Nope", "X")
    assert child.status == Status.COMPLETED
    assert child.result.failure.code == codes.UNIMPLEMENTED
    assert "unknown service nope.Nope" in child.result.failure.message
    assert child.expires_at_ms > 0
    assert child_id not in p.live  # nothing left running for it
    # The caller goes on: its next step is taken as usual.
    propose(p, parent_id, output())
    assert answers(commit(p), parent_id) != []


def test_send_without_its_key_is_on_record_as_a_failed_invocation() -> None:
    p = make_partition()
    parent_id = start_trip(p)
    send = journal_pb2.SendCommand(
        service=FLIGHTS, method="Reserve", request=flights_pb2.ReserveRequest().SerializeToString()
    )
    propose(p, parent_id, Entry(send=send))
    commit(p)
    child = stored(p, p.live[parent_id].journal[1].send.invocation_id)
    assert child.status == Status.COMPLETED
    assert child.result.failure.code == codes.INVALID_ARGUMENT
    assert "missing key" in child.result.failure.message
    # A keyed target's key lock is neither taken nor left behind.
    assert not child.exclusive
    assert p.locks.holder((FLIGHTS, "")) is None


# ---- Key locks


def test_exclusive_handlers_of_one_key_are_serialized() -> None:
    p = make_partition()
    first = p.invoke(FLIGHTS, "Reserve", "t1", reserve_request("t1"), {})
    second = p.invoke(FLIGHTS, "Reserve", "t1", reserve_request("t1"), {})
    other_key = p.invoke(FLIGHTS, "Reserve", "t2", reserve_request("t2"), {})
    found = commit(p)
    assert len(started(found, first)) == 1
    assert started(found, second) == []
    assert len(started(found, other_key)) == 1
    assert p.live[second].record.status == Status.PENDING
    assert stored(p, second).status == Status.PENDING
    assert [(s, k, i) for s, k, _, i in inbox.scan(p.kv)] == [(FLIGHTS, "t1", second)]

    # A shared handler runs at once although t1 is held.
    shared = p.invoke(FLIGHTS, "Get", "t1", b"", {})
    found = commit(p)
    assert len(started(found, shared)) == 1
    assert started(found, second) == []

    # The second starts in the batch that ends the first, behind the first's state
    # write: the invoker reads the state once that batch is durable, so it sees b1.
    propose(p, first, Entry(set_state=journal_pb2.SetStateCommand(key="booking", value=b"b1")))
    propose(p, first, output(b"first"))
    set_state_batch, output_batch = commit_batches(p)
    assert started(set_state_batch.urgent, second) == []
    assert len(started(output_batch.urgent, second)) == 1
    assert p.current_state(FLIGHTS, "t1") == {"booking": b"b1"}
    assert p.live[second].record.status == Status.RUNNING
    assert p.lock_holder(FLIGHTS, "t1") == second
    assert list(inbox.scan(p.kv)) == []
    assert p.output(second) is None


def test_inbox_drains_in_arrival_order() -> None:
    p = make_partition()
    ids = [p.invoke(FLIGHTS, "Confirm", "k", b"", {}) for _ in range(4)]
    order = [s.invocation_id for s in of_type(commit(p), actions.StartAttempt)]
    for inv_id in ids[:-1]:
        propose(p, inv_id, output())
        order += [s.invocation_id for s in of_type(commit(p), actions.StartAttempt)]
    assert order == ids


def test_state_commands_need_an_exclusive_handler() -> None:
    p = make_partition()
    shared = start(p, FLIGHTS, "Get", "t1", b"")
    entry = Entry(set_state=journal_pb2.SetStateCommand(key="booking", value=b"x"))
    error = p.on_attempt(shared, 1, Proposed(1, entry))
    assert error is not None and "set_state" in error
    assert len(p.live[shared].journal) == 1
    assert p.take() == []


def test_state_set_clear_and_get() -> None:
    p = make_partition()
    writer = start(p, FLIGHTS, "Reserve", "t1", reserve_request("t1"))
    propose(p, writer, Entry(set_state=journal_pb2.SetStateCommand(key="a", value=b"1")))
    propose(p, writer, Entry(set_state=journal_pb2.SetStateCommand(key="b", value=b"2")))
    propose(p, writer, Entry(clear_state=journal_pb2.ClearStateCommand(key="a")))
    propose(p, writer, output())
    reader = p.invoke(FLIGHTS, "Get", "t1", b"", {})
    [reader_start] = started(commit(p), reader)
    assert reader_start.start.key == "t1"
    assert p.current_state(FLIGHTS, "t1") == {"b": b"2"}
    # get_state journals the value the handler read; it needs that result.
    bare = Entry(get_state=journal_pb2.GetStateCommand(key="b"))
    assert attempt_event(p, reader, Proposed(1, bare)) is not None
    bare.result.value = b"2"
    propose(p, reader, bare)
    assert p.live[reader].journal[1].result.value == b"2"
    # Keyless handlers have no state.
    plain = start_trip(p)
    assert p.live[plain].record.key == ""
    assert attempt_event(p, plain, Proposed(1, bare)) is not None


def test_the_state_limit_counts_every_set_and_clear_of_the_running_handler() -> None:
    """An exclusive handler's state size is read from storage once, then kept by its own
    state commands: each set, clear and clear-all must count, in storage or not yet."""
    kv = MemoryKV()
    # "a"+6 and "b"+6 bytes: 14; a third value of that size would be 21 > 20.
    p = make_partition(kv, max_state_bytes=20)
    first = start(p, FLIGHTS, "Reserve", "t1", reserve_request("t1"))
    propose(p, first, Entry(set_state=journal_pb2.SetStateCommand(key="a", value=b"111111")))
    propose(p, first, Entry(set_state=journal_pb2.SetStateCommand(key="b", value=b"222222")))
    propose(p, first, output())
    commit(p)
    # A later handler, on a broker restarted over the same store: 14 bytes stored.
    p = make_partition(kv, max_state_bytes=20)
    p.recover()
    second = start(p, FLIGHTS, "Reserve", "t1", reserve_request("t1"))
    too_big = Entry(set_state=journal_pb2.SetStateCommand(key="c", value=b"333333"))
    # Overwriting a value counts its new size, not both.
    propose(p, second, Entry(set_state=journal_pb2.SetStateCommand(key="a", value=b"999999")))
    propose(p, second, Entry(clear_state=journal_pb2.ClearStateCommand(key="b")))
    propose(p, second, too_big)  # 14 - 7 + 7 = 14: room again after the clear
    refused = Entry(set_state=journal_pb2.SetStateCommand(key="d", value=b"444444"))
    index = len(p.live[second].journal)
    assert attempt_event(p, second, Proposed(index, refused)) is None  # fails the invocation
    [failed] = answers(commit(p), second)
    assert failed.failure.code == codes.RESOURCE_EXHAUSTED
    assert "would hold 21 bytes" in failed.failure.message
    assert p.current_state(FLIGHTS, "t1") == {"a": b"999999", "c": b"333333"}
    # After clearing everything, the full limit is free for the same handler.
    third = start(p, FLIGHTS, "Reserve", "t1", reserve_request("t1"))
    propose(p, third, Entry(clear_all_state=journal_pb2.ClearAllStateCommand()))
    propose(p, third, Entry(set_state=journal_pb2.SetStateCommand(key="x", value=b"1" * 19)))
    propose(p, third, output())
    commit(p)
    assert p.current_state(FLIGHTS, "t1") == {"x": b"1" * 19}


def test_the_state_an_attempt_starts_with_is_what_its_limit_checks_count() -> None:
    """The invoker reads an object's state for an attempt's start; an exclusive handler's
    limit checks take their sizes from that read, with the journal's own writes on top."""
    kv = MemoryKV()
    p = make_partition(kv, max_state_bytes=20)
    first = start(p, FLIGHTS, "Reserve", "t1", reserve_request("t1"))
    propose(p, first, Entry(set_state=journal_pb2.SetStateCommand(key="a", value=b"111111")))
    propose(p, first, output())
    commit(p)
    second = start(p, FLIGHTS, "Reserve", "t1", reserve_request("t1"))
    assert p.attempt_state(second, FLIGHTS, "t1") == {"a": b"111111"}
    assert p.live[second].state_sizes == {"a": 7}
    propose(p, second, Entry(set_state=journal_pb2.SetStateCommand(key="b", value=b"222222")))
    refused = Entry(set_state=journal_pb2.SetStateCommand(key="c", value=b"333333"))
    assert attempt_event(p, second, Proposed(len(p.live[second].journal), refused)) is None
    [failed] = answers(commit(p), second)
    assert "would hold 21 bytes" in failed.failure.message
    # A shared handler's read seeds nothing: it never writes state.
    reader = start(p, FLIGHTS, "Get", "t1", reserve_request("t1"))
    assert p.attempt_state(reader, FLIGHTS, "t1") == {"a": b"111111", "b": b"222222"}
    assert p.live[reader].state_sizes is None


# ---- Suspension


def test_suspension_on_incomplete_sleep_resumes_on_timer() -> None:
    p = make_partition()
    inv_id = start_trip(p)
    propose(p, inv_id, sleep())
    assert of_type(commit(p), actions.ArmTimer) == [actions.ArmTimer(DUE, inv_id, 1)]
    live = p.live[inv_id]
    assert attempt_event(p, inv_id, Suspended((1,))) is None
    assert live.attempt == 0
    found = commit(p)
    assert of_type(found, actions.StartAttempt) == []
    assert live.record.status == Status.SUSPENDED
    assert list(stored(p, inv_id).waiting_on) == [1]
    assert stored(p, inv_id).status == Status.SUSPENDED

    p.on_timer(DUE, inv_id, 1)
    [resumed] = started(commit(p), inv_id)
    assert resumed.attempt == 2
    assert resumed.start.journal[1].result.HasField("empty")
    assert live.record.status == Status.RUNNING
    assert list(live.record.waiting_on) == []


def test_a_suspended_journal_leaves_memory_and_comes_back_whole() -> None:
    p = make_partition()
    inv_id = start_trip(p)
    propose(p, inv_id, sleep())
    commit(p)
    live = p.live[inv_id]
    assert attempt_event(p, inv_id, Suspended((1,))) is None
    assert of_type(commit(p), actions.Evict) == [actions.Evict(inv_id, live.version)]
    assert live.evicted  # waiting costs no journal in memory
    # Reading it (describe) does not bring it back.
    _, entries = p.record(inv_id)
    assert kinds(entries) == ["input", "sleep"]
    assert live.evicted
    # Completing the wait reads it back and resumes with everything.
    p.on_timer(DUE, inv_id, 1)
    [resumed] = started(commit(p), inv_id)
    assert not live.evicted
    assert kinds(resumed.start.journal) == ["input", "sleep"]
    assert resumed.start.journal[1].result.HasField("empty")


def test_a_write_after_suspending_keeps_the_journal_in_memory() -> None:
    p = make_partition()
    inv_id = start_trip(p)
    propose(p, inv_id, sleep())
    commit(p)
    live = p.live[inv_id]
    assert attempt_event(p, inv_id, Suspended((1,))) is None
    # The timer fires before the suspension is durable: its write is still pending
    # when the eviction would run, so the journal must stay.
    p.on_timer(DUE, inv_id, 1)
    found = commit(p)
    assert len(of_type(found, actions.Evict)) == 1
    assert not live.evicted
    assert live.journal[1].result.HasField("empty")
    assert [s.attempt for s in started(found, inv_id)] == [2]


def test_suspended_parent_resumes_when_child_completes() -> None:
    p = make_partition()
    parent_id, child_id = trip_calling_a_flight(p)
    assert attempt_event(p, parent_id, Suspended((1,))) is None
    commit(p)
    assert stored(p, parent_id).status == Status.SUSPENDED
    propose(p, child_id, output(b"booked"))
    found = commit(p)
    [resumed] = started(found, parent_id)
    assert resumed.attempt == 2
    assert resumed.start.journal[1].result.value == b"booked"
    assert completions(found, parent_id) == []  # the new attempt gets it in its journal


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_each_invocations_own_steps_log_at_debug_only(
    level: int, caplog: pytest.LogCaptureFixture
) -> None:
    # At INFO a busy broker's log holds what needs an operator, not lines for each step
    # of every call (they cost a lone call 10% of its latency).
    with caplog.at_level(level, logger="broker"):
        p = make_partition()
        parent_id, child_id = trip_calling_a_flight(p)
        assert attempt_event(p, parent_id, Suspended((1,))) is None
        commit(p)
        propose(p, child_id, output(b"booked"))
        commit(p)
        propose(p, parent_id, output(b"trip"))
        commit(p)
    assert stored(p, parent_id).status == Status.COMPLETED
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("broker"))
    steps = [
        f"invocation {parent_id} created: trips.Trips/Reserve",
        f"invocation {child_id} created: flights.Flights/Reserve",
        f"invocation {parent_id} suspended, waiting on [1]",
        f"invocation {child_id} succeeded after 1 attempt(s)",
        f"invocation {parent_id} resumed by entry 1",
        f"invocation {parent_id} succeeded after 2 attempt(s)",
    ]
    if level == logging.INFO:
        assert logged == ""
    else:
        assert [step in logged for step in steps] == [True] * len(steps), logged


def test_suspension_on_completed_entry_restarts_at_once() -> None:
    p = make_partition()
    inv_id = start_trip(p)
    live = p.live[inv_id]
    propose(p, inv_id, Entry(run=journal_pb2.RunCommand(name="pay")))
    assert p.on_attempt(inv_id, 1, RanResult(1, Result(value=b"paid"))) is None
    assert [c.index for c in completions(commit(p), inv_id)] == [1]
    assert p.on_attempt(inv_id, 1, Suspended((1,))) is None
    [restarted] = started(commit(p), inv_id)
    assert restarted.attempt == 2
    assert restarted.start.journal[1].result.value == b"paid"
    assert live.record.status == Status.RUNNING
    assert live.attempt == 2


def test_invalid_suspensions_are_protocol_violations() -> None:
    p = make_partition()
    inv_id = start_trip(p)
    live = p.live[inv_id]
    assert "nothing" in (p.on_attempt(inv_id, 1, Suspended(())) or "")
    assert "cannot complete" in (p.on_attempt(inv_id, 1, Suspended((0,))) or "")
    assert "cannot complete" in (p.on_attempt(inv_id, 1, Suspended((7,))) or "")
    assert live.attempt == 1
    assert live.record.status == Status.RUNNING
    assert p.take() == []


# ---- Protocol checks


def test_wrong_index_is_rejected_and_journals_nothing() -> None:
    p = make_partition()
    inv_id = start_trip(p)
    live = p.live[inv_id]
    for index in (0, 2, 5):
        error = p.on_attempt(inv_id, 1, Proposed(index, output()))
        assert error is not None and "protocol violation" in error
        assert f"entry {index}" in error
    assert p.take() == []
    assert len(live.journal) == 1
    assert len(journal.load(p.kv, inv_id)) == 1
    assert live.record.status == Status.RUNNING


def test_events_from_a_stale_attempt_are_ignored() -> None:
    p = make_partition()
    inv_id = start_trip(p)
    live = p.live[inv_id]
    assert p.on_attempt(inv_id, 99, Proposed(1, output())) is None
    assert p.on_attempt(inv_id, 99, Suspended((0,))) is None
    assert p.on_attempt(inv_id, 99, Failed("late")) is None
    assert p.on_attempt(inv_id, 99, Ended()) is None
    assert p.on_attempt("inv_nope", 1, Failed("late")) is None
    assert p.take() == []
    assert len(live.journal) == 1
    assert live.record.status == Status.RUNNING
    assert live.attempt == 1


def test_output_without_result_and_end_without_output() -> None:
    p = make_partition()
    inv_id = start_trip(p)
    live = p.live[inv_id]
    bare = Entry(output=journal_pb2.OutputCommand())
    assert "without a result" in (p.on_attempt(inv_id, 1, Proposed(1, bare)) or "")
    assert "without an output" in (p.on_attempt(inv_id, 1, Ended()) or "")
    assert p.take() == []
    propose(p, inv_id, output())
    assert p.on_attempt(inv_id, 1, Ended()) is None
    assert live.attempt == 0


# ---- Failures and retries


def test_failed_attempt_backs_off_then_retries() -> None:
    p = make_partition(retry_initial=0.5)
    inv_id = start_trip(p)
    live = p.live[inv_id]
    assert p.on_attempt(inv_id, 1, Failed("handler raised ValueError")) is None
    assert live.attempt == 0
    assert live.record.status == Status.BACKING_OFF
    assert live.record.last_error == "handler raised ValueError"
    # The backoff counts from the failure: the retry is scheduled urgently.
    [batch] = p.take()
    assert batch.urgent == [actions.ScheduleRetry(inv_id, p.settings.backoff(1))]
    assert batch.actions == []
    apply(p, batch)
    record = stored(p, inv_id)
    assert record.status == Status.BACKING_OFF
    assert record.last_error == "handler raised ValueError"
    assert record.next_retry_at_ms > 0

    p.on_retry_due(inv_id)
    [retry] = started(commit(p), inv_id)
    assert retry.attempt == 2
    assert live.record.attempts == 2
    assert live.record.status == Status.RUNNING
    assert live.attempt == 2
    # A retry that comes due again (e.g. a late timer) starts nothing more.
    p.on_retry_due(inv_id)
    assert p.take() == []


def _cancel_after_a_failed_attempt(p: Partition, inv_id: str, paused: bool) -> Batch:
    """Fails attempt 1 (backing off; paused too with `paused`), cancels the invocation,
    and checks the cancel started attempt 2 at once; the cancel's batch, applied."""
    assert p.on_attempt(inv_id, 1, Failed("handler raised ValueError")) is None
    commit(p)
    if paused:
        control.pause(p, inv_id)
        commit(p)
    control.cancel(p, inv_id)
    [batch] = p.take()
    [retry] = of_type(batch.urgent, actions.StartAttempt)
    assert retry.attempt == 2
    apply(p, batch)
    return batch


@pytest.mark.parametrize("paused", [False, True])
def test_a_cancel_runs_a_backing_off_or_paused_invocation_now(paused: bool) -> None:
    # Waiting on nothing, it hears a cancellation at its next await: an attack saw one
    # run only when its retry came 15 s later, and a paused one never.
    p = make_partition(retry_initial=60)
    inv_id = start_trip(p)
    batch = _cancel_after_a_failed_attempt(p, inv_id, paused)
    assert actions.CancelRetry(inv_id) in batch.urgent
    record = stored(p, inv_id)
    assert record.status == Status.RUNNING and record.cancel_pending and record.cancelled
    propose(p, inv_id, sleep())
    assert p.live[inv_id].journal[1].result.failure.code == codes.CANCELLED


@pytest.mark.parametrize("paused", [False, True])
def test_a_cancel_runs_a_backing_off_or_paused_invocation_waiting_on_a_call_now(
    paused: bool,
) -> None:
    # An attack paused a saga suspended on its call, then cancelled it: the call's entry
    # got CANCELLED, but nothing ran the saga to hear it (and compensate) until an
    # operator resumed it.
    p = make_partition(retry_initial=60)
    parent_id, _ = trip_calling_a_flight(p)
    _cancel_after_a_failed_attempt(p, parent_id, paused)
    record = stored(p, parent_id)
    assert record.status == Status.RUNNING and record.cancelled
    assert p.live[parent_id].journal[1].result.failure.code == codes.CANCELLED


def test_work_accepted_for_a_handler_a_newer_deployment_dropped_fails_unimplemented() -> None:
    # A delayed send (or a schedule, a queued call) accepted while Flights/Cancel had a
    # handler started on a newer deployment without it: "no handler", retried for ever.
    p = make_partition()
    p.registry.add(
        storage_pb2.DeploymentRecord(
            id="dp_2",
            uri="http://y",
            services=[FLIGHTS],
            files=_files(flights_pb2.DESCRIPTOR.services_by_name["Flights"]),
            missing_handlers=[f"{FLIGHTS}/Cancel"],
            created_at_ms=2,
        )
    )
    request = flights_pb2.TripRef(trip_id="t1").SerializeToString()
    inv_id = p.invoke(FLIGHTS, "Cancel", "t1", request, {})
    found = commit(p)
    assert started(found, inv_id) == []
    [answer] = answers(found, inv_id)
    assert answer.failure.code == codes.UNIMPLEMENTED
    assert answer.failure.message == (
        "flights.Flights/Cancel is not implemented by the deployment now serving "
        "flights.Flights (dp_2 at http://y): its endpoint has no handler for it"
    )
    assert stored(p, inv_id).status == Status.COMPLETED


@pytest.mark.parametrize("while_running", [False, True])
def test_a_cancel_reaches_a_handler_whose_side_effect_keeps_failing(while_running: bool) -> None:
    # An attack cancelled a saga whose charge always raised: the run failed every
    # attempt before any await, so the cancellation never landed; 23 attempts, no
    # compensation. It now completes the pending run with CANCELLED, so the next
    # attempt's replay raises it there, where the saga compensates.
    p = make_partition(retry_initial=60)
    inv_id = start_trip(p)
    propose(p, inv_id, Entry(run=journal_pb2.RunCommand(name="charge")))
    commit(p)
    if while_running:
        control.cancel(p, inv_id)  # pending: nothing awaited to deliver it to
        commit(p)
        assert p.live[inv_id].record.cancel_pending
    assert p.on_attempt(inv_id, 1, Failed("run 'charge' failed: ConnectionError")) is None
    if not while_running:
        commit(p)
        control.cancel(p, inv_id)
    found = commit(p)
    [retry] = [s for s in started(found, inv_id)]
    assert retry.attempt == 2
    record = stored(p, inv_id)
    assert record.status == Status.RUNNING and not record.cancel_pending
    assert p.live[inv_id].journal[1].result.failure.code == codes.CANCELLED


@pytest.mark.parametrize("terminal", [False, True])
def test_non_determinism_is_retried_unless_configured_terminal(terminal: bool) -> None:
    message = "non-determinism at journal entry 1: the journal has sleep, but ... run"
    p = make_partition(non_determinism_terminal=terminal)
    inv_id = start_trip(p)
    assert p.on_attempt(inv_id, 1, Failed(message, non_determinism=True)) is None
    found = commit(p)
    record = stored(p, inv_id)
    assert record.last_error == message
    if terminal:
        assert record.status == Status.COMPLETED
        assert (record.result.failure.code, record.result.failure.message) == (
            codes.INTERNAL,
            message,
        )
        [answer] = answers(found, inv_id)
        assert answer.failure.message == message
        assert of_type(found, actions.ScheduleRetry) == []
    else:
        # Production: retried with backoff, so a fixed deployment can recover it.
        assert record.status == Status.BACKING_OFF
        assert len(of_type(found, actions.ScheduleRetry)) == 1
        assert answers(found, inv_id) == []


def test_failure_after_output_does_not_retry() -> None:
    p = make_partition()
    inv_id = start_trip(p)
    propose(p, inv_id, output(b"ok"))
    assert p.on_attempt(inv_id, 1, Failed("stream broke")) is None
    found = commit(p)
    assert of_type(found, actions.ScheduleRetry) == []
    assert of_type(found, actions.StartAttempt) == []
    assert stored(p, inv_id).status == Status.COMPLETED
    assert [r.value for r in answers(found, inv_id)] == [b"ok"]
    done = p.output(inv_id)
    assert done is not None and done.value == b"ok"


@pytest.mark.parametrize("code", [0, 17, 99])
def test_an_output_failing_with_no_failure_code_is_recorded_and_answered_unknown(
    code: int,
) -> None:
    # An endpoint (not this SDK, which maps them) failing with OK hung the caller, whom
    # the ingress aborted with OK; the record said "failed OK".
    p = make_partition()
    inv_id = start_trip(p)
    failed = journal_pb2.Failure(code=code, message="said the endpoint")
    propose(p, inv_id, Entry(output=journal_pb2.OutputCommand(), result=Result(failure=failed)))
    found = commit(p)
    assert [r.failure.code for r in answers(found, inv_id)] == [codes.UNKNOWN]
    record = stored(p, inv_id)
    assert record.result.failure.code == codes.UNKNOWN
    assert record.result.failure.message == "said the endpoint"


def test_what_an_attempt_sends_after_its_output_is_refused_logged_and_emits_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    p = make_partition()
    inv_id = start_trip(p)
    propose(p, inv_id, Entry(run=journal_pb2.RunCommand(name="pay")))
    commit(p)
    propose(p, inv_id, output(b"ok"))
    # The attempt is still current while its output is queued: what it sends after the
    # output would change a result callers may already hold.
    after = "after the invocation's output"
    with caplog.at_level(logging.WARNING, logger="broker.core"):
        assert after in (p.on_attempt(inv_id, 1, Proposed(3, output(b"again"))) or "")
        assert after in (p.on_attempt(inv_id, 1, RanResult(1, Result(value=b"paid"))) or "")
        assert after in (p.on_attempt(inv_id, 1, Suspended((1,))) or "")
        # The failure the attempt then reports may come once the invocation is out of
        # memory, so each refusal is logged as it happens, and the failure adds nothing.
        assert p.on_attempt(inv_id, 1, Failed("protocol violation: ...")) is None
    assert [after in r.getMessage() for r in caplog.records] == [True, True, True]
    [batch] = p.take()  # the output's batch only
    apply(p, batch)
    assert stored(p, inv_id).result.value == b"ok"
    assert kinds(journal.load(p.kv, inv_id)) == ["input", "run", "output"]
    assert not journal.load(p.kv, inv_id)[1].HasField("result")


def test_what_an_attempt_sends_once_its_completion_is_durable_is_refused_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The completion can be durable (and the invocation out of memory) before the
    # attempt's next message is read: that message is still a violation, and nobody
    # else will log it.
    p = make_partition()
    inv_id = start_trip(p)
    propose(p, inv_id, output(b"ok"))
    commit(p)
    assert inv_id not in p.live
    after = "after the invocation's output"
    with caplog.at_level(logging.WARNING, logger="broker.core"):
        assert after in (p.on_attempt(inv_id, 1, Proposed(2, output(b"again"))) or "")
        assert after in (p.on_attempt(inv_id, 1, RanResult(0, Result(value=b"x"))) or "")
        assert after in (p.on_attempt(inv_id, 1, Suspended((1,))) or "")
        # Its end and the failure it reports then change nothing and say nothing more;
        # an older attempt's messages are stale.
        assert p.on_attempt(inv_id, 1, Ended()) is None
        assert p.on_attempt(inv_id, 1, Failed("protocol violation")) is None
        assert p.on_attempt(inv_id, 0, Proposed(2, output(b"stale"))) is None
    assert [after in r.getMessage() for r in caplog.records] == [True, True, True]
    assert p.take() == []
    assert kinds(journal.load(p.kv, inv_id)) == ["input", "output"]
    assert stored(p, inv_id).result.value == b"ok"


# ---- Limits


def test_a_journal_over_its_limit_fails_terminally() -> None:
    p = make_partition(max_journal_entries=2)
    inv_id = start_trip(p)
    propose(p, inv_id, Entry(run=journal_pb2.RunCommand(name="one")))
    commit(p)
    two = Entry(run=journal_pb2.RunCommand(name="two"))
    assert p.on_attempt(inv_id, 1, Proposed(2, two)) is None
    [batch] = p.take()
    [abandon] = of_type(batch.urgent, actions.AbandonAttempt)
    assert (abandon.invocation_id, abandon.attempt) == (inv_id, 1)
    apply(p, batch)
    [answer] = answers(batch.actions, inv_id)
    assert answer.failure.code == codes.RESOURCE_EXHAUSTED
    assert "--max-journal-entries" in answer.failure.message
    assert kinds(journal.load(p.kv, inv_id)) == ["input", "run"]


def test_a_name_storage_cannot_key_fails_the_invocation_not_the_broker() -> None:
    p = make_partition()
    parent_id = start_trip(p)
    huge = Entry(attach=journal_pb2.AttachCommand(invocation_id="inv_" + "x" * 70_000))
    assert p.on_attempt(parent_id, 1, Proposed(1, huge)) is None
    found = commit(p)
    [failure] = [r.failure for r in answers(found, parent_id)]
    assert failure.code == codes.INVALID_ARGUMENT  # retrying would change nothing
    assert "entry 1 (attach)" in failure.message and "65535-byte limit" in failure.message
    assert kinds(journal.load(p.kv, parent_id)) == ["input"]
    assert [a.invocation_id for a in of_type(found, actions.AbandonAttempt)] == [parent_id]


def test_a_call_with_a_key_over_the_limit_fails_the_entry() -> None:
    p = make_partition()
    parent_id = start_trip(p)
    propose(p, parent_id, call_flight("t" * 65_536))
    [completion] = completions(commit(p), parent_id)
    assert completion.result.failure.code == codes.INVALID_ARGUMENT
    assert "over the 65535-byte limit" in completion.result.failure.message
    assert len(p.live) == 1  # no child


# ---- Idempotency


def test_idempotency_key_returns_the_same_invocation() -> None:
    p = make_partition()
    first = p.invoke(TRIPS, "Reserve", "", trip_request(), {}, idempotency_key="k-1")
    second = p.invoke(TRIPS, "Reserve", "", trip_request(), {}, idempotency_key="k-1")
    other = p.invoke(TRIPS, "Reserve", "", trip_request(), {}, idempotency_key="k-2")
    assert first == second
    assert other != first
    found = commit(p)
    assert len(started(found, first)) == 1
    assert idempotency.get(p.kv, TRIPS, "Reserve", "", "k-1") == first
    propose(p, first, output(b"once"))
    assert [r.value for r in answers(commit(p), first)] == [b"once"]
    # After completion (until purged) the key still finds the invocation, answered
    # from storage, and nothing starts again.
    third = p.invoke(TRIPS, "Reserve", "", trip_request(), {}, idempotency_key="k-1")
    assert third == first
    done = p.output(third)
    assert done is not None and done.value == b"once"
    assert p.take() == []


def test_idempotency_key_with_another_request_is_refused() -> None:
    p = make_partition()
    first = p.invoke(TRIPS, "Reserve", "", trip_request("a"), {}, idempotency_key="k-1")
    with pytest.raises(IdempotencyConflict) as conflict:
        p.invoke(TRIPS, "Reserve", "", trip_request("b"), {}, idempotency_key="k-1")
    assert conflict.value.invocation_id == first
    # While the row is only queued, and once it is written, the same request attaches.
    again = p.invoke(TRIPS, "Reserve", "", trip_request("a"), {}, idempotency_key="k-1")
    assert again == first
    found = commit(p)
    assert len(of_type(found, actions.IdentityWritten)) == 1
    with pytest.raises(IdempotencyConflict):
        p.invoke(TRIPS, "Reserve", "", trip_request("b"), {}, idempotency_key="k-1")
    again = p.invoke(TRIPS, "Reserve", "", trip_request("a"), {}, idempotency_key="k-1")
    assert again == first
    assert p.take() == []
    assert [live.id for live in p.listed()] == [first]


def test_the_same_request_encoded_another_way_is_the_same_request() -> None:
    # An attack's client wrote the fields in another order, or a default value out:
    # the same message, refused as "a different request" because the bytes differed.
    p = make_partition()
    first = p.invoke(TRIPS, "Reserve", "", trip_request("a"), {}, idempotency_key="k-1")
    message = trips_pb2.ReserveTripRequest(run_type="a", amount_cents=100)
    fields = {f.number: f for f, _ in message.ListFields()}
    reordered = b"".join(
        trips_pb2.ReserveTripRequest(
            **{fields[n].name: getattr(message, fields[n].name)}
        ).SerializeToString()
        for n in sorted(fields, reverse=True)
    )
    assert reordered != trip_request("a")
    assert trips_pb2.ReserveTripRequest.FromString(reordered) == message
    explicit_default = trip_request("a") + b"\x12\x00"  # an empty `from` written out
    assert trips_pb2.ReserveTripRequest.FromString(explicit_default) == message
    for body in (reordered, explicit_default):
        assert p.invoke(TRIPS, "Reserve", "", body, {}, idempotency_key="k-1") == first
    commit(p)
    for body in (reordered, explicit_default):
        assert p.invoke(TRIPS, "Reserve", "", body, {}, idempotency_key="k-1") == first
    with pytest.raises(IdempotencyConflict):
        p.invoke(TRIPS, "Reserve", "", trip_request("b"), {}, idempotency_key="k-1")


def test_idempotency_digest_survives_recovery_and_old_rows_match_any_request() -> None:
    kv = MemoryKV()
    before = make_partition(kv)
    new = before.invoke(TRIPS, "Reserve", "", trip_request("a"), {}, "k-new")
    old = before.invoke(TRIPS, "Reserve", "", trip_request("a"), {}, "k-old")
    commit(before)
    propose(before, new, output(b"done"))
    commit(before)
    # Rewrite one row as a broker before request digests stored it: the id alone.
    kv.write([(idempotency._key(TRIPS, "Reserve", "", "k-old"), old.encode())])

    after = make_partition(kv)
    after.recover()
    commit(after)
    with pytest.raises(IdempotencyConflict):
        after.invoke(TRIPS, "Reserve", "", trip_request("b"), {}, idempotency_key="k-new")
    same = after.invoke(TRIPS, "Reserve", "", trip_request("a"), {}, "k-new")
    done = after.output(same)
    assert same == new and done is not None and done.value == b"done"
    again = after.invoke(TRIPS, "Reserve", "", trip_request("b"), {}, idempotency_key="k-old")
    assert again == old
    assert after.take() == []


# ---- Recovery


def test_recovery_restarts_what_was_in_flight() -> None:
    kv = MemoryKV()
    p = make_partition(kv)
    ids = {
        "running": p.invoke(TRIPS, "Reserve", "", trip_request("a"), {}),
        "sleeping": p.invoke(TRIPS, "Reserve", "", trip_request("b"), {}),
        "woken": p.invoke(TRIPS, "Reserve", "", trip_request("c"), {}),
        "failing": p.invoke(TRIPS, "Reserve", "", trip_request("d"), {}),
        "done": p.invoke(TRIPS, "Reserve", "", trip_request("e"), {}),
        "holder": p.invoke(FLIGHTS, "Reserve", "t1", reserve_request("t1"), {}),
        "queued1": p.invoke(FLIGHTS, "Reserve", "t1", reserve_request("t1"), {}),
        "queued2": p.invoke(FLIGHTS, "Confirm", "t1", b"", {}),
        "idem": p.invoke(TRIPS, "Reserve", "", trip_request("f"), {}, "idem-1"),
    }
    commit(p)
    for name in ("sleeping", "woken"):
        propose(p, ids[name], sleep())
        assert attempt_event(p, ids[name], Suspended((1,))) is None
    commit(p)
    # Completing the wait resumes "woken"; the new attempt's start is saved too.
    p.on_timer(DUE, ids["woken"], 1)
    assert attempt_event(p, ids["failing"], Failed("boom")) is None
    propose(p, ids["done"], output(b"finished"))
    commit(p)
    assert stored_in(kv, ids["woken"]).status == Status.RUNNING
    assert stored_in(kv, ids["woken"]).attempts == 2
    assert stored_in(kv, ids["failing"]).status == Status.BACKING_OFF

    # A new partition on the same store: what was in flight comes back as actions.
    p = make_partition(kv)
    p.recover()
    found = commit(p)
    restarted = {s.invocation_id for s in of_type(found, actions.StartAttempt)}
    assert restarted == {ids[n] for n in ("running", "woken", "failing", "holder", "idem")}
    assert ids["done"] not in p.live
    assert p.live[ids["sleeping"]].record.status == Status.SUSPENDED
    assert p.live[ids["queued1"]].record.status == Status.PENDING
    assert p.live[ids["queued2"]].record.status == Status.PENDING
    # Timers are re-armed, the journal comes back with the start.
    assert actions.ArmTimer(DUE, ids["sleeping"], 1) in found
    [woken] = started(found, ids["woken"])
    assert woken.start.journal[1].result.HasField("empty")
    assert [s.attempt for s in started(found, ids["failing"])] == [2]
    # The one still waiting leaves memory again.
    assert actions.Evict(ids["sleeping"], p.live[ids["sleeping"]].version) in found
    assert p.live[ids["sleeping"]].evicted
    # Idempotency keys still resolve to the in-flight invocation.
    again = p.invoke(TRIPS, "Reserve", "", trip_request("f"), {}, "idem-1")
    assert again == ids["idem"]

    # The inbox keeps its order, and new arrivals queue behind it.
    late = p.invoke(FLIGHTS, "Cancel", "t1", b"", {})
    assert started(commit(p), late) == []
    propose(p, ids["holder"], output())
    found = commit(p)
    assert len(started(found, ids["queued1"])) == 1
    assert started(found, ids["queued2"]) == []
    propose(p, ids["queued1"], output())
    found = commit(p)
    assert len(started(found, ids["queued2"])) == 1
    assert started(found, late) == []
    propose(p, ids["queued2"], output())
    assert len(started(commit(p), late)) == 1

    # The sleeping one resumes once its timer fires.
    p.on_timer(DUE, ids["sleeping"], 1)
    assert len(started(commit(p), ids["sleeping"])) == 1


def test_recovery_with_a_free_key_starts_the_inbox_head() -> None:
    """A queued invocation whose key holder is gone is started by recovery."""
    kv = MemoryKV()
    p = make_partition(kv)
    holder = p.invoke(FLIGHTS, "Reserve", "t1", reserve_request("t1"), {})
    queued = p.invoke(FLIGHTS, "Reserve", "t1", reserve_request("t1"), {})
    commit(p)
    # Simulate a holder removed from storage (e.g. an operator purge).
    kv.write([(keys.INVOCATIONS + keys.part(holder), None)])

    p = make_partition(kv)
    p.recover()
    assert [s.invocation_id for s in of_type(commit(p), actions.StartAttempt)] == [queued]
    assert list(inbox.scan(kv)) == []


# ---- Retention


def test_purge_expired_removes_completed_invocations() -> None:
    # The partition reads time only through the clock it is given.
    clock = [1_000_000]
    p = Partition(
        MemoryKV(), make_registry(), Settings(data_dir=None, retention=60), now=lambda: clock[0]
    )
    done = p.invoke(TRIPS, "Reserve", "", trip_request(), {}, idempotency_key="k-1")
    running = p.invoke(TRIPS, "Reserve", "", trip_request(), {}, idempotency_key="k-2")
    commit(p)
    propose(p, done, Entry(run=journal_pb2.RunCommand(name="x")))
    propose(p, done, output(b"bye"))
    commit(p)
    assert stored(p, done).status == Status.COMPLETED
    assert len(journal.load(p.kv, done)) == 3
    # Past the retention, without waiting for it.
    assert stored(p, done).expires_at_ms == 1_000_000 + 60_000
    assert p.purge_expired() == 0
    clock[0] = stored(p, done).expires_at_ms + 1

    assert p.purge_expired() == 1
    [batch] = commit_batches(p)
    assert batch.urgent == [] and batch.actions == []  # storage only
    assert invocations.get(p.kv, done) is None
    assert journal.load(p.kv, done) == []
    assert idempotency.get(p.kv, TRIPS, "Reserve", "", "k-1") is None
    assert list(invocations.expired(p.kv, 10**15)) == []
    with pytest.raises(UnknownInvocation):
        p.record(done)
    with pytest.raises(UnknownInvocation):
        p.output(done)
    # The running invocation and its key are untouched.
    assert stored(p, running).status == Status.RUNNING
    assert idempotency.get(p.kv, TRIPS, "Reserve", "", "k-2") == running
    assert len(journal.load(p.kv, running)) == 1
    # The key is free again: a new invocation.
    fresh = p.invoke(TRIPS, "Reserve", "", trip_request(), {}, idempotency_key="k-1")
    assert fresh != done
    assert p.purge_expired() == 0


def test_an_operator_purges_a_completed_invocation_before_its_retention_ends() -> None:
    p = make_partition(retention=3600)
    done = p.invoke(TRIPS, "Reserve", "", trip_request(), {}, idempotency_key="k-1")
    running = p.invoke(TRIPS, "Reserve", "", trip_request(), {}, idempotency_key="k-2")
    commit(p)
    propose(p, done, output(b"bye"))
    commit(p)

    purged = control.purge(p, done)
    commit(p)
    assert purged.id == done and purged.result.value == b"bye"
    assert invocations.get(p.kv, done) is None and journal.load(p.kv, done) == []
    assert idempotency.get(p.kv, TRIPS, "Reserve", "", "k-1") is None
    assert list(invocations.expired(p.kv, 10**15)) == []  # nothing left to expire
    with pytest.raises(UnknownInvocation):
        p.output(done)
    # The key starts a new invocation; twice is an unknown id; a running one refuses.
    assert p.invoke(TRIPS, "Reserve", "", trip_request(), {}, idempotency_key="k-1") != done
    with pytest.raises(UnknownInvocation):
        control.purge(p, done)
    with pytest.raises(control.NotAllowed, match="has not completed"):
        control.purge(p, running)
    assert stored(p, running).status == Status.RUNNING


def test_purge_keeps_invocations_within_retention() -> None:
    p = make_partition(retention=3600)
    done = start_trip(p)
    propose(p, done, output())
    commit(p)
    assert p.purge_expired() == 0
    assert p.take() == []
    assert stored(p, done).status == Status.COMPLETED


def test_record_listed_and_live_record() -> None:
    p = make_partition()
    done = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
    live_id = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
    commit(p)
    propose(p, done, output())
    propose(p, live_id, Entry(run=journal_pb2.RunCommand(name="r")))
    commit(p)
    record, entries = p.record(live_id)
    assert record.journal_length == 2 and len(entries) == 2
    record, entries = p.record(done)
    assert record.status == Status.COMPLETED and len(entries) == 2
    # What the admin listings read: the live ones (a completed one's record is in the
    # table, read by `record`).
    assert [live.id for live in p.listed()] == [live_id]
    listed = p.live_record(live_id)
    assert listed is not None and listed.journal_length == 2
    assert p.live_record(done) is None
    with pytest.raises(UnknownInvocation):
        p.record("inv_missing")


# ---- What the pure shape shows: which batch carries what, and when


def test_a_completion_resumes_its_suspended_invocation_in_the_batch_that_writes_it() -> None:
    p = make_partition()
    inv_id = start_trip(p)
    propose(p, inv_id, sleep())
    commit(p)
    assert attempt_event(p, inv_id, Suspended((1,))) is None
    commit(p)

    p.on_timer(DUE, inv_id, 1)
    [batch] = p.take()
    completed = Entry()
    completed.CopyFrom(p.live[inv_id].journal[1])
    assert completed.result.HasField("empty")
    expected = Batch()
    journal.put(expected, inv_id, 1, completed)
    timer_table.delete(expected, DUE, inv_id, 1)
    written = dict(batch.puts)
    assert all(written[k] == v for k, v in expected.puts)
    # The start goes out with the write (the invoker waits for it to be durable) rather
    # than in a second batch after it: one commit round per resumption.
    [resumed] = of_type(batch.urgent, actions.StartAttempt)
    assert (resumed.invocation_id, resumed.attempt) == (inv_id, 2)
    assert resumed.start.journal[1] == completed
    assert completions(batch.actions, inv_id) == []


def test_a_completion_reaches_a_running_attempt_only_once_durable() -> None:
    p = make_partition()
    inv_id = start_trip(p)
    propose(p, inv_id, Entry(run=journal_pb2.RunCommand(name="pay")))
    commit(p)
    assert p.on_attempt(inv_id, 1, RanResult(1, Result(value=b"paid"))) is None
    [batch] = p.take()
    assert batch.urgent == []
    assert batch.actions == [actions.SendCompletion(inv_id, 1, 1, Result(value=b"paid"))]
    assert not journal.load(p.kv, inv_id)[1].HasField("result")
    apply(p, batch)
    assert journal.load(p.kv, inv_id)[1].result.value == b"paid"
    # A second delivery of the same result changes nothing and sends nothing.
    assert p.on_attempt(inv_id, 1, RanResult(1, Result(value=b"other"))) is None
    assert all(not (b.puts or b.urgent or b.actions) for b in p.take())
    assert journal.load(p.kv, inv_id)[1].result.value == b"paid"


def test_events_of_an_attempt_that_was_replaced_emit_nothing() -> None:
    p = make_partition()
    inv_id = start_trip(p)
    assert p.on_attempt(inv_id, 1, Failed("boom")) is None
    commit(p)
    # No attempt runs while backing off: attempt 1 is stale already.
    assert p.on_attempt(inv_id, 1, Proposed(1, output())) is None
    assert p.take() == []
    p.on_retry_due(inv_id)
    commit(p)
    for event in (
        Proposed(1, output()),
        RanResult(1, Result(value=b"x")),
        Suspended((1,)),
        Ended(),
        Failed("late"),
    ):
        assert p.on_attempt(inv_id, 1, event) is None
    assert p.take() == []
    live = p.live[inv_id]
    assert (live.attempt, live.record.status, len(live.journal)) == (2, Status.RUNNING, 1)


def test_kill_abandons_the_attempt_at_once_and_kills_the_calls_it_waits_on() -> None:
    p = make_partition()
    parent_id, child_id = trip_calling_a_flight(p)

    control.kill(p, parent_id)
    [batch] = p.take()
    # Abandoning is urgent: the stream is cancelled before the kill is even durable.
    abandoned = of_type(batch.urgent, actions.AbandonAttempt)
    assert len(abandoned) == len(batch.urgent)
    assert {(a.invocation_id, a.attempt) for a in abandoned} == {(parent_id, 1), (child_id, 1)}
    apply(p, batch)
    for inv_id in (parent_id, child_id):
        [answer] = answers(batch.actions, inv_id)
        assert answer.failure.code == codes.ABORTED
        assert stored(p, inv_id).status == Status.COMPLETED
    assert p.live == {}
    assert p.lock_holder(FLIGHTS, "t1") is None
    # The killed attempts' late events change nothing.
    assert p.on_attempt(parent_id, 1, Failed("stream cancelled")) is None
    assert p.take() == []


def test_cancel_completes_what_the_handler_awaits_and_cancels_its_calls() -> None:
    p = make_partition()
    parent_id, child_id = trip_calling_a_flight(p)

    control.cancel(p, parent_id)
    found = commit(p)
    # The parent runs on, to compensate: it hears the cancellation as its call's result.
    [completion] = completions(found, parent_id)
    assert (completion.index, completion.result.failure.code) == (1, codes.CANCELLED)
    assert answers(found, parent_id) == []
    assert of_type(found, actions.AbandonAttempt) == []
    assert p.live[parent_id].record.status == Status.RUNNING
    # The child waits on nothing: it hears it at its next await.
    assert p.live[child_id].record.cancel_pending
    propose(p, child_id, sleep())
    assert p.live[child_id].journal[1].result.failure.code == codes.CANCELLED


def test_a_second_cancel_leaves_the_compensations_alone() -> None:
    # An attack cancelled a saga twice: the second cancel failed the compensation call
    # the first had led to (and cancelled its callee), so that compensation never ran.
    p = make_partition()
    parent_id, child_id = trip_calling_a_flight(p)
    control.cancel(p, parent_id)
    commit(p)
    propose(p, parent_id, call_flight("t1", "Cancel"))  # the compensation
    commit(p)
    compensation_id = p.live[parent_id].journal[2].call.invocation_id

    for _ in range(2):
        assert control.cancel(p, parent_id).cancelled
        assert commit(p) == []
    assert not p.live[parent_id].journal[2].HasField("result")
    assert not p.live[compensation_id].record.cancel_pending
    assert not p.live[parent_id].record.cancel_pending
    # Its callee was cancelled with it, once: cancelling it again changes nothing either.
    assert p.live[child_id].record.cancelled and p.live[child_id].record.cancel_pending
    control.cancel(p, child_id)
    assert commit(p) == []


def test_pause_then_resume_goes_on_where_it_stopped() -> None:
    p = make_partition()
    inv_id = start_trip(p)
    propose(p, inv_id, Entry(run=journal_pb2.RunCommand(name="pay")))
    assert p.on_attempt(inv_id, 1, RanResult(1, Result(value=b"paid"))) is None
    commit(p)

    control.pause(p, inv_id)
    [batch] = p.take()
    assert batch.urgent == [
        actions.CancelRetry(inv_id),
        actions.AbandonAttempt(inv_id, 1, "paused"),
    ]
    apply(p, batch)
    assert stored(p, inv_id).status == Status.PAUSED
    # Nothing wakes a paused invocation but an operator: not its old attempt, not a retry.
    assert p.on_attempt(inv_id, 1, Failed("stream cancelled")) is None
    p.on_retry_due(inv_id)
    assert p.take() == []
    control.pause(p, inv_id)  # pausing again is a no-op
    assert p.take() == []

    control.resume(p, inv_id)
    [batch] = p.take()
    [cancel, resumed] = batch.urgent
    assert cancel == actions.CancelRetry(inv_id)
    assert isinstance(resumed, actions.StartAttempt) and resumed.attempt == 2
    assert resumed.start.journal[1].result.value == b"paid"
    apply(p, batch)
    assert stored(p, inv_id).status == Status.RUNNING
    with pytest.raises(control.NotAllowed, match="only paused or backing-off"):
        control.resume(p, inv_id)


def test_pausing_a_pending_invocation_is_refused() -> None:
    p = make_partition()
    start(p, FLIGHTS, "Reserve", "t1", reserve_request("t1"))
    queued = p.invoke(FLIGHTS, "Reserve", "t1", reserve_request("t1"), {})
    commit(p)
    with pytest.raises(control.NotAllowed, match="has not started"):
        control.pause(p, queued)
    assert p.take() == []


@pytest.mark.parametrize("operation", ["cancel", "kill", "pause", "resume"])
def test_an_invocation_whose_output_is_queued_counts_as_completed(operation: str) -> None:
    """Until its completion is durable a completed invocation is still in `p.live`:
    an operator's action then must not overwrite the result its callers get (kill) or
    store it as paused (which recovery would take back as in flight)."""
    p = make_partition()
    inv_id = start_trip(p)
    propose(p, inv_id, output(b"ok"))
    with pytest.raises(control.NotAllowed, match="already completed"):
        getattr(control, operation)(p, inv_id)
    found = commit(p)
    assert [r.value for r in answers(found, inv_id)] == [b"ok"]
    record = stored(p, inv_id)
    assert (record.status, record.result.value) == (Status.COMPLETED, b"ok")
    # Once it is durable, the same answer.
    with pytest.raises(control.NotAllowed, match="already completed"):
        getattr(control, operation)(p, inv_id)
    # And a restart finds nothing in flight.
    q = make_partition(p.kv)
    q.recover()
    assert q.live == {}


def test_an_awakeable_of_an_invocation_whose_output_is_queued_is_refused() -> None:
    p = make_partition()
    inv_id = start_trip(p)
    propose(p, inv_id, Entry(awakeable=journal_pb2.AwakeableCommand()))
    commit(p)
    awakeable_id = p.live[inv_id].journal[1].awakeable.awakeable_id
    propose(p, inv_id, output(b"ok"))  # the handler returned without awaiting it
    problem = control.complete_awakeable(p, awakeable_id, Result(value=b"late"))
    assert problem is not None and "its invocation ended" in problem
    found = commit(p)
    assert completions(found, inv_id) == []
    assert not journal.load(p.kv, inv_id)[1].HasField("result")
    # The same answer once the completion is durable.
    problem = control.complete_awakeable(p, awakeable_id, Result(value=b"late"))
    assert problem is not None and "its invocation ended" in problem


def test_recovery_is_one_batch_of_timers_and_attempts() -> None:
    kv = MemoryKV()
    p = make_partition(kv)
    sleeping = start_trip(p, "a")
    running = start_trip(p, "b")
    propose(p, sleeping, sleep())
    assert attempt_event(p, sleeping, Suspended((1,))) is None
    commit(p)

    p = make_partition(kv)
    p.recover()
    [batch] = p.take()
    [resumed] = of_type(batch.urgent, actions.StartAttempt)
    assert (resumed.invocation_id, resumed.attempt) == (running, 2)
    assert actions.ArmTimer(DUE, sleeping, 1) in batch.actions
    assert of_type(batch.urgent, actions.ArmTimer) == []  # armed once storage agrees


def test_a_follower_applying_the_same_batches_holds_the_same_store() -> None:
    """A replica applies every batch's writes and drops the actions: the batches alone
    carry the state, nothing the partition does on the side."""
    leader = make_partition()
    follower = MemoryKV()

    def replicate() -> list[Action]:
        batches = commit_batches(leader)
        for batch in batches:
            follower.write(batch.puts)
        return actions_of(batches)

    parent = leader.invoke(TRIPS, "Reserve", "", trip_request(), {}, idempotency_key="k")
    holder = leader.invoke(FLIGHTS, "Reserve", "t9", reserve_request("t9"), {})
    waiter = leader.invoke(FLIGHTS, "Confirm", "t9", b"", {})
    replicate()
    propose(leader, parent, call_flight("t1"))
    propose(leader, parent, sleep())
    propose(leader, parent, Entry(awakeable=journal_pb2.AwakeableCommand()))
    replicate()
    awakeable_id = leader.live[parent].journal[3].awakeable.awakeable_id
    assert attempt_event(leader, parent, Suspended((1, 2, 3))) is None
    propose(leader, holder, Entry(set_state=journal_pb2.SetStateCommand(key="s", value=b"v")))
    propose(leader, holder, output())
    assert attempt_event(leader, waiter, Failed("boom")) is None
    replicate()
    leader.on_retry_due(waiter)
    leader.on_timer(DUE, parent, 2)
    assert control.complete_awakeable(leader, awakeable_id, Result(value=b"a")) is None
    control.kill(leader, parent)
    replicate()

    assert list(follower.scan(b"")) == list(leader.kv.scan(b""))
    assert stored_in(follower, parent).result.failure.code == codes.ABORTED
    assert state.load(follower, FLIGHTS, "t9") == {"s": b"v"}


def test_an_attempt_can_ask_to_pause_or_to_be_retried_later() -> None:
    p = make_partition()
    paused = start_trip(p, "a")
    assert p.on_attempt(paused, 1, Failed("needs a fix", pause=True)) is None
    assert commit(p) == []  # parked: no retry is scheduled
    assert stored(p, paused).status == Status.PAUSED
    assert stored(p, paused).last_error == "needs a fix"

    later = start_trip(p, "b")
    assert p.on_attempt(later, 1, Failed("busy", retry_after=2.5)) is None
    assert commit(p) == [actions.ScheduleRetry(later, 2.5)]


def test_cancel_and_kill_reach_a_suspended_invocation() -> None:
    p = make_partition()
    cancelled = start_trip(p, "a")
    killed = start_trip(p, "b")
    for inv_id in (cancelled, killed):
        propose(p, inv_id, sleep())
        assert attempt_event(p, inv_id, Suspended((1,))) is None
    commit(p)
    assert p.live[killed].evicted

    # Cancelling completes the sleep it waits on, which resumes it in the same batch.
    control.cancel(p, cancelled)
    [batch] = p.take()
    [resumed] = of_type(batch.urgent, actions.StartAttempt)
    assert resumed.attempt == 2
    assert resumed.start.journal[1].result.failure.code == codes.CANCELLED
    apply(p, batch)
    # Killing one with no attempt abandons nothing; its journal is read back to find
    # the calls it waits on.
    control.kill(p, killed)
    [batch] = p.take()
    assert batch.urgent == []
    apply(p, batch)
    [answer] = answers(batch.actions, killed)
    assert answer.failure.code == codes.ABORTED
    # Their timers still fire, and change nothing but their own row.
    for inv_id in (cancelled, killed):
        p.on_timer(DUE, inv_id, 1)
    assert commit(p) == []
    assert list(timer_table.scan(p.kv)) == []
    assert p.live[cancelled].journal[1].result.failure.code == codes.CANCELLED


def test_only_a_new_invocation_starts_before_its_invocation_is_durable() -> None:
    p = make_partition()
    trip = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
    [first] = started(commit(p), trip)
    # Its journal is only the input and it has no state: the start overlaps the fsync.
    assert first.early
    flight = p.invoke(FLIGHTS, "Reserve", "trip-1", reserve_request("trip-1"), {})
    [keyed] = started(commit(p), flight)
    # Its key was free and its batch writes none of the state: the state it reads is in
    # earlier batches, so it too overlaps its own batch's fsync.
    assert keyed.early
    propose(p, flight, Entry(set_state=journal_pb2.SetStateCommand(key="seat", value=b"1")))
    queued = p.invoke(FLIGHTS, "Reserve", "trip-1", reserve_request("trip-1"), {})
    assert started(commit(p), queued) == []
    propose(p, flight, output())
    [handed] = started(commit(p), queued)
    # Handed the key by the previous holder, in the batch that ends it: it waits for that
    # batch, which may carry the holder's last writes.
    assert not handed.early
    attempt_event(p, trip, Failed("boom", 0.0, False, False))
    retried = [a for a in of_type(commit(p), actions.ScheduleRetry) if a.invocation_id == trip]
    assert retried
    p.on_retry_due(trip)
    [second] = started(commit(p), trip)
    # A retry may carry steps the first attempt journaled: it waits for them.
    assert second.attempt == 2 and not second.early


def test_the_status_names_cover_every_invocation_status() -> None:
    """`model.Status` copies the enum's values into plain attributes: a status added to
    the proto must be added there too, with the same number."""
    for name, number in Status.items():
        if number:
            assert getattr(PlainStatus, name) == number, name
            assert PlainStatus.Name(number) == name
