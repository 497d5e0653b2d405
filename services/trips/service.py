"""The holiday booking saga: flight, car, payment, confirmations, notification.

Every step is a journaled call, so a crash anywhere resumes the saga where it stopped.
A terminal failure of any step runs the compensations of the steps taken, newest first.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import durable
import grpc
from cars import cars_pb2
from cars.cars_durable import CarsClient
from flights import flights_pb2
from flights.flights_durable import FlightsClient
from payments import payments_pb2
from payments.payments_durable import PaymentsClient
from trips import trips_pb2
from trips.trips_durable import TripsServicer

from services import _common

from .notifications import DEFAULT_PATH, NotificationLog

# The failures `run_type` can simulate; the empty string is a normal run.
RUN_TYPES = (
    "failFlightReservation",
    "failCarReservation",
    "failPayment",
    "failFlightConfirmation",
    "failCarConfirmation",
    "failNotification",
    "flakyPayment",
)

Compensation = Callable[[], Awaitable[object]]


class Trips(TripsServicer):
    """`trips.Trips`: books a whole trip, or undoes every step it took.

    Args:
        notifications: Where the success and failure notifications go.
    """

    def __init__(self, notifications: NotificationLog) -> None:
        self.notifications = notifications

    async def Reserve(
        self, ctx: durable.Context, request: trips_pb2.ReserveTripRequest
    ) -> trips_pb2.ReserveTripResponse:
        """Runs the saga; a terminal failure compensates and reports what it undid."""
        run_type = request.run_type
        if run_type and run_type not in RUN_TYPES:
            raise durable.TerminalError(
                f"unknown run_type {run_type!r}; valid: {', '.join(RUN_TYPES)} (or empty)",
                grpc.StatusCode.INVALID_ARGUMENT,
            )
        trip_id = str(ctx.uuid4())
        flights, cars, payments = FlightsClient(ctx), CarsClient(ctx), PaymentsClient(ctx)
        # Each compensation is registered before its step: a step that failed halfway (or
        # whose outcome is unknown) is undone too, and every compensation is idempotent.
        compensations: list[Compensation] = []
        try:
            compensations.append(lambda: flights.Cancel(flights_pb2.TripRef(trip_id=trip_id)))
            await flights.Reserve(
                flights_pb2.ReserveRequest(
                    trip_id=trip_id,
                    # `from` is a Python keyword: neither a plain argument nor attribute.
                    **{"from": getattr(request, "from")},
                    to=request.to,
                    date=request.date,
                    fail=run_type == "failFlightReservation",
                )
            )

            compensations.append(lambda: cars.Cancel(cars_pb2.TripRef(trip_id=trip_id)))
            await cars.Reserve(
                cars_pb2.ReserveRequest(
                    trip_id=trip_id,
                    pickup=request.to,
                    dropoff=request.to,
                    date=request.date,
                    fail=run_type == "failCarReservation",
                )
            )

            compensations.append(lambda: payments.Refund(payments_pb2.TripRef(trip_id=trip_id)))
            await payments.Process(
                payments_pb2.ProcessRequest(
                    trip_id=trip_id,
                    amount_cents=request.amount_cents,
                    fail=run_type == "failPayment",
                    flaky=run_type == "flakyPayment",
                )
            )

            await flights.Confirm(
                flights_pb2.ConfirmRequest(
                    trip_id=trip_id, fail=run_type == "failFlightConfirmation"
                )
            )
            await cars.Confirm(
                cars_pb2.ConfirmRequest(trip_id=trip_id, fail=run_type == "failCarConfirmation")
            )
            await ctx.run("notify success", lambda: self._notify_success(trip_id, run_type))
        except durable.TerminalError as e:
            applied = await self._compensate(compensations)
            reason = f"{e.message}; successfully applied {applied} compensations"
            await ctx.run("notify failure", lambda: self._notify_failure(trip_id, reason))
            raise durable.TerminalError(f"trip {trip_id} failed: {reason}", e.code) from e
        return trips_pb2.ReserveTripResponse(status="success", tripId=trip_id)

    @staticmethod
    async def _compensate(compensations: list[Compensation]) -> int:
        """Undoes the steps taken, newest first; returns how many compensations succeeded."""
        applied = 0
        for compensate in reversed(compensations):
            try:
                await compensate()
                applied += 1
            except durable.TerminalError:
                # Compensations are built never to fail; if one does anyway, undo the
                # rest regardless and leave it out of the count the caller reads.
                continue
        return applied

    def _notify_success(self, trip_id: str, run_type: str) -> None:
        if run_type == "failNotification":
            raise durable.TerminalError(
                "notification service rejected the message", grpc.StatusCode.FAILED_PRECONDITION
            )
        self.notifications.append({"trip_id": trip_id, "status": "success", "run_type": run_type})

    def _notify_failure(self, trip_id: str, reason: str) -> None:
        self.notifications.append({"trip_id": trip_id, "status": "failed", "reason": reason})


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the trips service endpoint (`python -m services.trips`)."""
    parser = _common.arg_parser(
        "python -m services.trips",
        "The holiday demo's trips saga.",
        "TRIPS_LISTEN",
        "127.0.0.1:9104",
    )
    parser.add_argument(
        "--notification-log",
        type=Path,
        default=Path(os.environ.get("TRIPS_NOTIFICATION_LOG", DEFAULT_PATH)),
        help=f"the notification log (env TRIPS_NOTIFICATION_LOG, default {DEFAULT_PATH})",
    )
    args = parser.parse_args(argv)
    # Fail at start-up, not at the first trip, when the log's directory cannot exist.
    args.notification_log.parent.mkdir(parents=True, exist_ok=True)
    _common.serve([Trips(NotificationLog(args.notification_log))], args)
