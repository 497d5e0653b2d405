"""Storage failures reach callers as gRPC statuses they can act on.

A handler that reads the store while it is down (reopening after a full disk) or hits a
damaged block would otherwise end in UNKNOWN "Unexpected <class ...>". Mapped here:
`StoreUnavailable` (the store is closed, the broker is reopening it) → UNAVAILABLE,
retry later; any other `StorageError` (a damaged data dir) → DATA_LOSS.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from .storage import StorageError, StoreUnavailable

# At most this many wrapped handlers are kept (the routers' are one per path called).
MAX_WRAPPED = 4096


class StorageErrors(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Turns storage exceptions of unary handlers into UNAVAILABLE or DATA_LOSS."""

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


def _guarded(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with storage exceptions turned into statuses."""
    # Typed for the sync API in grpc-stubs; on an aio server it is a coroutine function.
    inner: Any = handler.unary_unary

    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await inner(request, context)
        except StoreUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{e}; retry later")
        except StorageError as e:
            await context.abort(grpc.StatusCode.DATA_LOSS, str(e))

    wrapped: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(
        guarded,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    return wrapped
