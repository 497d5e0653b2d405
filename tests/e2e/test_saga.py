"""The holiday booking saga end to end, through the generated stubs and through grpcurl.

Every case runs with the broker's default `--suspend-after 1s` (handlers mostly run
straight through), with `--suspend-after 0` (a handler suspends at every await, so each
step is reached by replaying the journal), with services in request/response mode, and
with the partitions over two worker processes (`--workers 2`, suspending at every await:
a saga's bookings live in the partition of their trip id, wherever that is), and over
three broker nodes on NATS JetStream (`--nats`, each call to the next node in turn).
"""

from __future__ import annotations

import dataclasses
import re
from typing import cast

import grpc
import pytest
from cars import cars_pb2
from flights import flights_pb2
from payments import payments_pb2
from trips import trips_pb2

from tests.support import (
    INVOCATION_ID_RE,
    Cluster,
    Status,
    grpcurl_json,
    parse_grpcurl_error,
    trip_id_from_error,
    trip_id_of,
)

# Streams with suspension after 1 s, suspension at every await, and every service in
# request/response mode (one unary call per attempt, as FaaS platforms run handlers).
pytestmark = pytest.mark.parametrize(
    "cluster",
    [
        "1s",
        "0",
        {"suspend_after": "1s", "service_args": ["--request-response"]},
        {"suspend_after": "0", "broker_args": ["--workers", "2"]},
        {"suspend_after": "0", "nodes": 3},
    ],
    ids=["stream", "suspend-always", "request-response", "workers-2", "nodes-3"],
    indirect=True,
)

CLIENTS = ["stub", "grpcurl"]
OUTCOME = "invocation-outcome"
CALL_TIMEOUT_S = 60.0

# run_type -> (compensations applied, flight, car, payment state afterwards).
# Each compensation is registered just before its step, so a step that failed is undone
# too: a failed car reservation cancels the car and the flight (2), a failure from the
# payment on cancels, cancels and refunds (3).
FAILURES = {
    "failFlightReservation": (1, "cancelled", "", ""),
    "failCarReservation": (2, "cancelled", "cancelled", ""),
    "failPayment": (3, "cancelled", "cancelled", "refunded"),
    "failFlightConfirmation": (3, "cancelled", "cancelled", "refunded"),
    "failCarConfirmation": (3, "cancelled", "cancelled", "refunded"),
    "failNotification": (3, "cancelled", "cancelled", "refunded"),
}


@dataclasses.dataclass
class Outcome:
    """What a caller saw of one `trips.Trips/Reserve` call."""

    code: grpc.StatusCode
    message: str = ""
    status: str = ""
    trip_id: str = ""
    invocation_id: str = ""
    # The trailing `invocation-outcome` a failure carries when it is the invocation's
    # own (a handler's error), not the broker failing to deliver it.
    outcome: str = ""


def _code_from_grpcurl(name: str) -> grpc.StatusCode:
    """`FailedPrecondition` (grpcurl's spelling) -> grpc.StatusCode.FAILED_PRECONDITION."""
    return grpc.StatusCode[re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()]


def reserve(cluster: Cluster, client: str, run_type: str = "") -> Outcome:
    """Books a trip with `run_type` through the stubs or grpcurl."""
    if client == "stub":
        request = trips_pb2.ReserveTripRequest(run_type=run_type, to="Lisbon", amount_cents=120)
        try:
            response, call = cluster.trips.Reserve.with_call(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as e:
            # The RpcError a unary stub raises is also the grpc.Call, metadata and all.
            failed = cast(grpc.Call, e)
            ids = [_text(v) for k, v in (failed.initial_metadata() or ()) if k == "invocation-id"]
            marks = [_text(v) for k, v in (failed.trailing_metadata() or ()) if k == OUTCOME]
            return Outcome(
                e.code(),
                e.details() or "",
                invocation_id=ids[0] if ids else "",
                outcome=marks[0] if marks else "",
            )
        ids = [_text(v) for k, v in call.initial_metadata() if k == "invocation-id"]
        assert len(ids) == 1, f"invocation-id metadata: {call.initial_metadata()}"
        return Outcome(
            grpc.StatusCode.OK,
            status=response.status,
            trip_id=trip_id_of(response),
            invocation_id=ids[0],
        )
    body = {"run_type": run_type, "to": "Lisbon", "amount_cents": 120}
    result = cluster.grpcurl_call("trips.Trips/Reserve", body, timeout=CALL_TIMEOUT_S)
    if result.returncode == 0:
        printed = grpcurl_json(result.stdout)
        assert "tripId" in printed, f"grpcurl printed no tripId: {result.stdout}"
        return Outcome(grpc.StatusCode.OK, status=printed["status"], trip_id=printed["tripId"])
    code, message = parse_grpcurl_error(result.stderr)
    return Outcome(_code_from_grpcurl(code), message)


def _text(value: str | bytes) -> str:
    # gRPC gives a text metadata value as str; the stubs also allow bytes.
    return value if isinstance(value, str) else value.decode()


def booking_states(cluster: Cluster, trip_id: str) -> tuple[str, str, str]:
    """(flight, car, payment) state of the trip, read through the ingress."""
    flight = cluster.flights.Get(flights_pb2.TripRef(trip_id=trip_id), timeout=30).state
    car = cluster.cars.Get(cars_pb2.TripRef(trip_id=trip_id), timeout=30).state
    payment = cluster.payments.Get(payments_pb2.TripRef(trip_id=trip_id), timeout=30).state
    return flight, car, payment


@pytest.mark.parametrize("client", CLIENTS)
def test_trip_succeeds(cluster: Cluster, client: str) -> None:
    outcome = reserve(cluster, client)

    assert outcome.code == grpc.StatusCode.OK, outcome
    assert outcome.status == "success"
    assert outcome.trip_id, "the response carries no trip id"
    assert booking_states(cluster, outcome.trip_id) == ("confirmed", "confirmed", "processed")
    records = cluster.notifications(outcome.trip_id)
    assert [r["status"] for r in records] == ["success"], records
    if client == "stub":
        assert INVOCATION_ID_RE.match(outcome.invocation_id), outcome.invocation_id
        record = cluster.invocation(outcome.invocation_id)
        assert (record.service, record.method) == ("trips.Trips", "Reserve")
        assert record.status == Status.COMPLETED


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("run_type", list(FAILURES))
def test_trip_fails_and_compensates(cluster: Cluster, client: str, run_type: str) -> None:
    compensations, *states = FAILURES[run_type]

    outcome = reserve(cluster, client, run_type)

    assert outcome.code == grpc.StatusCode.FAILED_PRECONDITION, outcome
    assert outcome.message.endswith(f"successfully applied {compensations} compensations"), (
        outcome.message
    )
    trip_id = trip_id_from_error(outcome.message)
    assert booking_states(cluster, trip_id) == tuple(states)
    records = cluster.notifications(trip_id)
    assert [r["status"] for r in records] == ["failed"], records
    if client == "stub":
        # The invocation id reaches a failed call's caller too, and the record holds the
        # terminal failure as the caller saw it.
        assert INVOCATION_ID_RE.match(outcome.invocation_id), outcome
        assert outcome.outcome == "failure", outcome
        record = cluster.invocation(outcome.invocation_id)
        assert record.status == Status.COMPLETED
        assert record.result.failure.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert record.result.failure.message == outcome.message


@pytest.mark.parametrize("client", CLIENTS)
def test_flaky_payment_is_retried_and_the_trip_succeeds(cluster: Cluster, client: str) -> None:
    outcome = reserve(cluster, client, "flakyPayment")

    assert outcome.code == grpc.StatusCode.OK, outcome
    assert outcome.status == "success"
    assert booking_states(cluster, outcome.trip_id) == ("confirmed", "confirmed", "processed")
    processes = cluster.invocations(
        service="payments.Payments", key=outcome.trip_id, method="Process"
    )
    assert len(processes) == 1, processes
    assert processes[0].status == Status.COMPLETED
    assert processes[0].attempts >= 3, processes[0]
    records = cluster.notifications(outcome.trip_id)
    assert [r["status"] for r in records] == ["success"], records


def test_the_endpoints_run_in_the_mode_asked_for(cluster: Cluster) -> None:
    from durable.v1 import admin_pb2

    modes = {
        d.mode
        for d in cluster.admin.ListDeployments(admin_pb2.ListDeploymentsRequest()).deployments
    }
    wanted = "request_response" if "--request-response" in cluster.service_args else "stream"
    assert modes == {wanted}
