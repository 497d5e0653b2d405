"""Checks of the admin API's request fields, shared by its servicer and its mixins."""

from __future__ import annotations

from typing import Any

import grpc

from . import registry as reg


async def check_payload(
    context: grpc.aio.ServicerContext[Any, Any], what: str, size: int, limit: int
) -> None:
    """RESOURCE_EXHAUSTED for a value over `--max-payload-bytes`: a handler could not
    journal it either. (The server takes in a little more than the limit, so that a
    value at it passes with its request's other fields.)"""
    if size > limit:
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{what} is {size} bytes, over the broker's {limit}-byte payload limit "
            "(--max-payload-bytes)",
        )


async def check_part(context: grpc.aio.ServicerContext[Any, Any], what: str, value: str) -> None:
    """INVALID_ARGUMENT for an empty id, key or name, or one longer than storage holds:
    an empty one is a caller's mistake, not a lookup that found nothing."""
    if not value:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what} is required")
    try:
        reg.check_part(what, value)
    except reg.BadRequest as e:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, e.message)
