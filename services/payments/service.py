"""Payments: a virtual object keyed by trip id, its payment kept in broker state."""

from __future__ import annotations

import collections
import uuid
from collections.abc import Sequence

import durable
import grpc
from payments import payments_pb2
from payments.payments_durable import PaymentsServicer

from services import _common
from services._records import Record

# One record per trip, in the object's state.
PAYMENTS = Record(
    "payment",
    payments_pb2.PaymentStatus,
    {"state": "", "payment_id": "", "amount_cents": 0},
)
# A flaky charge fails this many times per trip before the gateway accepts it.
FLAKY_FAILURES = 2

# Gateway calls per trip id in this process. Deliberately not durable: it stands for the
# outside world, which the journal does not control, so a retried attempt sees it advance.
_gateway_calls: collections.Counter[str] = collections.Counter()


def _charge(trip_id: str, flaky: bool) -> str:
    """The simulated payment gateway: returns a payment id, or fails transiently."""
    _gateway_calls[trip_id] += 1
    attempt = _gateway_calls[trip_id]
    if flaky and attempt <= FLAKY_FAILURES:
        # Not a TerminalError: the attempt fails and the broker retries it with backoff.
        raise RuntimeError(f"payment gateway unavailable (attempt {attempt})")
    return str(uuid.uuid4())


class Payments(PaymentsServicer):
    """`payments.Payments`: charge and refund the payment of one trip."""

    async def Process(
        self, ctx: durable.ObjectContext, request: payments_pb2.ProcessRequest
    ) -> payments_pb2.PaymentStatus:
        """Charges the trip; `fail` declines terminally, `flaky` fails twice transiently."""
        if request.fail:
            raise durable.TerminalError(
                f"payment declined for trip {ctx.key}", grpc.StatusCode.FAILED_PRECONDITION
            )
        trip_id, flaky = ctx.key, request.flaky
        # The charge runs once: its payment id is journaled and replayed, never recharged.
        payment_id: str = await ctx.run("charge", lambda: _charge(trip_id, flaky))
        return PAYMENTS.save(
            ctx,
            {"state": "processed", "payment_id": payment_id, "amount_cents": request.amount_cents},
        )

    async def Refund(
        self, ctx: durable.ObjectContext, request: payments_pb2.TripRef
    ) -> payments_pb2.PaymentStatus:
        """Gives the money back whatever the state: a compensation, so it never fails."""
        return await PAYMENTS.update(ctx, state="refunded")

    async def Get(
        self, ctx: durable.ObjectSharedContext, request: payments_pb2.TripRef
    ) -> payments_pb2.PaymentStatus:
        """The payment's state, or an empty state when the trip is unknown."""
        return await PAYMENTS.get(ctx)


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the payments service endpoint (`python -m services.payments`)."""
    parser = _common.arg_parser(
        "python -m services.payments",
        "The holiday demo's payments service.",
        "PAYMENTS_LISTEN",
        "127.0.0.1:9103",
    )
    _common.serve([Payments()], parser.parse_args(argv))
