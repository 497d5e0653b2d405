"""Sagas under load over `--workers 2` while one worker, or the whole broker, is
SIGKILLed: each saga (called by idempotency key until it answers) ends exactly once,
its bookings made once and consistent, its compensations run once when it failed.

The trips handler is plain (it lives where the call landed) and its bookings are keyed
by the trip id (they live wherever that key hashes): most sagas cross partitions, and
with two workers, processes.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
import uuid

import grpc
import pytest
from cars import cars_pb2
from flights import flights_pb2
from payments import payments_pb2
from trips import trips_pb2

from tests.chaos.runner_cluster import worker_pids
from tests.support import Cluster, MakeCluster, Status, TestTimeout, trip_id_from_error, trip_id_of

BROKER_ARGS = ["--workers", "2", "--retry-initial", "100ms", "--retry-max", "500ms"]
SAGAS = 24
DEADLINE_S = 120.0
# run_type -> the (flight, car, payment) states it must end in.
OUTCOMES = {
    "": ("confirmed", "confirmed", "processed"),
    "failPayment": ("cancelled", "cancelled", "refunded"),
}


def book(cluster: Cluster, key: str, run_type: str) -> tuple[str, str]:
    """Calls Reserve with idempotency key `key` until it answers (the broker or a worker
    may be down meanwhile); returns (outcome, trip id)."""
    deadline = time.monotonic() + DEADLINE_S
    request = trips_pb2.ReserveTripRequest(run_type=run_type, to="Rome", amount_cents=50)
    while True:
        try:
            response = cluster.trips.Reserve(
                request, metadata=(("idempotency-key", key),), timeout=30
            )
            return response.status, trip_id_of(response)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return "failed", trip_id_from_error(e.details() or "")
            if time.monotonic() > deadline:
                raise TestTimeout(f"saga {key} never answered: {e.code()} {e.details()}") from e
            time.sleep(0.1)


def assert_consistent(cluster: Cluster, trip_id: str, run_type: str) -> None:
    """Every booking call made once, the states the run type ends in, one notification."""
    flight = cluster.flights.Get(flights_pb2.TripRef(trip_id=trip_id), timeout=30).state
    car = cluster.cars.Get(cars_pb2.TripRef(trip_id=trip_id), timeout=30).state
    payment = cluster.payments.Get(payments_pb2.TripRef(trip_id=trip_id), timeout=30).state
    assert (flight, car, payment) == OUTCOMES[run_type], (trip_id, run_type)
    seen: dict[tuple[str, str], int] = {}
    for service in ("flights.Flights", "cars.Cars", "payments.Payments"):
        for record in cluster.invocations(service=service, key=trip_id):
            if record.method == "Get":
                continue
            assert record.status == Status.COMPLETED, record
            seen[(service, record.method)] = seen.get((service, record.method), 0) + 1
    assert all(count == 1 for count in seen.values()), (trip_id, seen)
    records = cluster.notifications(trip_id)
    expected = "success" if run_type == "" else "failed"
    assert [r["status"] for r in records] == [expected], records


def run_load(cluster: Cluster, crash: str) -> None:
    keys = [(f"{crash}-{i}-{uuid.uuid4()}", "" if i % 3 else "failPayment") for i in range(SAGAS)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = {
            pool.submit(book, cluster, key, run_type): (key, run_type) for key, run_type in keys
        }
        # Crash while sagas are in flight: once a few have started.
        cluster.wait_for(
            lambda: len(cluster.invocations(service="trips.Trips")) >= 6,
            message="sagas to start",
        )
        if crash == "worker":
            pid = cluster.broker.pid
            assert pid is not None
            workers = worker_pids(pid)
            assert len(workers) == 2, workers
            os.kill(workers[0], signal.SIGKILL)
        else:
            cluster.kill_broker()
            cluster.start_broker()
        outcomes = {futures[f]: f.result() for f in concurrent.futures.as_completed(futures)}
    for (key, run_type), (status, trip_id) in outcomes.items():
        assert status == ("success" if run_type == "" else "failed"), (key, status)
        sagas = [i for i in cluster.invocations(service="trips.Trips") if i.idempotency_key == key]
        assert len(sagas) == 1, (key, sagas)
        assert_consistent(cluster, trip_id, run_type)


@pytest.mark.parametrize("crash", ["worker", "broker"])
def test_sagas_survive_a_sigkill_under_load(make_cluster: MakeCluster, crash: str) -> None:
    cluster = make_cluster(broker_args=BROKER_ARGS)
    run_load(cluster, crash)
