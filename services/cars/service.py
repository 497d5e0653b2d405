"""Car rental bookings: a virtual object keyed by trip id, its booking kept in broker state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import durable
import grpc
from cars import cars_pb2
from cars.cars_durable import CarsServicer

from services import _common

# The state key holding {"state": ..., "booking_id": ...}.
BOOKING = "booking"


async def _load(ctx: durable.ObjectSharedContext) -> dict[str, Any]:
    booking: dict[str, Any] = await ctx.get(BOOKING, {})
    return booking


def _status(ctx: durable.ObjectSharedContext, booking: dict[str, Any]) -> cars_pb2.BookingStatus:
    return cars_pb2.BookingStatus(
        trip_id=ctx.key,
        state=booking.get("state", ""),
        booking_id=booking.get("booking_id", ""),
    )


class Cars(CarsServicer):
    """`cars.Cars`: reserve, confirm and cancel the rental car of one trip."""

    async def Reserve(
        self, ctx: durable.ObjectContext, request: cars_pb2.ReserveRequest
    ) -> cars_pb2.BookingStatus:
        """Holds a car; fails terminally when `request.fail` is set."""
        if request.fail:
            raise durable.TerminalError(
                f"car reservation failed: no cars left at {request.pickup or '?'}"
                f" on {request.date or 'the requested date'}",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        # ctx.uuid4() is seeded by the invocation, so a replay gets the same id.
        booking = {"state": "reserved", "booking_id": str(ctx.uuid4())}
        ctx.set(BOOKING, booking)
        return _status(ctx, booking)

    async def Confirm(
        self, ctx: durable.ObjectContext, request: cars_pb2.ConfirmRequest
    ) -> cars_pb2.BookingStatus:
        """Makes a reserved booking final; fails terminally when `request.fail` is set."""
        if request.fail:
            raise durable.TerminalError(
                f"car confirmation failed for trip {ctx.key}: the rental company rejected it",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        booking = await _load(ctx)
        state = booking.get("state", "")
        if state not in ("reserved", "confirmed"):
            raise durable.TerminalError(
                f"car of trip {ctx.key} cannot be confirmed: it is {state or 'not reserved'}",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        booking["state"] = "confirmed"
        ctx.set(BOOKING, booking)
        return _status(ctx, booking)

    async def Cancel(
        self, ctx: durable.ObjectContext, request: cars_pb2.TripRef
    ) -> cars_pb2.BookingStatus:
        """Releases the booking whatever its state: a compensation, so it never fails."""
        booking = await _load(ctx)
        booking["state"] = "cancelled"
        ctx.set(BOOKING, booking)
        return _status(ctx, booking)

    async def Get(
        self, ctx: durable.ObjectSharedContext, request: cars_pb2.TripRef
    ) -> cars_pb2.BookingStatus:
        """The booking's state, or an empty state when the trip is unknown."""
        return _status(ctx, await _load(ctx))


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the cars service endpoint (`python -m services.cars`)."""
    parser = _common.arg_parser(
        "python -m services.cars",
        "The holiday demo's cars service.",
        "CARS_LISTEN",
        "127.0.0.1:9102",
    )
    _common.serve([Cars()], parser.parse_args(argv))
