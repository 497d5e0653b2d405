"""Which I/O engine gRPC uses in a process that imports `durable` before `grpc`.

gRPC's default engine on Linux (EventEngine) reads and writes sockets on threads of its
own, and grpc.aio hears of each completion on yet another thread: every message crosses
two or three threads before the event loop sees it. The older engine polls from the
thread that waits for completions, so a message costs fewer wake-ups. On a 2-core
machine, in two paired `make bench` runs with client, broker and services all switched,
a lone broker call's p50 went from 3.93 and 3.04 ms to 2.94 and 2.64 ms, and plain
gRPC's from 0.78 and 0.81 ms to 0.62 and 0.65 ms.

gRPC reads `GRPC_EXPERIMENTS` once, when it is imported, so this must run first. The
variable is put back afterwards: child processes (the broker's workers, a test's
services) choose for themselves when they import `durable`. A process that imported
`grpc` already, or whose environment sets `GRPC_EXPERIMENTS` (to anything, even empty,
which means gRPC's defaults), is left as it is.
"""

from __future__ import annotations

import os
import sys

EXPERIMENTS = "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints"
VARIABLE = "GRPC_EXPERIMENTS"


def choose() -> None:
    """Imports grpc with the older engine, unless it is too late or the user chose."""
    if "grpc" in sys.modules or VARIABLE in os.environ:
        return
    os.environ[VARIABLE] = EXPERIMENTS
    try:
        import grpc  # noqa: F401  (the import is the point: gRPC reads the variable now)
    finally:
        os.environ.pop(VARIABLE, None)
