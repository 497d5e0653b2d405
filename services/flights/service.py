"""Flight bookings: a virtual object keyed by trip id, its booking kept in broker state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import durable
import grpc
from flights import flights_pb2
from flights.flights_durable import FlightsServicer

from services import _common

# The state key holding {"state": ..., "booking_id": ...}.
BOOKING = "booking"


async def _load(ctx: durable.ObjectSharedContext) -> dict[str, Any]:
    booking: dict[str, Any] = await ctx.get(BOOKING, {})
    return booking


def _status(ctx: durable.ObjectSharedContext, booking: dict[str, Any]) -> flights_pb2.BookingStatus:
    return flights_pb2.BookingStatus(
        trip_id=ctx.key,
        state=booking.get("state", ""),
        booking_id=booking.get("booking_id", ""),
    )


class Flights(FlightsServicer):
    """`flights.Flights`: reserve, confirm and cancel the flight of one trip."""

    async def Reserve(
        self, ctx: durable.ObjectContext, request: flights_pb2.ReserveRequest
    ) -> flights_pb2.BookingStatus:
        """Holds a seat; fails terminally when `request.fail` is set."""
        if request.fail:
            # `from` is a Python keyword, hence getattr.
            route = f"{getattr(request, 'from') or '?'}->{request.to or '?'}"
            raise durable.TerminalError(
                f"flight reservation failed: no seats left on {route}",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        # ctx.uuid4() is seeded by the invocation, so a replay gets the same id.
        booking = {"state": "reserved", "booking_id": str(ctx.uuid4())}
        ctx.set(BOOKING, booking)
        return _status(ctx, booking)

    async def Confirm(
        self, ctx: durable.ObjectContext, request: flights_pb2.ConfirmRequest
    ) -> flights_pb2.BookingStatus:
        """Makes a reserved booking final; fails terminally when `request.fail` is set."""
        if request.fail:
            raise durable.TerminalError(
                f"flight confirmation failed for trip {ctx.key}: the airline rejected it",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        booking = await _load(ctx)
        state = booking.get("state", "")
        if state not in ("reserved", "confirmed"):
            raise durable.TerminalError(
                f"flight of trip {ctx.key} cannot be confirmed: it is {state or 'not reserved'}",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        booking["state"] = "confirmed"
        ctx.set(BOOKING, booking)
        return _status(ctx, booking)

    async def Cancel(
        self, ctx: durable.ObjectContext, request: flights_pb2.TripRef
    ) -> flights_pb2.BookingStatus:
        """Releases the booking whatever its state: a compensation, so it never fails."""
        booking = await _load(ctx)
        booking["state"] = "cancelled"
        ctx.set(BOOKING, booking)
        return _status(ctx, booking)

    async def Get(
        self, ctx: durable.ObjectSharedContext, request: flights_pb2.TripRef
    ) -> flights_pb2.BookingStatus:
        """The booking's state, or an empty state when the trip is unknown."""
        return _status(ctx, await _load(ctx))


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the flights service endpoint (`python -m services.flights`)."""
    parser = _common.arg_parser(
        "python -m services.flights",
        "The holiday demo's flights service.",
        "FLIGHTS_LISTEN",
        "127.0.0.1:9101",
    )
    _common.serve([Flights()], parser.parse_args(argv))
