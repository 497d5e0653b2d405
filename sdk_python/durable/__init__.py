"""`durable`: write gRPC handlers that survive crashes.

Handlers are `async def handler(ctx, request) -> response` functions bound to a proto
service. Every step they take through `ctx` (calls, side effects, timers, state) is
journaled by the broker, so after a crash the handler replays to where it stopped.
"""

from ._context import Context, DurableFuture, ObjectContext, ObjectSharedContext
from ._endpoint import create_server, serve, serve_async
from ._errors import NonDeterminismError, Suspended, TerminalError
from ._service import Handler, Service, Servicer

__all__ = [
    "Context",
    "DurableFuture",
    "Handler",
    "NonDeterminismError",
    "ObjectContext",
    "ObjectSharedContext",
    "Service",
    "Servicer",
    "Suspended",
    "TerminalError",
    "create_server",
    "serve",
    "serve_async",
]
