"""Car rental bookings: a virtual object keyed by trip id, its booking kept in broker state."""

from __future__ import annotations

from collections.abc import Sequence

import durable
import grpc
from cars import cars_pb2
from cars.cars_durable import CarsServicer

from services import _common
from services._records import Record, confirm

# One record per trip, in the object's state: {"state": ..., "booking_id": ...}.
BOOKINGS = Record("booking", cars_pb2.BookingStatus, {"state": "", "booking_id": ""})


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
        return BOOKINGS.save(ctx, {"state": "reserved", "booking_id": str(ctx.uuid4())})

    async def Confirm(
        self, ctx: durable.ObjectContext, request: cars_pb2.ConfirmRequest
    ) -> cars_pb2.BookingStatus:
        """Makes a reserved booking final; fails terminally when `request.fail` is set."""
        return await confirm(ctx, BOOKINGS, "car", request.fail, "the rental company")

    async def Cancel(
        self, ctx: durable.ObjectContext, request: cars_pb2.TripRef
    ) -> cars_pb2.BookingStatus:
        """Releases the booking whatever its state: a compensation, so it never fails."""
        return await BOOKINGS.update(ctx, state="cancelled")

    async def Get(
        self, ctx: durable.ObjectSharedContext, request: cars_pb2.TripRef
    ) -> cars_pb2.BookingStatus:
        """The booking's state, or an empty state when the trip is unknown."""
        return await BOOKINGS.get(ctx)


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the cars service endpoint (`python -m services.cars`)."""
    parser = _common.arg_parser(
        "python -m services.cars",
        "The holiday demo's cars service.",
        "CARS_LISTEN",
        "127.0.0.1:9102",
    )
    _common.serve([Cars()], parser.parse_args(argv))
