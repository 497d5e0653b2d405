"""The flights demo service's own tests, written the way a user tests their service.

`DurableTestEnvironment` runs a real broker in-process and serves `Flights` to it; the
test calls the handlers through the broker with the generated stubs. The booking state
lives in the broker (a virtual object keyed by trip id), so each step is checked with
`Get`, as a caller would.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from durable.testing import DurableTestEnvironment
from flights import flights_pb2, flights_pb2_grpc

from services.flights.service import Flights


@pytest.fixture
def flights() -> Iterator[flights_pb2_grpc.FlightsStub]:
    """A stub to a broker serving `Flights`; the broker stops when the test ends."""
    with DurableTestEnvironment([Flights()]) as env:
        yield flights_pb2_grpc.FlightsStub(env.channel())


def test_reserve_then_get_says_reserved(flights: flights_pb2_grpc.FlightsStub) -> None:
    reserved = flights.Reserve(flights_pb2.ReserveRequest(trip_id="t1", to="Oslo"))
    assert (reserved.trip_id, reserved.state) == ("t1", "reserved")
    assert reserved.booking_id

    status = flights.Get(flights_pb2.TripRef(trip_id="t1"))
    assert status.state == "reserved"
    assert status.booking_id == reserved.booking_id


def test_cancel_then_get_says_cancelled(flights: flights_pb2_grpc.FlightsStub) -> None:
    flights.Reserve(flights_pb2.ReserveRequest(trip_id="t1"))

    cancelled = flights.Cancel(flights_pb2.TripRef(trip_id="t1"))
    assert cancelled.state == "cancelled"
    assert flights.Get(flights_pb2.TripRef(trip_id="t1")).state == "cancelled"


def test_get_on_an_unknown_trip_is_empty(flights: flights_pb2_grpc.FlightsStub) -> None:
    status = flights.Get(flights_pb2.TripRef(trip_id="never-booked"))
    assert (status.trip_id, status.state, status.booking_id) == ("never-booked", "", "")


def test_trips_are_independent(flights: flights_pb2_grpc.FlightsStub) -> None:
    flights.Reserve(flights_pb2.ReserveRequest(trip_id="a"))
    flights.Reserve(flights_pb2.ReserveRequest(trip_id="b"))
    flights.Cancel(flights_pb2.TripRef(trip_id="a"))

    assert flights.Get(flights_pb2.TripRef(trip_id="a")).state == "cancelled"
    assert flights.Get(flights_pb2.TripRef(trip_id="b")).state == "reserved"


def test_confirm_after_reserve_says_confirmed(flights: flights_pb2_grpc.FlightsStub) -> None:
    flights.Reserve(flights_pb2.ReserveRequest(trip_id="t1"))

    assert flights.Confirm(flights_pb2.ConfirmRequest(trip_id="t1")).state == "confirmed"
    assert flights.Get(flights_pb2.TripRef(trip_id="t1")).state == "confirmed"


def test_confirm_without_reservation_fails(flights: flights_pb2_grpc.FlightsStub) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        flights.Confirm(flights_pb2.ConfirmRequest(trip_id="t1"))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not reserved" in (failure.value.details() or "")


def test_failed_reservation_is_a_terminal_error(flights: flights_pb2_grpc.FlightsStub) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        flights.Reserve(flights_pb2.ReserveRequest(trip_id="t1", to="Oslo", fail=True))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no seats left" in (failure.value.details() or "")
    assert flights.Get(flights_pb2.TripRef(trip_id="t1")).state == ""
