"""A JSON record in a virtual object's state, answered as the service's status message.

The flights, cars and payments services each keep one such record per trip; this holds
the load/update/answer logic they share, typed by their own status message.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import durable
import grpc
from google.protobuf.message import Message

S = TypeVar("S", bound=Message)


class Record(Generic[S]):
    """The record under `state_key`, rendered as `status_type(trip_id=key, **fields)`.

    Args:
        state_key: The state entry holding the record.
        status_type: The status message to answer with.
        fields: The record fields copied into the status message, with their defaults.
    """

    def __init__(self, state_key: str, status_type: type[S], fields: dict[str, Any]) -> None:
        self.state_key = state_key
        self.status_type = status_type
        self.fields = fields

    async def load(self, ctx: durable.ObjectSharedContext) -> dict[str, Any]:
        """The record, empty when the trip is unknown."""
        record: dict[str, Any] = await ctx.get(self.state_key, {})
        return record

    def status(self, ctx: durable.ObjectSharedContext, record: dict[str, Any]) -> S:
        """The record as the status message."""
        values = {name: record.get(name, default) for name, default in self.fields.items()}
        return self.status_type(trip_id=ctx.key, **values)

    def save(self, ctx: durable.ObjectContext, record: dict[str, Any]) -> S:
        """Writes the record and answers with it."""
        ctx.set(self.state_key, record)
        return self.status(ctx, record)

    async def update(self, ctx: durable.ObjectContext, **changes: Any) -> S:
        """Changes some fields of the record (creating it if needed) and answers with it."""
        record = await self.load(ctx)
        record.update(changes)
        return self.save(ctx, record)

    async def get(self, ctx: durable.ObjectSharedContext) -> S:
        """The current record as the status message."""
        return self.status(ctx, await self.load(ctx))


async def confirm(
    ctx: durable.ObjectContext, bookings: Record[S], what: str, fail: bool, rejected_by: str
) -> S:
    """Makes a reserved booking final; fails terminally when asked to, or when there is
    nothing reserved to confirm."""
    if fail:
        raise durable.TerminalError(
            f"{what} confirmation failed for trip {ctx.key}: {rejected_by} rejected it",
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    record = await bookings.load(ctx)
    state = record.get("state", "")
    if state not in ("reserved", "confirmed"):
        raise durable.TerminalError(
            f"{what} of trip {ctx.key} cannot be confirmed: it is {state or 'not reserved'}",
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    record["state"] = "confirmed"
    return bookings.save(ctx, record)
