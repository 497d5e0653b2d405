"""SIGKILL a service or the broker in the middle of a saga; every saga still completes,
each booking is made once, and nothing durable is lost.

The saga is held at a known point by taking the flights service down first: the trips
handler has journaled its flights call and waits for it, the flights invocation backs
off. That is when the crash happens.
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from durable.v1 import admin_pb2, invocation_pb2
from trips import trips_pb2

from tests.support import Cluster, MakeCluster, Status, invocation_id_of, trip_id_of

# Frequent retries: the endpoints that were down are tried again soon after they are back.
BROKER_ARGS = ["--retry-initial", "100ms", "--retry-max", "500ms"]
CALL_TIMEOUT_S = 90.0


def idempotent(key: str) -> tuple[tuple[str, str], ...]:
    return (("idempotency-key", key),)


def saga_of(cluster: Cluster, key: str) -> list[invocation_pb2.Invocation]:
    """The trips invocations started with idempotency key `key`."""
    return [i for i in cluster.invocations(service="trips.Trips") if i.idempotency_key == key]


def hold_saga_on_flights(cluster: Cluster, key: str) -> tuple[grpc.Future[Any], str]:
    """Takes flights down, starts a saga, and waits until its flights call backs off.

    Returns:
        The in-flight client call and the trips invocation's id.
    """
    cluster.kill_service("flights")
    pending = cluster.trips.Reserve.future(
        trips_pb2.ReserveTripRequest(to="Paris"), metadata=idempotent(key), timeout=CALL_TIMEOUT_S
    )
    trips_id = cluster.wait_for(lambda: saga_of(cluster, key), message="the trips invocation")[0].id

    def flights_call_backing_off() -> bool:
        calls = [
            i
            for i in cluster.invocations(service="flights.Flights", method="Reserve")
            if i.caller.invocation_id == trips_id
        ]
        return len(calls) == 1 and calls[0].status == Status.BACKING_OFF

    cluster.wait_for(
        flights_call_backing_off,
        message=lambda: f"the flights call to back off: {cluster.invocations()}",
    )
    return pending, trips_id


def assert_booked_once(cluster: Cluster, trip_id: str) -> None:
    """One reservation per booking, everything confirmed, one success notification."""
    for service, method in [
        ("flights.Flights", "Reserve"),
        ("cars.Cars", "Reserve"),
        ("payments.Payments", "Process"),
        ("flights.Flights", "Confirm"),
        ("cars.Cars", "Confirm"),
    ]:
        calls = cluster.invocations(service=service, key=trip_id, method=method)
        assert len(calls) == 1, f"{service}/{method} for trip {trip_id}: {calls}"
        assert calls[0].status == Status.COMPLETED, calls[0]
        assert calls[0].result.HasField("value"), calls[0]
    for service in ("flights.Flights", "cars.Cars", "payments.Payments"):
        cancels = [
            i
            for i in cluster.invocations(service=service, key=trip_id)
            if i.method in ("Cancel", "Refund")
        ]
        assert not cancels, f"compensations ran for a successful trip: {cancels}"
    records = cluster.notifications(trip_id)
    assert [r["status"] for r in records] == ["success"], records


@pytest.mark.parametrize(
    "suspend_after", ["30s", "0"], ids=["handler-running", "handler-suspended"]
)
def test_trips_service_killed_while_saga_waits(
    make_cluster: MakeCluster, suspend_after: str
) -> None:
    # Streams from the first attempt, so that with 30 s the handler is still running
    # (holding its stream) when it is killed, not suspended after a unary first attempt.
    args = [*BROKER_ARGS, "--no-unary-first"]
    cluster = make_cluster(suspend_after=suspend_after, broker_args=args)
    key = f"kill-trips-{uuid.uuid4()}"
    pending, trips_id = hold_saga_on_flights(cluster, key)
    try:
        # With 30 s the handler still holds its stream (RUNNING); with 0 it has suspended.
        expected = Status.RUNNING if suspend_after == "30s" else Status.SUSPENDED
        assert cluster.invocation(trips_id).status == expected

        cluster.kill_service("trips")
        if expected == Status.RUNNING:
            # The broker sees the attempt's stream break and schedules a retry.
            cluster.wait_for(
                lambda: cluster.invocation(trips_id).status == Status.BACKING_OFF,
                message=lambda: f"trips to back off: {cluster.invocation(trips_id)}",
            )
        cluster.start_service("trips")
        cluster.start_service("flights")

        response = cluster.trips.Reserve(
            trips_pb2.ReserveTripRequest(to="Paris"),
            metadata=idempotent(key),
            timeout=CALL_TIMEOUT_S,
        )
        # The first caller was waiting on the broker, which never went away: it gets the
        # result too.
        assert pending.result(timeout=CALL_TIMEOUT_S) == response
    finally:
        pending.cancel()

    assert response.status == "success"
    trip_id = trip_id_of(response)
    assert trip_id
    assert [i.id for i in saga_of(cluster, key)] == [trips_id]
    record = cluster.invocation(trips_id)
    assert record.status == Status.COMPLETED
    assert record.attempts >= 2, record
    assert_booked_once(cluster, trip_id)


@pytest.mark.parametrize("suspend_after", ["1s", "0"])
def test_broker_killed_mid_saga(make_cluster: MakeCluster, suspend_after: str) -> None:
    cluster = make_cluster(suspend_after=suspend_after, broker_args=BROKER_ARGS)
    key = f"kill-broker-{uuid.uuid4()}"
    pending, trips_id = hold_saga_on_flights(cluster, key)
    try:
        cluster.kill_broker()

        error = pending.exception(timeout=30)  # type: ignore[call-arg]  # grpc-stubs lacks it
        assert isinstance(error, grpc.RpcError), f"the in-flight call did not fail: {error!r}"
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    finally:
        pending.cancel()

    cluster.start_broker()
    cluster.start_service("flights")
    response = cluster.trips.Reserve(
        trips_pb2.ReserveTripRequest(to="Paris"), metadata=idempotent(key), timeout=CALL_TIMEOUT_S
    )

    assert response.status == "success"
    trip_id = trip_id_of(response)
    assert trip_id
    # The re-call attached to the invocation that began before the crash.
    assert [i.id for i in saga_of(cluster, key)] == [trips_id]
    assert cluster.invocation(trips_id).status == Status.COMPLETED
    assert_booked_once(cluster, trip_id)


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM"])
def test_completed_saga_survives_broker_restart(make_cluster: MakeCluster, stop: str) -> None:
    cluster = make_cluster(broker_args=BROKER_ARGS)
    key = f"restart-{uuid.uuid4()}"
    response, call = cluster.trips.Reserve.with_call(
        trips_pb2.ReserveTripRequest(to="Rome"), metadata=idempotent(key), timeout=CALL_TIMEOUT_S
    )
    # Nothing between the response and the crash: the result was durable before it was sent.
    cluster.restart_broker(kill=stop == "SIGKILL")

    invocation_id = invocation_id_of(call)
    described = cluster.describe(invocation_id)
    record = described.invocation
    assert record.status == Status.COMPLETED, record
    assert record.idempotency_key == key
    assert record.result.value == response.SerializeToString()
    steps = [
        (e.WhichOneof("command"), e.call.service, e.call.method, e.run.name)
        for e in described.journal
    ]
    assert steps == [
        ("input", "", "", ""),
        ("call", "flights.Flights", "Reserve", ""),
        ("call", "cars.Cars", "Reserve", ""),
        ("call", "payments.Payments", "Process", ""),
        ("call", "flights.Flights", "Confirm", ""),
        ("call", "cars.Cars", "Confirm", ""),
        ("run", "", "", "notify success"),
        ("output", "", "", ""),
    ]
    assert record.journal_length == len(described.journal)
    assert all(e.HasField("result") for e in described.journal[1:]), described.journal
    for entry in described.journal[1:6]:
        callee = cluster.invocation(entry.call.invocation_id)
        assert callee.status == Status.COMPLETED, callee
        assert callee.caller.invocation_id == invocation_id
    # The idempotency key outlives the restart: the same response, no new invocation.
    again, again_call = cluster.trips.Reserve.with_call(
        trips_pb2.ReserveTripRequest(to="Rome"), metadata=idempotent(key), timeout=CALL_TIMEOUT_S
    )
    assert again == response
    assert dict(again_call.initial_metadata())["invocation-id"] == invocation_id
    assert len(saga_of(cluster, key)) == 1
    assert_booked_once(cluster, trip_id_of(response))


def test_a_purge_acknowledged_before_a_crash_stays_done(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(broker_args=BROKER_ARGS)
    key = f"purge-{uuid.uuid4()}"
    _, call = cluster.trips.Reserve.with_call(
        trips_pb2.ReserveTripRequest(to="Rome"), metadata=idempotent(key), timeout=CALL_TIMEOUT_S
    )
    invocation_id = invocation_id_of(call)
    flights_call = cluster.describe(invocation_id).journal[1].call.invocation_id
    purged = cluster.admin.PurgeInvocation(
        admin_pb2.InvocationRequest(invocation_id=invocation_id), timeout=30
    ).invocation
    assert purged.id == invocation_id and purged.idempotency_key == key
    cluster.restart_broker(kill=True)

    with pytest.raises(grpc.RpcError) as gone:
        cluster.describe(invocation_id)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    # Only that invocation went: the calls it made are retained on their own.
    assert cluster.invocation(flights_call).status == Status.COMPLETED
    _, again = cluster.trips.Reserve.with_call(
        trips_pb2.ReserveTripRequest(to="Rome"), metadata=idempotent(key), timeout=CALL_TIMEOUT_S
    )
    assert invocation_id_of(again) != invocation_id
    assert len(saga_of(cluster, key)) == 1


def test_a_cancel_repeated_across_a_crash_leaves_the_compensations_alone(
    make_cluster: MakeCluster,
) -> None:
    # An operator cancels a saga whose flights call is backing off, the broker dies, and
    # the operator, unsure, cancels again. The second cancel must not fail the saga's
    # compensation calls (it did, before a record kept that it was cancelled).
    cluster = make_cluster(broker_args=BROKER_ARGS)
    key = f"cancel-twice-{uuid.uuid4()}"
    pending, trips_id = hold_saga_on_flights(cluster, key)
    pending.cancel()
    cluster.admin.CancelInvocation(admin_pb2.InvocationRequest(invocation_id=trips_id), timeout=30)
    cluster.wait_for(
        lambda: len([e for e in cluster.describe(trips_id).journal if e.HasField("call")]) > 1,
        message=lambda: f"the saga's compensation call: {cluster.describe(trips_id).journal}",
    )
    cluster.restart_broker(kill=True)
    again = cluster.admin.CancelInvocation(
        admin_pb2.InvocationRequest(invocation_id=trips_id), timeout=30
    ).invocation
    assert again.cancelled
    cluster.start_service("flights")

    record = cluster.wait_status(trips_id, Status.COMPLETED)
    assert record.result.failure.code == grpc.StatusCode.CANCELLED.value[0], record
    calls = [e for e in cluster.describe(trips_id).journal if e.HasField("call")]
    compensations = calls[1:]
    assert compensations, calls
    for entry in compensations:
        # Each compensation ran: none was failed by the second cancel.
        assert not entry.result.HasField("failure"), entry
