"""Per-service and per-handler limits: how many invocations may run at once, and how
many may start per second; and the queue of those waiting for either.

Pure bookkeeping: no clock of its own (callers pass `now_ms`), no I/O. The partition
writes each change of the durable queue to the limit-queue table in the same batch.

What holds a slot: an invocation from the moment it starts until it completes, except
while it is suspended. A suspended invocation holds no stream and costs its service
nothing, and if it held its slot, a handler that calls (and suspends on) its own limited
service would deadlock as soon as N callers wait on N queued callees. When a suspended
invocation is resumed it takes a slot again, ahead of every invocation that has not
started yet (so work already begun finishes first), but it never counts against the
start rate: the rate limits new starts. Retrying (backing-off) and paused invocations
keep their slot: they are mid-execution and will use the service again.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Iterable

Scope = tuple[str, str]  # (service, method); method "" means the whole service

# Queue priorities: resumed invocations first, then new ones, each in arrival order.
RESUME = 0
FRESH = 1

# The slowest start rate a limit may have: one start every 11.6 days. A slower one is no
# one's intent, and below about 1e-308 the wait for the next token overflowed.
MIN_RATE = 1e-6


def rate_problem(rate: float) -> str | None:
    """Why `rate` (starts per second, 0 for none) cannot be a limit's, if it cannot."""
    if not math.isfinite(rate) or rate < 0:
        return f"rate must be 0 or more per second, not {rate}"
    if 0 < rate < MIN_RATE:
        return (
            f"rate {rate:g} per second is below the slowest rate a limit takes, {MIN_RATE:g} "
            f"per second (one start every {1 / MIN_RATE / 86400:.1f} days)"
        )
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Limit:
    """A scope's limits; 0 means unlimited."""

    concurrency: int = 0
    rate: float = 0.0

    @property
    def unlimited(self) -> bool:
        """Whether the limit limits nothing."""
        return self.concurrency <= 0 and self.rate <= 0


class _Bucket:
    """A token bucket holding at most `rate` tokens (at least one), refilled at `rate`
    per second: a burst of up to one second's worth, then `rate` per second.

    Full when an operator sets the limit; empty otherwise (the first start after the
    process starts, or under a limit the `.proto` declares): the tokens are not stored,
    and a broker restarted in a loop must not let a burst through each time.
    """

    __slots__ = ("last_ms", "rate", "tokens")

    def __init__(self, rate: float, now_ms: int, full: bool = False) -> None:
        self.rate = rate
        self.tokens = self.capacity if full else 0.0
        self.last_ms = now_ms

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate)

    def refill(self, now_ms: int) -> None:
        if now_ms > self.last_ms:
            earned = (now_ms - self.last_ms) * self.rate / 1000
            self.tokens = min(self.capacity, self.tokens + earned)
            self.last_ms = now_ms

    def ready_at(self) -> int:
        """When the next whole token will be there (after `refill`)."""
        missing = max(0.0, 1.0 - self.tokens)
        # Capped at MIN_RATE's wait: a slower limit stored before it was refused would
        # otherwise overflow int() in the middle of an event.
        wait = min(missing * 1000 / self.rate, 1000 / MIN_RATE)
        return self.last_ms + max(1, int(wait + 0.999))


@dataclasses.dataclass(order=True, frozen=True, slots=True)
class Waiter:
    """An invocation waiting for a slot or a token."""

    priority: int
    seq: int
    invocation_id: str = dataclasses.field(compare=False)
    method: str = dataclasses.field(compare=False)


class Limiter:
    """The limits in force, who holds a slot, the token buckets and the waiting queues."""

    def __init__(self, declared: Callable[[str], dict[str, Limit]] | None = None) -> None:
        # What a service's `.proto` declares, by method ("" for the service), read from
        # the registry each time (a new deployment may declare other limits).
        self._declared = declared or (lambda service: {})
        self._set: dict[Scope, Limit] = {}
        self._holders: dict[str, Scope] = {}  # invocation -> (service, method) it runs as
        self._running: dict[Scope, int] = {}
        self._buckets: dict[Scope, _Bucket] = {}
        self._queues: dict[str, list[Waiter]] = {}  # by service, sorted
        self._queued: dict[str, tuple[str, Waiter]] = {}  # invocation -> (service, waiter)
        self._seq = 0

    # ---- Configuration

    def set(self, scope: Scope, limit: Limit | None, now_ms: int | None = None) -> None:
        """Sets (or, with None, clears) a run-time limit; with `now_ms` (an operator's
        change, not a restart's reload) a rate starts with a full bucket."""
        if limit is None:
            self._set.pop(scope, None)
        else:
            self._set[scope] = limit
        self._buckets.pop(scope, None)
        if limit is not None and limit.rate > 0 and now_ms is not None:
            self._buckets[scope] = _Bucket(limit.rate, now_ms, full=True)

    def limit(self, scope: Scope) -> Limit:
        """The limit in force: the run-time one, else the declared one, else none."""
        return self._set.get(scope) or self._declared(scope[0]).get(scope[1]) or Limit()

    def configured(self, services: Iterable[str]) -> dict[Scope, tuple[Limit | None, Limit | None]]:
        """(run-time, declared) limits of every scope that has one (declared ones of
        `services` only)."""
        out: dict[Scope, tuple[Limit | None, Limit | None]] = {
            scope: (limit, None) for scope, limit in self._set.items()
        }
        for service in services:
            for method, limit in self._declared(service).items():
                out[(service, method)] = (self._set.get((service, method)), limit)
        return dict(sorted(out.items()))

    def running(self, scope: Scope) -> int:
        """How many invocations hold a slot in the scope."""
        return self._running.get(scope, 0)

    def queued(self, service: str) -> list[Waiter]:
        """The service's waiting invocations, first in line first."""
        return list(self._queues.get(service, ()))

    # ---- Slots

    def holds(self, invocation_id: str) -> bool:
        """Whether the invocation holds a slot."""
        return invocation_id in self._holders

    def is_queued(self, invocation_id: str) -> bool:
        """Whether the invocation waits in a queue."""
        return invocation_id in self._queued

    def hold(self, invocation_id: str, service: str, method: str) -> None:
        """Gives the invocation a slot, whatever the limit (it runs already)."""
        if invocation_id in self._holders:
            return
        self._holders[invocation_id] = (service, method)
        for scope in ((service, ""), (service, method)):
            self._running[scope] = self._running.get(scope, 0) + 1

    def release(self, invocation_id: str) -> str | None:
        """Frees the invocation's slot; returns its service if it held one."""
        scope = self._holders.pop(invocation_id, None)
        if scope is None:
            return None
        service, method = scope
        for s in ((service, ""), (service, method)):
            left = self._running.get(s, 0) - 1
            if left > 0:
                self._running[s] = left
            else:
                self._running.pop(s, None)
        return service

    def limited(self, service: str) -> bool:
        """Whether anything about the service is limited or waiting."""
        if self._queues.get(service):
            return True
        if any(s == service and not limit.unlimited for (s, _), limit in self._set.items()):
            return True
        return any(not limit.unlimited for limit in self._declared(service).values())

    # ---- Queues

    def enqueue(self, invocation_id: str, service: str, method: str, priority: int) -> int:
        """Queues the invocation; returns its sequence number."""
        self._seq += 1
        self._insert(service, Waiter(priority, self._seq, invocation_id, method))
        return self._seq

    def restore(self, invocation_id: str, service: str, method: str, seq: int) -> None:
        """Puts back a queued invocation read from storage (new ones only are stored)."""
        self._seq = max(self._seq, seq)
        self._insert(service, Waiter(FRESH, seq, invocation_id, method))

    def _insert(self, service: str, waiter: Waiter) -> None:
        bisect.insort(self._queues.setdefault(service, []), waiter)
        self._queued[waiter.invocation_id] = (service, waiter)

    def leave(self, invocation_id: str) -> Waiter | None:
        """Takes the invocation out of its queue (it ended while waiting)."""
        found = self._queued.pop(invocation_id, None)
        if found is None:
            return None
        service, waiter = found
        queue = self._queues[service]
        queue.remove(waiter)
        if not queue:
            del self._queues[service]
        return waiter

    def services_waiting(self) -> list[str]:
        """Services with a non-empty queue."""
        return list(self._queues)

    def admit(self, service: str, now_ms: int) -> tuple[list[Waiter], int | None]:
        """Takes off the service's queue, in order, every invocation that may start now,
        giving each its slot (and a token, for new ones). Returns them, and when to look
        again if some wait for tokens only (None: a completion will wake them).

        The queue is served in order: when the whole service is out of slots or tokens
        nobody behind passes; a waiter blocked only by its own handler's limit lets the
        invocations of other handlers behind it go.
        """
        queue = self._queues.get(service)
        if not queue:
            return [], None
        out: list[Waiter] = []
        wake: int | None = None
        blocked_methods: set[str] = set()
        i = 0  # no copy of the queue: it may be long, and most calls stop at its head
        while i < len(queue):
            waiter = queue[i]
            if waiter.method in blocked_methods:
                i += 1
                continue
            verdict = self._may_start(service, waiter, now_ms)
            if verdict is None:
                del queue[i]
                del self._queued[waiter.invocation_id]
                self.hold(waiter.invocation_id, service, waiter.method)
                if waiter.priority == FRESH:
                    for scope in ((service, ""), (service, waiter.method)):
                        bucket = self._buckets.get(scope)
                        if bucket is not None:
                            bucket.tokens -= 1
                out.append(waiter)
                continue
            scope_blocked, at = verdict
            if at is not None:
                wake = at if wake is None else min(wake, at)
            if scope_blocked == "":
                break  # the service itself is full: nobody behind may pass
            blocked_methods.add(waiter.method)
            i += 1
        if not queue:
            del self._queues[service]
        return out, wake

    def _may_start(
        self, service: str, waiter: Waiter, now_ms: int
    ) -> tuple[str, int | None] | None:
        """None if it may start, else (the blocked scope's method, and when tokens refill
        if tokens are all it lacks)."""
        for method in ("", waiter.method):
            scope = (service, method)
            limit = self.limit(scope)
            if limit.concurrency > 0 and self.running(scope) >= limit.concurrency:
                return method, None
            if limit.rate > 0 and waiter.priority == FRESH:
                bucket = self._buckets.get(scope)
                if bucket is None or bucket.rate != limit.rate:
                    bucket = self._buckets[scope] = _Bucket(limit.rate, now_ms)
                bucket.refill(now_ms)
                if bucket.tokens < 1:
                    return method, bucket.ready_at()
        return None
