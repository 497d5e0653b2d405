"""Throughput over the last minutes: the broker's event counters (GetStats) sampled
every few seconds, differenced per minute."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from durable.v1 import admin_pb2

log = logging.getLogger("broker.console")

EVENTS = ("started", "completed", "failed")
MINUTES = 15
SAMPLE_S = 5.0


class Rates:
    """Samples of the counters summed over services: (monotonic seconds, totals)."""

    def __init__(self, fetch: Callable[[], Awaitable[admin_pb2.GetStatsResponse]]) -> None:
        self._fetch = fetch
        self.samples: collections.deque[tuple[float, dict[str, int]]] = collections.deque(
            maxlen=int(MINUTES * 60 / SAMPLE_S) + 2
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # The loop outlives failed samples; whatever else ended it must not turn a
            # shutdown into a crash (it skipped stopping the workers).
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    @staticmethod
    def totals(stats: admin_pb2.GetStatsResponse) -> dict[str, int]:
        """The counters summed over services."""
        totals = dict.fromkeys(EVENTS, 0)
        for service in stats.counters:
            for event in EVENTS:
                totals[event] += service.events.get(event, 0)
        return totals

    def record(self, stats: admin_pb2.GetStatsResponse, at: float | None = None) -> None:
        """Adds a sample."""
        self.samples.append((time.monotonic() if at is None else at, self.totals(stats)))

    async def _loop(self) -> None:
        failing = False
        while True:
            try:
                self.record(await self._fetch())
                failing = False
            except Exception as e:  # a partition down for a while: sample again later
                if not failing:
                    log.warning("the console's throughput sample failed: %s", e)
                failing = True
            await asyncio.sleep(SAMPLE_S)

    def per_minute(
        self, now: float | None = None, current: admin_pb2.GetStatsResponse | None = None
    ) -> list[dict[str, int]]:
        """Events in each of the last MINUTES minutes, oldest first (0 before sampling
        began); `current` counts as a sample taken now (it is not kept)."""
        now = time.monotonic() if now is None else now
        samples = list(self.samples)
        if current is not None:
            samples.append((now, self.totals(current)))
        out = []
        for m in range(MINUTES, 0, -1):
            start, end = now - m * 60, now - (m - 1) * 60
            inside = [s for s in samples if start <= s[0] <= end]
            before = [s for s in samples if s[0] < start]
            series = ([before[-1]] if before else []) + inside
            # Summed step by step, a step down counted as none: a restarted worker's
            # counters start again from zero (a difference of the ends went negative).
            out.append(
                {
                    e: sum(max(0, b[1][e] - a[1][e]) for a, b in itertools.pairwise(series))
                    for e in EVENTS
                }
            )
        return out
