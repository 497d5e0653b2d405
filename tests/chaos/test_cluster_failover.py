"""A cluster of three broker nodes on three NATS servers, attacked while sagas run.

Each saga is called with an idempotency key; afterwards every one must have ended
exactly once, its bookings made once and consistent, its compensations run once when it
failed (`test_workers_crash`'s checks). The attacks: SIGKILL a node leading partitions
(callers of the other nodes see no error); SIGKILL a NATS server (a minority: once it is
back, no caller sees an error); SIGSTOP a leader past its lease and let it run again (it
must be fenced, not write twice); and wipe a node's data dir, let it rebuild from the
latest snapshot and the log's tail (the logs are trimmed below snapshots all along), then
leave it alone to serve.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from flights import flights_pb2
from trips import trips_pb2

from broker.cluster import placement
from tests import support
from tests.chaos.test_workers_crash import assert_consistent, book
from tests.cluster_nodes import PARTITIONS, NodesCluster

# Snapshots every 40 log entries: the logs are trimmed while the tests run.
SNAPSHOT_ENTRIES = 40
BROKER_ARGS = [
    *("--retry-initial", "100ms", "--retry-max", "500ms"),
    *("--snapshot-entries", str(SNAPSHOT_ENTRIES)),
]
# A bound on the sagas booked to fill two partitions' logs (six usually do).
MAX_SAGAS_TO_TRIM = 40
SAGAS = 12
# A liveness bound, not a speed target (`make bench-cluster` measures failover).
BACK_WITHIN_S = 30.0


@pytest.fixture(name="nodes")
def snapshotting_nodes(tmp_path: Path) -> Iterator[NodesCluster]:
    """Three nodes that snapshot every SNAPSHOT_ENTRIES log entries (the `nodes` of this
    module and of test_cluster_log_attack)."""
    cluster = NodesCluster(tmp_path, nodes=3, suspend_after="0", broker_args=BROKER_ARGS)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


def sagas(cluster: NodesCluster, attack: Callable[[], None], strict: bool = False) -> None:
    """Runs SAGAS sagas, attacks once a few are in flight, checks every outcome.

    With `strict`, any error a caller sees fails the test (instead of being retried).
    """
    keys = [(f"s-{i}-{uuid.uuid4()}", "" if i % 3 else "failPayment") for i in range(SAGAS)]

    def call(key: str, run_type: str) -> tuple[str, str]:
        if not strict:
            return book(cluster, key, run_type)
        request = trips_pb2.ReserveTripRequest(run_type=run_type, to="Rome", amount_cents=50)
        try:
            response = cluster.trips.Reserve(
                request, metadata=(("idempotency-key", key),), timeout=60
            )
            return response.status, support.trip_id_of(response)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return "failed", support.trip_id_from_error(e.details() or "")
            raise

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        futures = {pool.submit(call, key, run_type): (key, run_type) for key, run_type in keys}
        cluster.wait_for(
            lambda: len(cluster.invocations(service="trips.Trips")) >= 4,
            message="sagas to start",
        )
        attack()
        outcomes = {futures[f]: f.result() for f in concurrent.futures.as_completed(futures)}
    check(cluster, outcomes)


def check(cluster: NodesCluster, outcomes: dict[tuple[str, str], tuple[str, str]]) -> None:
    """Every saga ended once, as its run type says, with consistent bookings.

    Read once every partition is back on the node it prefers: a node that came back
    after an attack gets its partitions handed back, and a read caught in a handover
    fails (UNAVAILABLE) rather than tells anything about what the sagas did.
    """
    cluster.wait_led(time.monotonic() + BACK_WITHIN_S)
    for (key, run_type), (status, trip_id) in outcomes.items():
        assert status == ("success" if run_type == "" else "failed"), (key, status)
        runs = [i for i in cluster.invocations(service="trips.Trips") if i.idempotency_key == key]
        assert len(runs) == 1, (key, runs)
        assert_consistent(cluster, trip_id, run_type)


def key_on(partition: int) -> str:
    """A trip id whose bookings live in `partition`."""
    for i in range(10_000):
        key = f"probe-{i}"
        if placement.of_key(key, PARTITIONS) == partition:
            return key
    raise AssertionError(f"no key lands on partition {partition}")


def answered(cluster: NodesCluster, partition: int) -> bool:
    """Whether a call to a key of `partition` succeeds now."""
    try:
        cluster.flights.Get(flights_pb2.TripRef(trip_id=key_on(partition)), timeout=5)
    except grpc.RpcError:
        return False
    return True


def test_sagas_survive_killing_a_leader(nodes: NodesCluster) -> None:
    leaders = nodes.leaders()
    victim = leaders[0]
    lost = [p for p, node in leaders.items() if node == victim]
    survivors = [i for i in range(3) if i != victim]
    # Callers reach the victim's partitions through the other nodes, which follow each
    # acknowledged saga to the partition's next leader: none of them sees an error.
    nodes.use_nodes(survivors)

    def kill() -> None:
        nodes.nodes[victim].kill()
        killed = time.monotonic()
        support.wait_for(
            lambda: all(answered(nodes, p) for p in lost), BACK_WITHIN_S, message="partitions back"
        )
        print(f"partitions {lost} answered again {time.monotonic() - killed:.1f} s after the kill")

    sagas(nodes, kill, strict=True)
    assert all(node != victim for node in nodes.leaders().values())
    nodes.start_broker()  # the killed node rejoins; the checks run once more through all
    nodes.use_nodes([0, 1, 2])
    assert len(nodes.invocations(service="trips.Trips")) == SAGAS


def test_calls_without_idempotency_keys_reach_the_next_leader(nodes: NodesCluster) -> None:
    # Reads of keys in the victim's partitions, through the other nodes, before, during
    # and after a SIGKILL of their leader. A call that reached nobody (the dead leader's
    # port refused it) follows the partition to its next leader; only a call cut while
    # in flight may fail, as no one can tell whether it ran: at most one per caller.
    leaders = nodes.leaders()
    victim = leaders[0]
    lost = [p for p, node in leaders.items() if node == victim]
    nodes.use_nodes([i for i in range(3) if i != victim])
    stop = threading.Event()
    answered: list[float] = []
    errors: list[grpc.RpcError] = []

    def read(key: str) -> None:
        while not stop.is_set():
            try:
                nodes.flights.Get(flights_pb2.TripRef(trip_id=key), timeout=30)
                answered.append(time.monotonic())
            except grpc.RpcError as e:
                errors.append(e)

    callers = [threading.Thread(target=read, args=(key_on(p),)) for p in lost for _ in range(2)]
    for caller in callers:
        caller.start()
    try:
        support.wait_for(lambda: len(answered) >= 10, BACK_WITHIN_S, message="reads before")
        nodes.nodes[victim].kill()
        killed = time.monotonic()
        support.wait_for(
            lambda: sum(t > killed for t in answered) >= 20 * len(lost),
            BACK_WITHIN_S,
            message="reads answered after the kill",
        )
    finally:
        stop.set()
        for caller in callers:
            caller.join(timeout=60)
    details = [f"{e.code()}: {e.details()}" for e in errors]
    assert not [d for d in details if "failed to connect" in d], details
    assert len(errors) <= len(callers), details


def test_a_nats_minority_dies_and_nothing_is_lost(nodes: NodesCluster) -> None:
    # While JetStream elects new stream leaders (seconds on nats-server 2.9, tens of
    # seconds on a loaded machine) appends wait and leases may lapse and change hands.
    # A caller waits through it up to its deadline and sees no error, during the outage
    # and after the server is back.
    sagas(nodes, lambda: nodes.nats.kill(0), strict=True)
    nodes.nats.restart(0)
    nodes.nats.wait_ready(support.STARTUP_TIMEOUT_S)
    sagas(nodes, lambda: None, strict=True)


def test_a_paused_leader_is_fenced_and_steps_down(nodes: NodesCluster) -> None:
    victim = nodes.leaders()[0]
    pid = nodes.nodes[victim].pid
    assert pid is not None
    survivors = [i for i in range(3) if i != victim]

    def pause() -> None:
        os.kill(pid, signal.SIGSTOP)
        try:
            nodes.use_nodes(survivors)
            # Past its lease: another node leads partition 0 before this one wakes.
            support.wait_for(
                lambda: nodes.leaders().get(0) not in (None, victim),
                BACK_WITHIN_S,
                message="partition 0 led by another node",
            )
        finally:
            os.kill(pid, signal.SIGCONT)

    sagas(nodes, pause)
    support.wait_for(
        lambda: (
            "steps down" in nodes.nodes[victim].log_path.read_text()
            or "lease was taken over" in nodes.nodes[victim].log_path.read_text()
        ),
        BACK_WITHIN_S,
        message="the paused leader to step down",
    )
    nodes.nodes[victim].check_alive()
    nodes.use_nodes([0, 1, 2])
    sagas(nodes, lambda: None)


def book_saga(
    cluster: NodesCluster, done: dict[tuple[str, str], tuple[str, str]], name: str, i: int
) -> None:
    """Books saga `i` (every other one failing its payment) into `done`."""
    key, run_type = f"{name}-{i}-{uuid.uuid4()}", "" if i % 2 else "failPayment"
    done[(key, run_type)] = book(cluster, key, run_type)


def book_until_trimmed(cluster: NodesCluster, done: dict[tuple[str, str], tuple[str, str]]) -> None:
    """Books sagas (into `done`) until two partitions' logs are trimmed below a snapshot:
    a saga's bookings land on the partition of its trip id, a random one."""
    for i in range(MAX_SAGAS_TO_TRIM):
        book_saga(cluster, done, "w", i)
        statuses = cluster.status().partitions
        if i >= 5 and sum(p.log_last > SNAPSHOT_ENTRIES for p in statuses) >= 2:
            break
    support.wait_for(
        lambda: sum(p.log_first > 1 for p in cluster.status().partitions) >= 2,
        BACK_WITHIN_S,
        message="logs trimmed below a snapshot",
    )


def test_a_wiped_node_rebuilds_from_a_snapshot_and_serves_alone(nodes: NodesCluster) -> None:
    done: dict[tuple[str, str], tuple[str, str]] = {}
    book_until_trimmed(nodes, done)
    wiped = 2
    nodes.nodes[wiped].kill()
    shutil.rmtree(nodes.tmp / f"node{wiped + 1}")
    # The wiped node holds nothing: each of these logs misses entries it needs.
    trimmed = [p.id for p in nodes.status().partitions if p.log_first > 1]
    nodes.start_node(wiped)
    # Waited for in its log first: for a second after the restart the other nodes still
    # show its last heartbeat from before the wipe, which reads as caught up.
    support.wait_for(
        lambda: all(
            f"partition {p}: restored the snapshot" in nodes.nodes[wiped].log_path.read_text()
            for p in trimmed
        ),
        BACK_WITHIN_S,
        message="the wiped node to restore the snapshots",
    )

    def caught_up() -> bool:
        status = nodes.status()
        return all(
            any(f.node == f"node{wiped + 1}" and f.applied >= p.applied for f in p.followers)
            or p.owner == f"node{wiped + 1}"
            for p in status.partitions
        )

    support.wait_for(caught_up, BACK_WITHIN_S, message="the wiped node to catch up")
    for other in range(3):
        if other != wiped:
            nodes.nodes[other].kill()
    nodes.use_nodes([wiped])
    support.wait_for(
        lambda: all(answered(nodes, p) for p in range(PARTITIONS)),
        BACK_WITHIN_S,
        message="the wiped node to serve every partition",
    )
    check(nodes, done)
