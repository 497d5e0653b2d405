"""The benchmark's handlers as Restate services (Restate's Python SDK, served by hypercorn).

Runs in the peer's own virtual environment (`.data/peer/venv`), never in ours: hypercorn
imports it as `restate_app:app`. Each handler does the same work as its counterpart here:

    bench.echo        `benchsvc.Bench/Echo`: returns its payload (the `trivial` scenario).
    counter.add       `benchsvc.Counter/Add`: a virtual object adding to its key's counter,
                      one state read and one write (the `keyed` scenario).
    trips.reserve     `trips.Trips/Reserve`, the holiday saga (the `saga` scenario): a trip
                      id from the invocation's seeded RNG, then flights.reserve,
                      cars.reserve, payments.process, flights.confirm, cars.confirm, each a
                      durable call to a virtual object keyed by the trip id that keeps its
                      record in state, payments.process's charge a journaled side effect,
                      and the notification a journaled side effect appending one fsync'd
                      line to a file; a terminal failure runs the compensations registered
                      so far, newest first. 6 invocations per trip, as here.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import restate
from restate import Context, ObjectContext, RunOptions, Service, TerminalError, VirtualObject

Json = dict[str, Any]
# The HTTP status a business failure answers with (the ingress passes it to the caller).
FAILED_PRECONDITION = 409
NOTIFICATION_LOG = os.environ.get("PEER_NOTIFICATION_LOG", "notifications.log")

# --------------------------------------------------------------------------- trivial, keyed
bench = Service("bench")


@bench.handler()
async def echo(ctx: Context, req: Json) -> Json:
    """Returns the payload it was given."""
    return {"payload": req.get("payload", "")}


counter = VirtualObject("counter")


@counter.handler()
async def add(ctx: ObjectContext, req: Json) -> Json:
    """Adds `delta` to this key's counter and returns the new value."""
    value = int(await ctx.get("value") or 0) + int(req.get("delta", 1))
    ctx.set("value", value)
    return {"value": value}


# --------------------------------------------------------------------------- saga participants
def _fail(what: str, key: str) -> TerminalError:
    return TerminalError(f"{what} failed for trip {key}", status_code=FAILED_PRECONDITION)


async def _confirm(ctx: ObjectContext, what: str, fail: bool) -> Json:
    # As services/_records.confirm: only a reserved (or confirmed) record can be confirmed.
    if fail:
        raise _fail(f"{what} confirmation", ctx.key())
    record: Json = await ctx.get("record") or {}
    if record.get("state") not in ("reserved", "confirmed"):
        raise _fail(f"{what} confirmation (not reserved)", ctx.key())
    record["state"] = "confirmed"
    ctx.set("record", record)
    return {"trip_id": ctx.key(), **record}


async def _set_state(ctx: ObjectContext, state: str) -> Json:
    record: Json = await ctx.get("record") or {}
    record["state"] = state
    ctx.set("record", record)
    return {"trip_id": ctx.key(), **record}


flights = VirtualObject("flights")


@flights.handler("reserve")
async def flight_reserve(ctx: ObjectContext, req: Json) -> Json:
    """Holds a seat; fails terminally when `fail` is set."""
    if req.get("fail"):
        raise _fail("flight reservation", ctx.key())
    record = {"state": "reserved", "booking_id": str(ctx.uuid())}
    ctx.set("record", record)
    return {"trip_id": ctx.key(), **record}


@flights.handler("confirm")
async def flight_confirm(ctx: ObjectContext, req: Json) -> Json:
    """Makes the reserved booking final."""
    return await _confirm(ctx, "flight", bool(req.get("fail")))


@flights.handler("cancel")
async def flight_cancel(ctx: ObjectContext, req: Json) -> Json:
    """Releases the booking whatever its state (a compensation)."""
    return await _set_state(ctx, "cancelled")


cars = VirtualObject("cars")


@cars.handler("reserve")
async def car_reserve(ctx: ObjectContext, req: Json) -> Json:
    """Holds a car; fails terminally when `fail` is set."""
    if req.get("fail"):
        raise _fail("car reservation", ctx.key())
    record = {"state": "reserved", "booking_id": str(ctx.uuid())}
    ctx.set("record", record)
    return {"trip_id": ctx.key(), **record}


@cars.handler("confirm")
async def car_confirm(ctx: ObjectContext, req: Json) -> Json:
    """Makes the reserved booking final."""
    return await _confirm(ctx, "car", bool(req.get("fail")))


@cars.handler("cancel")
async def car_cancel(ctx: ObjectContext, req: Json) -> Json:
    """Releases the booking whatever its state (a compensation)."""
    return await _set_state(ctx, "cancelled")


payments = VirtualObject("payments")


def _charge() -> str:
    # The stand-in payment gateway: non-deterministic, so its answer must be journaled.
    return str(uuid.uuid4())


@payments.handler("process")
async def payment_process(ctx: ObjectContext, req: Json) -> Json:
    """Charges the trip once: the payment id is a journaled side effect."""
    if req.get("fail"):
        raise _fail("payment", ctx.key())
    payment_id = await ctx.run_typed("charge", _charge, RunOptions())
    record = {
        "state": "processed",
        "payment_id": payment_id,
        "amount_cents": int(req.get("amount_cents", 0)),
    }
    ctx.set("record", record)
    return {"trip_id": ctx.key(), **record}


@payments.handler("refund")
async def payment_refund(ctx: ObjectContext, req: Json) -> Json:
    """Gives the money back whatever the state (a compensation)."""
    return await _set_state(ctx, "refunded")


# --------------------------------------------------------------------------- the saga
_notified: set[str] = set()


def _notify(trip_id: str, status: str) -> bool:
    # As services/trips/notifications.py: one fsync'd JSON line per trip, repeats skipped.
    if trip_id not in _notified:
        with open(NOTIFICATION_LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps({"trip_id": trip_id, "status": status}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        _notified.add(trip_id)
    return True


trips = Service("trips")


@trips.handler("reserve")
async def trip_reserve(ctx: Context, req: Json) -> Json:
    """Books flight, car and payment, then confirms both bookings; undoes all on failure."""
    run_type = req.get("run_type", "")
    trip_id = str(ctx.uuid())
    compensations: list[Callable[[], Awaitable[Any]]] = []
    try:
        compensations.append(
            lambda: ctx.object_call(flight_cancel, key=trip_id, arg={"trip_id": trip_id})
        )
        await ctx.object_call(
            flight_reserve,
            key=trip_id,
            arg={"from": req.get("from"), "to": req.get("to"), "date": req.get("date"),
                 "fail": run_type == "failFlightReservation"},
        )  # fmt: skip
        compensations.append(
            lambda: ctx.object_call(car_cancel, key=trip_id, arg={"trip_id": trip_id})
        )
        await ctx.object_call(
            car_reserve,
            key=trip_id,
            arg={"pickup": req.get("to"), "date": req.get("date"),
                 "fail": run_type == "failCarReservation"},
        )  # fmt: skip
        compensations.append(
            lambda: ctx.object_call(payment_refund, key=trip_id, arg={"trip_id": trip_id})
        )
        await ctx.object_call(
            payment_process,
            key=trip_id,
            arg={"amount_cents": req.get("amount_cents", 0), "fail": run_type == "failPayment"},
        )
        await ctx.object_call(
            flight_confirm, key=trip_id, arg={"fail": run_type == "failFlightConfirmation"}
        )
        await ctx.object_call(
            car_confirm, key=trip_id, arg={"fail": run_type == "failCarConfirmation"}
        )
        await ctx.run_typed("notify success", _notify, RunOptions(), trip_id, "success")
    except TerminalError as e:
        applied = 0
        for compensate in reversed(compensations):
            try:
                await compensate()
                applied += 1
            except TerminalError:
                continue
        await ctx.run_typed("notify failure", _notify, RunOptions(), trip_id, "failed")
        raise TerminalError(
            f"trip {trip_id} failed: {e.message}; successfully applied {applied} compensations",
            status_code=e.status_code,
        ) from e
    return {"status": "success", "tripId": trip_id}


app = restate.app(services=[bench, counter, flights, cars, payments, trips])
