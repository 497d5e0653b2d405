"""Failures reach callers as gRPC statuses they can act on.

A handler that fails with an exception would otherwise end in UNKNOWN "Unexpected
<class ...>" and a traceback in the log. Mapped here, for every unary handler:
- a request body that does not parse as the method's message → INVALID_ARGUMENT;
- a key or name too long for storage (`KeyTooLong`) → INVALID_ARGUMENT;
- `StoreUnavailable` (the store is closed, the broker is reopening it) → UNAVAILABLE,
  retry later; any other `StorageError` (a damaged data dir) → DATA_LOSS.

And a status message too long for a gRPC status is cut to fit: the message travels as a
header, and a client refuses headers past its limit (16 KiB by default), so a long
failure message or a quoted id of 20,000 characters would reach the caller as
RESOURCE_EXHAUSTED "metadata size exceeds hard limit" instead of its own code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from durable.wire import Unparsed, lenient

from .storage import StorageError, StoreUnavailable
from .storage.keys import KeyTooLong

# At most this many wrapped handlers are kept (the routers' are one per path called).
MAX_WRAPPED = 4096
# A status message's size once percent-encoded for its header, at most: under gRPC's
# default 8 KiB soft limit on a response's headers, with room for the others.
MAX_DETAILS_BYTES = 6000


def _header_bytes(char: str) -> int:
    """What `char` takes in a `grpc-message` header: printable ASCII other than `%` as
    is, every other byte of its UTF-8 as `%XX`."""
    return 1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode())


def _prefix(details: str, limit: int) -> int:
    """How many characters of `details` fit in `limit` header bytes."""
    size = 0
    for i, char in enumerate(details):
        size += _header_bytes(char)
        if size > limit:
            return i
    return len(details)


def fit_details(details: str, limit: int = MAX_DETAILS_BYTES) -> str:
    """`details`, cut if need be to `limit` bytes as a `grpc-message` header carries it,
    saying how much was cut."""
    if len(details) * 12 <= limit:  # a character takes at most 12 header bytes
        return details
    if _prefix(details, limit) == len(details):
        return details
    note = " [... {} more characters cut to fit a gRPC status]"
    kept = _prefix(details, limit - len(note.format(len(details))))
    return details[:kept] + note.format(len(details) - kept)


class ErrorStatuses(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Turns the failures above into statuses, for every unary handler."""

    def __init__(self) -> None:
        # Each handler's wrapper, made once: the routers and generated services hand
        # out the same handler for a method call after call.
        self._wrapped: dict[Any, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        wrapped = self._wrapped.get(handler)
        if wrapped is None:
            if len(self._wrapped) >= MAX_WRAPPED:
                self._wrapped.clear()
            wrapped = self._wrapped[handler] = _guarded(handler)
        return wrapped


def _lenient(parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    # None: the handler takes the bytes (the routers) and parses them itself.
    return None if parse is None else lenient(parse)


class _FittedDetails:
    """A handler's context whose status messages are cut to fit a gRPC status."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        await self._context.abort(code, fit_details(details), trailing_metadata)

    def set_details(self, details: str) -> None:
        self._context.set_details(fit_details(details))


def _guarded(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with the failures above turned into statuses."""
    # Typed for the sync API in grpc-stubs; on an aio server it is a coroutine function.
    inner: Any = handler.unary_unary

    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Unparsed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, fit_details(request.problem))
        try:
            return await inner(request, _FittedDetails(context))
        except KeyTooLong as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except StoreUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{e}; retry later")
        except StorageError as e:
            await context.abort(grpc.StatusCode.DATA_LOSS, fit_details(str(e)))

    wrapped: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(
        guarded,
        request_deserializer=_lenient(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )
    return wrapped
