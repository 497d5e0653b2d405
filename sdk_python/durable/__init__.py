"""`durable`: write gRPC handlers that survive crashes.

Handlers are `async def handler(ctx, request) -> response` functions bound to a proto
service. Every step they take through `ctx` (calls, side effects, timers, state,
awakeables, promises) is journaled by the broker, so after a crash the handler replays
to where it stopped.
"""

from ._context import (
    Context,
    DurablePromise,
    ObjectContext,
    ObjectSharedContext,
    WorkflowContext,
    WorkflowSharedContext,
)
from ._endpoint import create_server, serve, serve_async
from ._errors import NonDeterminismError, RetryableError, Suspended, TerminalError
from ._futures import DurableFuture, gather, select
from ._retry import RetryPolicy
from ._service import Handler, Service, Servicer

__all__ = [
    "Context",
    "DurableFuture",
    "DurablePromise",
    "Handler",
    "NonDeterminismError",
    "ObjectContext",
    "ObjectSharedContext",
    "RetryPolicy",
    "RetryableError",
    "Service",
    "Servicer",
    "Suspended",
    "TerminalError",
    "WorkflowContext",
    "WorkflowSharedContext",
    "create_server",
    "gather",
    "select",
    "serve",
    "serve_async",
]
