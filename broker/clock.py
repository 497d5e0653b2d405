"""Where the broker reads and waits on time: the wall clock, or a virtual one for tests.

Production uses `WALL` (plain `time.time()` and `loop.call_later`, nothing added). The
test environment's time-skipping mode passes a `VirtualClock`: wall time plus an offset
that jumps forward, so a test of a handler that sleeps a day takes milliseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("broker.clock")

# Seconds the broker must stay idle, checked twice, before a virtual clock skips ahead.
SETTLE_S = 0.005


class Handle(Protocol):
    """A scheduled callback that can be cancelled."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Reads the time and schedules callbacks on it."""

    def time(self) -> float:
        """Seconds since the epoch."""
        ...

    def call_later(
        self, delay: float, callback: Callable[[], None], *, durable: bool = True
    ) -> Handle:
        """Calls `callback` on the running loop once `delay` seconds have passed.

        `durable` marks a timer a handler waits on (a sleep, a retry's backoff): a
        virtual clock may jump to it. Housekeeping (purging) passes False: it runs when
        time passes its due time, but never makes time jump.
        """
        ...


class WallClock:
    """The real clock."""

    def time(self) -> float:
        """`time.time()`."""
        return time.time()

    def call_later(
        self, delay: float, callback: Callable[[], None], *, durable: bool = True
    ) -> Handle:
        """`loop.call_later`."""
        return asyncio.get_running_loop().call_later(delay, callback)


WALL = WallClock()


def now_ms(clock: Clock) -> int:
    """The clock's milliseconds since the epoch."""
    return int(clock.time() * 1000)


class _Timer:
    __slots__ = ("callback", "cancelled", "due", "durable")

    def __init__(self, due: float, callback: Callable[[], None], durable: bool) -> None:
        self.due = due
        self.callback = callback
        self.durable = durable
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """Wall time plus an offset that `advance` and `skip` move forward.

    Time keeps flowing as on the wall clock; on top, `advance(s)` adds `s` seconds and
    fires every timer that became due, in due order, and `skip()` jumps straight to the
    next durable timer. All of it runs on one event loop (the environment's).
    """

    def __init__(self) -> None:
        self._offset = 0.0
        self._heap: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self._wake: asyncio.TimerHandle | None = None

    def time(self) -> float:
        """Wall time plus every advance so far."""
        return time.time() + self._offset

    @property
    def offset(self) -> float:
        """Seconds the clock is ahead of the wall clock."""
        return self._offset

    def call_later(
        self, delay: float, callback: Callable[[], None], *, durable: bool = True
    ) -> Handle:
        """Schedules `callback` at virtual time now + `delay`."""
        timer = _Timer(self.time() + max(0.0, delay), callback, durable)
        heapq.heappush(self._heap, (timer.due, next(self._seq), timer))
        self._rearm()
        return timer

    def next_durable(self) -> float | None:
        """Virtual due time of the earliest pending durable timer, if any."""
        dues = [t.due for _, _, t in self._heap if t.durable and not t.cancelled]
        return min(dues) if dues else None

    def advance(self, seconds: float) -> None:
        """Moves the clock `seconds` forward and fires what became due."""
        if seconds < 0:
            raise ValueError(f"time only moves forward: advance({seconds})")
        self._offset += seconds
        self._fire_due()

    def skip(self) -> bool:
        """Jumps to the next durable timer (if it is in the future) and fires it.

        Returns:
            Whether there was a durable timer to jump to.
        """
        due = self.next_durable()
        if due is None:
            return False
        self.advance(max(0.0, due - self.time()))
        return True

    def _fire_due(self) -> None:
        now = self.time()
        while self._heap and self._heap[0][0] <= now:
            _, _, timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                timer.cancelled = True
                try:
                    timer.callback()
                except Exception:
                    # As the loop does for its own callbacks: one failure must not
                    # keep the timers due after it from firing.
                    log.exception("a virtual clock callback failed")
        self._rearm()

    def _rearm(self) -> None:
        # One real loop timer, for the earliest virtual one: time keeps flowing.
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        if self._heap:
            delay = max(0.0, self._heap[0][0] - self.time())
            self._wake = asyncio.get_running_loop().call_later(delay, self._fire_due)


async def auto_skip(clock: VirtualClock, idle: Callable[[], bool]) -> None:
    """Jumps `clock` to its next durable timer whenever `idle()` holds; runs until
    cancelled.

    `idle` must be checked twice, `SETTLE_S` apart: a message handed between the broker
    and an in-process endpoint over loopback lands in between (polling, not events: it
    only runs in tests, and the broker's hot paths stay as they are).
    """
    while True:
        await asyncio.sleep(SETTLE_S)
        if clock.next_durable() is None or not idle():
            continue
        await asyncio.sleep(SETTLE_S)
        if idle():
            clock.skip()
