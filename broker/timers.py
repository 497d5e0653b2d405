"""Fires durable timers at their due time (late ones at once, e.g. after a restart)."""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable

FireFn = Callable[[int, str, int], None]


class TimerQueue:
    """An in-memory heap over the durable timer table, woken on earlier timers.

    Args:
        fire: Called with (due_ms, invocation_id, entry_index) when a timer is due.
    """

    def __init__(self, fire: FireFn) -> None:
        self._fire = fire
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
        while True:
            self._changed.clear()
            now = int(time.time() * 1000)
            while self._heap and self._heap[0][0] <= now:
                self._fire(*heapq.heappop(self._heap))
            wait = (self._heap[0][0] - now) / 1000 if self._heap else None
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=wait)
            except TimeoutError:
                pass
