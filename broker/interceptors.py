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


class StorageErrors(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Turns storage exceptions of unary handlers into UNAVAILABLE or DATA_LOSS."""

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
