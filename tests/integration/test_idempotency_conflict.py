"""An idempotency key names one request: reusing it with another body is refused, before
and after a broker restart, while a retry with the same body still gets the same answer."""

from __future__ import annotations

import uuid

import grpc
import pytest
from trips import trips_pb2

from tests.support import Cluster, invocation_id_of, trip_id_of


def _reserve(cluster: Cluster, key: str, origin: str) -> tuple[str, trips_pb2.ReserveTripResponse]:
    request = trips_pb2.ReserveTripRequest()
    setattr(request, "from", origin)  # `from` is a Python keyword
    response, call = cluster.trips.Reserve.with_call(
        request, metadata=(("idempotency-key", key),), timeout=60
    )
    return invocation_id_of(call), response


def _conflict(cluster: Cluster, key: str, origin: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        _reserve(cluster, key, origin)
    return refused.value


def test_same_key_with_another_request_is_refused_across_a_restart(cluster: Cluster) -> None:
    key = f"conflict-{uuid.uuid4()}"
    first_id, first = _reserve(cluster, key, "Paris")
    before = len(cluster.invocations(service="trips.Trips"))

    refused = _conflict(cluster, key, "Rome")
    assert refused.code() is grpc.StatusCode.FAILED_PRECONDITION, refused
    message = refused.details() or ""
    assert key in message and "different request" in message and first_id in message, message
    # Nothing was started for the refused call.
    assert len(cluster.invocations(service="trips.Trips")) == before

    again_id, again = _reserve(cluster, key, "Paris")
    assert (again_id, again) == (first_id, first)

    cluster.restart_broker()

    after_id, after = _reserve(cluster, key, "Paris")
    assert (after_id, after) == (first_id, first)
    refused = _conflict(cluster, key, "Rome")
    assert refused.code() is grpc.StatusCode.FAILED_PRECONDITION, refused
    assert len(cluster.notifications(trip_id_of(first))) == 1
