"""A handler that awaits an unavailable callee suspends, and resumes when the callee is back.

With `--suspend-after 200ms` the trips saga, blocked on its flights call while the flights
service is down, gives up its stream: the invocation is SUSPENDED, waiting on its journal
entry 1 (the call), while the flights invocation is BACKING_OFF. Once flights is back the
broker completes the call and re-invokes the saga, which replays and carries on.
"""

from __future__ import annotations

import uuid

import grpc
from trips import trips_pb2

from tests.support import Cluster, MakeCluster, Status, trip_id_of

SUSPEND_AFTER = "200ms"
# Keep retries of the unavailable flights endpoint frequent, so the test does not wait
# out a long backoff once flights is back.
BROKER_ARGS = ["--retry-initial", "100ms", "--retry-max", "500ms"]


def test_saga_suspends_while_callee_is_down_and_resumes(make_cluster: MakeCluster) -> None:
    cluster: Cluster = make_cluster(suspend_after=SUSPEND_AFTER, broker_args=BROKER_ARGS)
    cluster.kill_service("flights")
    key = f"suspension-{uuid.uuid4()}"
    metadata = (("idempotency-key", key),)
    pending = cluster.trips.Reserve.future(
        trips_pb2.ReserveTripRequest(to="Oslo"), metadata=metadata, timeout=90
    )
    try:
        trips = cluster.wait_for(
            lambda: [
                i for i in cluster.invocations(service="trips.Trips") if i.idempotency_key == key
            ],
            message="the trips invocation",
        )[0]

        def suspended_on_flights() -> bool:
            record = cluster.invocation(trips.id)
            flights = [
                i
                for i in cluster.invocations(service="flights.Flights", method="Reserve")
                if i.caller.invocation_id == trips.id
            ]
            return (
                record.status == Status.SUSPENDED
                and list(record.waiting_on) == [1]
                and len(flights) == 1
                and flights[0].status == Status.BACKING_OFF
            )

        cluster.wait_for(
            suspended_on_flights,
            message=lambda: (
                "trips SUSPENDED on [1] with flights Reserve BACKING_OFF; now: "
                f"{cluster.describe(trips.id)}; flights: "
                f"{cluster.invocations(service='flights.Flights')}"
            ),
        )
        call_entry = cluster.describe(trips.id).journal[1]
        assert call_entry.WhichOneof("command") == "call", call_entry
        assert (call_entry.call.service, call_entry.call.method) == ("flights.Flights", "Reserve")
        assert not pending.done(), "the caller got an answer while the saga was suspended"

        cluster.start_service("flights")

        response = cluster.trips.Reserve(
            trips_pb2.ReserveTripRequest(to="Oslo"), metadata=metadata, timeout=60
        )
        assert response.status == "success"
        assert pending.result(timeout=30) == response
    finally:
        pending.cancel()

    trip_id = trip_id_of(response)
    assert trip_id
    record = cluster.invocation(trips.id)
    assert record.status == Status.COMPLETED
    assert record.attempts >= 2, record
    reserves = cluster.invocations(service="flights.Flights", key=trip_id, method="Reserve")
    assert len(reserves) == 1 and reserves[0].attempts >= 2, reserves
    assert [r["status"] for r in cluster.notifications(trip_id)] == ["success"]


def test_caller_going_away_does_not_cancel_the_invocation(make_cluster: MakeCluster) -> None:
    """The ingress call is only a view on the invocation: a client that gives up (its
    deadline passes) leaves the saga running, and the idempotency key fetches its result."""
    cluster: Cluster = make_cluster(suspend_after=SUSPEND_AFTER, broker_args=BROKER_ARGS)
    cluster.kill_service("flights")
    key = f"abandoned-{uuid.uuid4()}"
    metadata = (("idempotency-key", key),)
    try:
        cluster.trips.Reserve(trips_pb2.ReserveTripRequest(), metadata=metadata, timeout=1)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
    else:
        raise AssertionError("the trip completed with flights down")

    cluster.start_service("flights")
    response = cluster.trips.Reserve(trips_pb2.ReserveTripRequest(), metadata=metadata, timeout=60)

    assert response.status == "success" and trip_id_of(response)
    trips = [i for i in cluster.invocations(service="trips.Trips") if i.idempotency_key == key]
    assert len(trips) == 1 and trips[0].status == Status.COMPLETED, trips
