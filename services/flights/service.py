"""Flight bookings: a virtual object keyed by trip id, its booking kept in broker state."""

from __future__ import annotations

from collections.abc import Sequence

import durable
import grpc
from flights import flights_pb2
from flights.flights_durable import FlightsServicer

from services import _common
from services._records import Record, confirm

# One record per trip, in the object's state: {"state": ..., "booking_id": ...}.
BOOKINGS = Record("booking", flights_pb2.BookingStatus, {"state": "", "booking_id": ""})


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
        return BOOKINGS.save(ctx, {"state": "reserved", "booking_id": str(ctx.uuid4())})

    async def Confirm(
        self, ctx: durable.ObjectContext, request: flights_pb2.ConfirmRequest
    ) -> flights_pb2.BookingStatus:
        """Makes a reserved booking final; fails terminally when `request.fail` is set."""
        return await confirm(ctx, BOOKINGS, "flight", request.fail, "the airline")

    async def Cancel(
        self, ctx: durable.ObjectContext, request: flights_pb2.TripRef
    ) -> flights_pb2.BookingStatus:
        """Releases the booking whatever its state: a compensation, so it never fails."""
        return await BOOKINGS.update(ctx, state="cancelled")

    async def Get(
        self, ctx: durable.ObjectSharedContext, request: flights_pb2.TripRef
    ) -> flights_pb2.BookingStatus:
        """The booking's state, or an empty state when the trip is unknown."""
        return await BOOKINGS.get(ctx)


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the flights service endpoint (`python -m services.flights`)."""
    parser = _common.arg_parser(
        "python -m services.flights",
        "The holiday demo's flights service.",
        "FLIGHTS_LISTEN",
        "127.0.0.1:9101",
    )
    _common.serve([Flights()], parser.parse_args(argv))
