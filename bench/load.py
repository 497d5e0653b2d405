"""A closed-loop load generator: N clients, each issuing its next call as soon as the last
one returns; a warm-up, then a measured window of fixed length.

A call counts in the window when it *completes* inside it, so throughput is completions per
second of steady state and every latency sample is a whole call. After the window, clients
stop issuing and the calls still in flight are given time to finish (they are not counted).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable

import grpc

# Pause after a failed call, so a dead server does not turn the loop into a busy spin.
ERROR_PAUSE_S = 0.01

Call = Callable[[float], Awaitable[None]]
"""One call of a scenario; its argument is the per-call timeout in seconds. It raises
`grpc.aio.AioRpcError` or `BadResponse` on failure."""


class BadResponse(Exception):
    """The call returned, but not what the scenario expects (e.g. a saga that failed)."""


@dataclasses.dataclass
class Window:
    """What one measured window saw.

    Attributes:
        latencies: Seconds per call, for every call that succeeded inside the window.
        errors: Failed calls inside the window, by gRPC status code (or `BAD_RESPONSE`).
        error_samples: The first message seen for each kind of error.
        seconds: The window's actual length.
        deltas: How much each probed counter grew during the window: CPU seconds by role
            (`broker`, `service`, `direct`, `client`, `other`) and the broker's own
            counters (`metric:<name>`) when it serves metrics.
        unfinished: Calls still in flight when the drain after the window gave up.
    """

    latencies: list[float]
    errors: collections.Counter[str]
    error_samples: dict[str, str]
    seconds: float
    deltas: dict[str, float]
    unfinished: int

    @property
    def ok(self) -> int:
        """Successful calls inside the window."""
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        """Successful calls per second."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        """The `q`-quantile of latency in seconds (nearest rank), NaN with no samples."""
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def closed_loop(
    call: Call,
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    probe: Callable[[], dict[str, float]],
    call_timeout: float,
    drain_timeout: float,
) -> Window:
    """Runs `concurrency` clients calling `call` back to back and measures one window.

    Args:
        call: One call of the scenario.
        concurrency: How many clients, i.e. calls in flight at any time.
        warmup: Seconds of load before the window opens.
        duration: Seconds the window stays open.
        probe: Reads counters (CPU seconds by role, ...); called as the window opens and closes.
        call_timeout: The deadline of every call.
        drain_timeout: How long to wait for in-flight calls once the window has closed.
    """
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    samples: dict[str, str] = {}
    recording = False
    stopping = False

    async def client() -> None:
        while not stopping:
            start = time.perf_counter()
            kind: str | None = None
            try:
                await call(call_timeout)
            except grpc.aio.AioRpcError as e:
                kind, message = e.code().name, e.details() or ""
            except BadResponse as e:
                kind, message = "BAD_RESPONSE", str(e)
            elapsed = time.perf_counter() - start
            if kind is None:
                if recording:
                    latencies.append(elapsed)
                continue
            if recording:
                errors[kind] += 1
                samples.setdefault(kind, message)
            await asyncio.sleep(ERROR_PAUSE_S)

    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
    try:
        await _sleep_watching(tasks, warmup)
        before = probe()
        opened = time.perf_counter()
        recording = True
        await _sleep_watching(tasks, duration)
        recording = False
        closed = time.perf_counter()
        after = probe()
        stopping = True
        _, pending = await asyncio.wait(tasks, timeout=drain_timeout)
    finally:
        stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return Window(
        latencies=latencies,
        errors=errors,
        error_samples=samples,
        seconds=closed - opened,
        deltas={name: after[name] - before.get(name, 0.0) for name in after},
        unfinished=len(pending),
    )


async def _sleep_watching(tasks: list[asyncio.Task[None]], seconds: float) -> None:
    """Sleeps `seconds`, but re-raises at once if a client crashed (a bug, not an error)."""
    done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        task.result()
