"""Fires durable timers at their due time (late ones at once, e.g. after a restart)."""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable

from .clock import WALL, Clock, Handle, now_ms

FireFn = Callable[[int, str, int], None]

log = logging.getLogger("broker.timers")

# How soon a timer that could not fire is tried again.
RETRY_S = 1.0


class TimerQueue:
    """An in-memory heap over the durable timer table, woken on earlier timers.

    Args:
        fire: Called with (due_ms, invocation_id, entry_index) when a timer is due.
        clock: What "due" is measured on (a test's virtual clock, or the wall).
    """

    def __init__(self, fire: FireFn, clock: Clock = WALL) -> None:
        self._fire = fire
        self._clock = clock
        self._heap: list[tuple[int, str, int]] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, due_ms: int, invocation_id: str, entry_index: int) -> None:
        """Schedules a timer already written to storage."""
        heapq.heappush(self._heap, (due_ms, invocation_id, entry_index))
        self._changed.set()

    def start(self) -> None:
        """Starts firing timers."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stops firing timers."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        failing = False
        while True:
            self._changed.clear()
            now = now_ms(self._clock)
            deferred: list[tuple[int, str, int]] = []
            while self._heap and self._heap[0][0] <= now:
                timer = heapq.heappop(self._heap)
                try:
                    self._fire(*timer)
                except Exception as e:
                    # The store is unavailable (e.g. reopening after a full disk): the
                    # timer stays (in storage too) and fires once it can. Said once.
                    if not failing:
                        log.error(
                            "firing a due timer failed, retrying: %s: %s", type(e).__name__, e
                        )
                    failing = True
                    deferred.append(timer)
            if failing and not deferred:
                log.warning("due timers fire again")
                failing = False
            wait = (self._heap[0][0] - now) / 1000 if self._heap else None
            if deferred:
                wait = RETRY_S if wait is None else min(wait, RETRY_S)
                for timer in deferred:
                    heapq.heappush(self._heap, timer)
            # Woken by the clock at the next due time (a virtual clock may jump to it)
            # or by an earlier timer being added.
            wake: Handle | None = None
            if wait is not None:
                wake = self._clock.call_later(wait, self._changed.set, durable=not deferred)
            try:
                await self._changed.wait()
            finally:
                if wake is not None:
                    wake.cancel()
