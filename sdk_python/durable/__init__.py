"""`durable`: write gRPC handlers that survive crashes.

Handlers are `async def handler(ctx, request) -> response` functions bound to a proto
service. Every step they take through `ctx` (calls, side effects, timers, state,
awakeables, promises) is journaled by the broker, so after a crash the handler replays
to where it stopped.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import _grpc_engine

_grpc_engine.choose()

if TYPE_CHECKING:
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

# The public API is imported on first use (PEP 562): the broker and `brokerctl` import
# `durable.v1`, `durable.wire` and `durable.tracing`, and a package's `__init__` runs for
# every submodule, so importing the handler runtime here cost each of their starts for
# nothing. `durable.Context`, `from durable import Context` and `import *` all still work.
_LAZY: dict[str, str] = {
    "Context": "._context",
    "DurablePromise": "._context",
    "ObjectContext": "._context",
    "ObjectSharedContext": "._context",
    "WorkflowContext": "._context",
    "WorkflowSharedContext": "._context",
    "create_server": "._endpoint",
    "serve": "._endpoint",
    "serve_async": "._endpoint",
    "NonDeterminismError": "._errors",
    "RetryableError": "._errors",
    "Suspended": "._errors",
    "TerminalError": "._errors",
    "DurableFuture": "._futures",
    "gather": "._futures",
    "select": "._futures",
    "RetryPolicy": "._retry",
    "Handler": "._service",
    "Service": "._service",
    "Servicer": "._service",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
