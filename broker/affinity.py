"""Keeps the broker's Python threads on one CPU while it serves one call at a time.

A lone call crosses several of the process's threads: gRPC's completion-queue poller
hands every event to the event loop, the loop hands fsyncs to the sync thread and back.
The three hold the GIL in turn and never run Python side by side; yet the kernel spreads
them over the CPUs, and on a virtual machine waking a thread on an idle CPU (a halted
vCPU) costs more than the work it hands over. Kept on the loop's CPU, each hand-off is
a switch on a CPU that is already awake.

Measured on 2 vCPUs (`python -m bench.ab`, keyed lone calls, 40 paired rounds, twice):
5.5-8.6% lower p50 and 7-11% less broker CPU per call. Pinned all the time, the same
threads cost 10-17% of the throughput at 64 callers (the poller and the sync thread do
run beside the loop then, out of the GIL), so the pin is held only while at most one
attempt is in flight, dropped the moment a second one starts, and taken again only after
a quiet spell. gRPC's own I/O threads (not Python's) are never pinned. Linux only; a
process allowed a single CPU has nothing to gain.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

log = logging.getLogger("broker")

# After the last moment two attempts ran at once, how long before pinning again: load
# that comes and goes keeps the threads free instead of moving them at every call.
SETTLE_S = 0.2
# A pin lasts this long at most, then the kernel places the threads afresh (the next lone
# attempt pins them where they run then): a CPU that another process took over since
# holds the broker for a second at worst.
REPLACE_S = 1.0


class Affinity:
    """What pinning needs from the OS (Linux's sched_setaffinity), replaceable in tests."""

    def allowed(self) -> set[int]:
        """The CPUs this process may run on (as started: `taskset` is respected)."""
        return set(os.sched_getaffinity(0))

    def current_cpu(self) -> int:
        """The CPU the calling thread runs on now."""
        with open("/proc/thread-self/stat", "rb") as f:
            # Field 39, counted after the command name (which may hold spaces).
            return int(f.read().rsplit(b")", 1)[1].split()[36])

    def python_threads(self) -> Iterable[int]:
        """Thread ids of the threads that run Python (and so share the GIL)."""
        return [t.native_id for t in threading.enumerate() if t.native_id is not None]

    def all_threads(self) -> Iterable[int]:
        """Thread ids of every thread of the process, gRPC's and RocksDB's included."""
        return [int(tid) for tid in os.listdir("/proc/self/task")]

    def set(self, thread_id: int, cpus: set[int]) -> None:
        try:
            os.sched_setaffinity(thread_id, cpus)
        except OSError:
            # The thread ended meanwhile, is not ours to move, or the container's CPU
            # set changed: it stays where it is, which is never wrong, only slower.
            pass


def supported() -> bool:
    """Whether this OS lets a process pin its threads."""
    return hasattr(os, "sched_setaffinity") and os.path.exists("/proc/thread-self/stat")


class QuietPinning:
    """Pins the Python threads to the loop's CPU while attempts come one at a time.

    Args:
        affinity: The OS calls (tests pass a fake).
        clock: Monotonic seconds.
    """

    def __init__(
        self, affinity: Affinity | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._os = affinity or Affinity()
        self._clock = clock
        self._allowed = self._os.allowed()
        self.pinned_to: int | None = None
        self._pinned_at = 0.0
        # When two attempts last ran at once (never: pin at the first lone one).
        self._busy_at = -SETTLE_S
        self.pins = 0

    def attempts_in_flight(self, count: int) -> None:
        """Told each time an attempt starts, with how many run now (that one included)."""
        now = self._clock()
        if count > 1:
            self._busy_at = now
            if self.pinned_to is not None:
                self.unpin()
        elif self.pinned_to is None:
            if now - self._busy_at >= SETTLE_S:
                self._pin(now)
        elif now - self._pinned_at >= REPLACE_S:
            self.unpin()

    def _pin(self, now: float) -> None:
        if len(self._allowed) < 2:
            return
        try:
            cpu = self._os.current_cpu()
        except (OSError, ValueError, IndexError):
            return
        if cpu not in self._allowed:
            return
        for thread_id in self._os.python_threads():
            self._os.set(thread_id, {cpu})
        self.pinned_to = cpu
        self._pinned_at = now
        self.pins += 1
        if self.pins == 1:
            # Once per process: whoever reads `taskset -p` learns why, and how to stop it.
            log.info(
                "one attempt at a time: the broker's Python threads run on CPU %d while "
                "that lasts (--no-pin-when-quiet turns this off)",
                cpu,
            )

    def unpin(self) -> None:
        """Lets every thread run anywhere it was allowed to again (threads started while
        pinned inherited the pin, gRPC's among them: all are set free)."""
        try:
            threads = self._os.all_threads()
        except OSError:
            threads = self._os.python_threads()
        for thread_id in threads:
            self._os.set(thread_id, self._allowed)
        self.pinned_to = None
