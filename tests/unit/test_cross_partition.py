"""Two partitions exchanging outbox messages, without processes or a loop.

Each partition is fed events as in test_partition; `Cluster.ship` plays the shipper and
the receiving driver: it takes what the sender's durable batches asked to ship, applies
it at the destination, makes that durable, and acknowledges it to the sender. Crashes
are a new `Partition` on the same store, recovered.
"""

from __future__ import annotations

from collections.abc import Iterable

from durable.v1 import cluster_pb2, journal_pb2
from durable.wire import awakeable_id

from broker import codes
from broker.cluster.placement import Placement, of_id, of_key
from broker.config import Settings
from broker.core import actions, control
from broker.core.events import Proposed
from broker.core.partition import Partition
from broker.storage import Batch, MemoryKV, invocations, journal
from broker.storage.kv import KV
from tests.unit.test_partition import (
    FLIGHTS,
    TRIPS,
    Action,
    Entry,
    Result,
    Status,
    actions_of,
    call_flight,
    carry_out,
    completions,
    make_registry,
    output,
    started,
    trip_request,
)

COUNT = 2


def key_in(partition: int) -> str:
    """A flights key that lives in `partition`."""
    return next(k for k in (f"trip-{i}" for i in range(1000)) if of_key(k, COUNT) == partition)


class Cluster:
    """Partitions 0 and 1 over in-memory stores that survive a 'crash'."""

    def __init__(self) -> None:
        self.kvs: list[KV] = [MemoryKV(), MemoryKV()]
        self.parts = [self._new(0), self._new(1)]
        self.ships: dict[tuple[int, int], int] = {}

    def _new(self, me: int) -> Partition:
        return Partition(
            self.kvs[me],
            make_registry(),
            Settings(data_dir=None),
            placement=Placement(me, COUNT),
        )

    def commit(self, me: int) -> list[Action]:
        """Makes partition `me`'s batches durable; remembers what they ask to ship."""
        p = self.parts[me]
        done: list[Batch] = []
        while batches := p.take():
            for batch in batches:
                carry_out(p, batch.urgent)
                p.kv.write(batch.puts)
                self._carry_out(me, batch.actions)
                done.append(batch)
        return actions_of(done)

    def _carry_out(self, me: int, found: Iterable[object]) -> None:
        rest = []
        for action in found:
            if isinstance(action, actions.Ship):
                key = (me, action.destination)
                self.ships[key] = max(self.ships.get(key, 0), action.seq)
            else:
                rest.append(action)
        carry_out(self.parts[me], rest)

    def envelopes(self, source: int, destination: int) -> list[cluster_pb2.Envelope]:
        upto = self.ships.get((source, destination), 0)
        return [
            cluster_pb2.Envelope(seq=seq, message=m)
            for seq, m in self.parts[source].outbox.pending.get(destination, ())
            if seq <= upto
        ]

    def ship(self, source: int, destination: int) -> list[Action]:
        """Delivers, commits at the destination, acknowledges; returns the destination's
        actions."""
        sent = self.envelopes(source, destination)
        mark = self.parts[destination].on_delivery(source, sent)
        found = self.commit(destination)
        self.parts[source].outbox_acknowledged(destination, mark)
        self.commit(source)
        return found

    def crash(self, me: int) -> list[Action]:
        """Loses partition `me`'s memory; recovers it from its store."""
        self.parts[me] = self._new(me)
        self.parts[me].recover()
        return self.commit(me)

    def start_trip(self, me: int) -> str:
        p = self.parts[me]
        invocation_id = p.invoke(TRIPS, "Reserve", "", trip_request(), {})
        assert started(self.commit(me), invocation_id)
        return invocation_id

    def propose(self, me: int, invocation_id: str, entry: Entry) -> int:
        live = self.parts[me].live[invocation_id]
        index = len(live.journal)
        assert (
            self.parts[me].on_attempt(invocation_id, live.attempt, Proposed(index, entry)) is None
        )
        return index


def test_ids_name_their_partition() -> None:
    c = Cluster()
    for me in (0, 1):
        for _ in range(20):
            assert of_id(c.parts[me].placement.new_id(), COUNT) == me


def test_call_to_another_partition_goes_through_the_outbox_and_answers_back() -> None:
    c = Cluster()
    parent = c.start_trip(0)
    assert of_id(parent, COUNT) == 0
    trip = key_in(1)
    index = c.propose(0, parent, call_flight(trip))
    child = c.parts[0].live[parent].journal[index].call.invocation_id
    assert of_id(child, COUNT) == 1
    assert child not in c.parts[0].live  # started over there, not here
    c.commit(0)
    # Durable: the call entry and the message travel in one batch.
    assert journal.load(c.kvs[0], parent)[index].call.invocation_id == child
    assert [s for s, _ in c.parts[0].outbox.pending[1]] == [1]

    found = c.ship(0, 1)
    assert started(found, child)
    record = c.parts[1].live[child].record
    assert (record.service, record.key) == (FLIGHTS, trip)
    assert (record.caller.invocation_id, record.caller.entry_index) == (parent, index)
    assert not c.parts[0].outbox.pending[1]  # acknowledged, dropped

    c.propose(1, child, output(b"booked"))
    c.commit(1)
    assert invocations.get(c.kvs[1], child).status == Status.COMPLETED  # type: ignore[union-attr]
    assert c.parts[0].live[parent].journal[index].HasField("result") is False
    back = c.ship(1, 0)
    [completion] = completions(back, parent)
    assert completion.result.value == b"booked"
    assert journal.load(c.kvs[0], parent)[index].result.value == b"booked"


def test_a_message_delivered_twice_applies_once() -> None:
    c = Cluster()
    parent = c.start_trip(0)
    c.propose(0, parent, call_flight(key_in(1)))
    c.commit(0)
    sent = c.envelopes(0, 1)
    assert c.parts[1].on_delivery(0, sent) == 1
    c.commit(1)
    children = list(c.parts[1].live)
    # The sender never heard back (it crashed): it sends the same message again.
    c.crash(0)
    again = c.envelopes(0, 1)
    assert [e.seq for e in again] == [1]
    c.crash(1)  # the receiver restarted in between, too: its mark is durable
    assert c.parts[1].on_delivery(0, again) == 1
    c.commit(1)
    assert list(c.parts[1].live) == children


def test_unacknowledged_messages_ship_again_after_a_crash() -> None:
    c = Cluster()
    parent = c.start_trip(0)
    c.propose(0, parent, call_flight(key_in(1)))
    c.commit(0)
    c.ships.clear()
    c.crash(0)
    assert c.ships[(0, 1)] == 1  # recovery asks to ship what is still pending
    assert started(c.ship(0, 1), c.parts[0].live[parent].journal[1].call.invocation_id)


def test_cancel_reaches_a_child_in_another_partition() -> None:
    c = Cluster()
    parent = c.start_trip(0)
    c.propose(0, parent, call_flight(key_in(1)))
    c.commit(0)
    c.ship(0, 1)
    [child] = list(c.parts[1].live)
    control.cancel(c.parts[0], parent)
    c.commit(0)
    c.ship(0, 1)
    entry = c.parts[1].live[child].journal
    assert c.parts[1].live[child].record.cancel_pending or any(
        e.HasField("result") and e.result.failure.code == codes.CANCELLED for e in entry
    )


def test_kill_reaches_a_child_in_another_partition() -> None:
    c = Cluster()
    parent = c.start_trip(0)
    c.propose(0, parent, call_flight(key_in(1)))
    c.commit(0)
    c.ship(0, 1)
    [child] = list(c.parts[1].live)
    control.kill(c.parts[0], parent)
    c.commit(0)
    c.ship(0, 1)
    record = invocations.get(c.kvs[1], child)
    assert record is not None and record.status == Status.COMPLETED
    assert record.result.failure.code == codes.ABORTED


def test_awakeable_of_another_partition_is_completed_there() -> None:
    c = Cluster()
    waiter = c.start_trip(0)
    index = c.propose(0, waiter, Entry(awakeable=journal_pb2.AwakeableCommand()))
    c.commit(0)
    awk = awakeable_id(waiter, index)
    resolver = c.start_trip(1)
    done = Result(value=b"ok")
    c.propose(
        1,
        resolver,
        Entry(
            complete_awakeable=journal_pb2.CompleteAwakeableCommand(
                awakeable_id=awk, completion=done
            )
        ),
    )
    c.commit(1)
    [completion] = completions(c.ship(1, 0), waiter)
    assert completion.result.value == b"ok"


def test_attach_across_partitions_survives_the_targets_restart() -> None:
    c = Cluster()
    parent = c.start_trip(0)
    c.propose(0, parent, call_flight(key_in(1)))
    c.commit(0)
    c.ship(0, 1)
    [target] = list(c.parts[1].live)
    watcher = c.start_trip(0)
    index = c.propose(0, watcher, Entry(attach=journal_pb2.AttachCommand(invocation_id=target)))
    c.commit(0)
    c.ship(0, 1)
    c.crash(1)  # the remote waiter is remembered in partition 1's store
    c.propose(1, target, output(b"seen"))
    c.commit(1)
    c.ship(1, 0)
    assert journal.load(c.kvs[0], watcher)[index].result.value == b"seen"
    assert journal.load(c.kvs[0], parent)[1].result.value == b"seen"
