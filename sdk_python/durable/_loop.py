"""Which event loop runs the broker and service endpoints.

uvloop when it is installed (it is a dependency), because scheduling tasks and
callbacks is a large share of what a broker or endpoint does per message; the plain
asyncio loop when `DURABLE_EVENT_LOOP=asyncio` asks for it, for comparison and debugging.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_name() -> str:
    """`uvloop` or `asyncio`: the loop `run` uses."""
    if os.environ.get("DURABLE_EVENT_LOOP", "uvloop") == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on the chosen loop."""
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
