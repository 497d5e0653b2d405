"""Calls the ingress rejects: the exact status code, a message that says why, and nothing
journaled (ListInvocations counts the same before and after)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from flights import flights_pb2
from trips import trips_pb2

from tests.support import Cluster, trip_id_of

# `from` is a Python keyword, so the field goes in by name.
_OVERSIZE_ORIGIN: dict[str, Any] = {"from": "x" * 2000}

MAX_PAYLOAD = 1024

pytestmark = pytest.mark.parametrize(
    "cluster",
    [{"broker_args": ["--max-payload-bytes", str(MAX_PAYLOAD)]}],
    indirect=True,
    ids=["max-payload-1024"],
)


def raw_call(cluster: Cluster, path: str, body: bytes) -> bytes:
    """Calls `path` with `body` as the serialized request, bypassing the stubs."""
    call: Callable[..., bytes] = cluster.ingress_channel.unary_unary(
        path, request_serializer=None, response_deserializer=None
    )
    return call(body, timeout=30)


def rejected(cluster: Cluster, call: Callable[[], object]) -> grpc.RpcError:
    """Runs `call`, expects it to fail, and checks nothing was journaled."""
    before = len(cluster.invocations())
    with pytest.raises(grpc.RpcError) as info:
        call()
    after = len(cluster.invocations())
    assert after == before, f"a rejected call journaled {after - before} invocation(s)"
    return info.value


def test_unknown_service_is_unimplemented(cluster: Cluster) -> None:
    error = rejected(cluster, lambda: raw_call(cluster, "/nosuch.Service/Do", b""))

    assert error.code() == grpc.StatusCode.UNIMPLEMENTED, error
    assert "nosuch.Service" in (error.details() or ""), error.details()


def test_unknown_method_is_unimplemented(cluster: Cluster) -> None:
    error = rejected(cluster, lambda: raw_call(cluster, "/trips.Trips/Cancel", b""))

    assert error.code() == grpc.StatusCode.UNIMPLEMENTED, error
    assert "Cancel" in (error.details() or ""), error.details()


def test_body_that_does_not_parse_is_invalid_argument(cluster: Cluster) -> None:
    error = rejected(cluster, lambda: raw_call(cluster, "/trips.Trips/Reserve", b"\xff\xff\xff"))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "trips.ReserveTripRequest" in (error.details() or ""), error.details()


@pytest.mark.parametrize("method", ["Get", "Reserve"], ids=["shared-handler", "exclusive-handler"])
def test_keyed_call_without_its_key_is_invalid_argument(cluster: Cluster, method: str) -> None:
    request = flights_pb2.TripRef() if method == "Get" else flights_pb2.ReserveRequest(to="Rome")
    error = rejected(
        cluster,
        lambda: raw_call(cluster, f"/flights.Flights/{method}", request.SerializeToString()),
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "trip_id" in (error.details() or ""), error.details()


def test_oversize_body_is_resource_exhausted(cluster: Cluster) -> None:
    request = trips_pb2.ReserveTripRequest(**_OVERSIZE_ORIGIN)
    assert request.ByteSize() > MAX_PAYLOAD

    error = rejected(cluster, lambda: cluster.trips.Reserve(request, timeout=30))

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    # The broker's own words, naming the flag (gRPC's said only "larger than max").
    assert f"the {MAX_PAYLOAD}-byte payload limit (--max-payload-bytes)" in (
        error.details() or ""
    ), error.details()


def test_oversize_body_with_idempotency_key_is_not_remembered(cluster: Cluster) -> None:
    metadata = (("idempotency-key", "oversize-then-fine"),)
    big = trips_pb2.ReserveTripRequest(**_OVERSIZE_ORIGIN)
    error = rejected(cluster, lambda: cluster.trips.Reserve(big, metadata=metadata, timeout=30))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error

    # The same key with a valid body is a fresh call, not the rejected one replayed.
    response = cluster.trips.Reserve(trips_pb2.ReserveTripRequest(), metadata=metadata, timeout=60)
    assert response.status == "success" and trip_id_of(response)


def test_an_idempotency_key_in_the_schedules_namespace_is_invalid_argument(
    cluster: Cluster,
) -> None:
    # Such a key could take a schedule's coming slot (an attack stopped a schedule so).
    metadata = (("idempotency-key", "schedule:nightly:1796131080000"),)
    call = lambda: cluster.trips.Reserve(  # noqa: E731
        trips_pb2.ReserveTripRequest(), metadata=metadata, timeout=30
    )
    error = rejected(cluster, call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "'schedule:' are the broker's own" in (error.details() or "")


def test_two_idempotency_keys_on_one_call_are_invalid_argument(cluster: Cluster) -> None:
    # The last one counted: [k1, k2] and [k2, k1] were two invocations of one request.
    for keys in (("k1", "k2"), ("k2", "k1")):
        call = functools.partial(
            cluster.trips.Reserve,
            trips_pb2.ReserveTripRequest(),
            metadata=tuple(("idempotency-key", k) for k in keys),
            timeout=30,
        )
        error = rejected(cluster, call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert error.details() == "2 idempotency-key headers: send one key per call"


def test_the_ingress_still_serves_after_rejections(cluster: Cluster) -> None:
    for path, body in [("/nosuch.Service/Do", b""), ("/trips.Trips/Reserve", b"\xff\xff\xff")]:
        with pytest.raises(grpc.RpcError):
            raw_call(cluster, path, body)

    response = cluster.trips.Reserve(trips_pb2.ReserveTripRequest(), timeout=60)

    assert response.status == "success" and trip_id_of(response)
