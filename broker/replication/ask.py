"""Requests a failover depends on, asked again soon when they go unanswered.

While a NATS server restarts, each stream it led elects a new leader (seconds), and a
JetStream request sent meanwhile may simply get no answer: nats-py then waits its whole
`API_TIMEOUT_S` (5 s) before it says so. On a new leader's way to serving (the log's
end, its marker) and in the loop that reads the leases, that wait is time the partition
goes without a serving leader, far beyond the lease's 2 s TTL: in a chaos run a take-over
waited 5 s on a stream-info request sent just before the stream's election ended, then
failed, released the lease and took it again; the same request answered in milliseconds.

So a request that is safe to repeat (a read; an append that carries its own message id,
which JetStream deduplicates) gets `ASK_S` per try and is then asked again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors

T = TypeVar("T")

# Far above a JetStream answer on a quorum that has a leader (milliseconds, tens of them
# under load), well below the lease's TTL.
ASK_S = 1.0
# After "no responders" (the stream has no leader yet): a breath before asking again.
_PAUSE_S = 0.1
# What an unanswered request raises: nats-py's timeout (an asyncio.TimeoutError), or
# the stream without a leader to answer.
UNANSWERED: tuple[type[BaseException], ...] = (
    TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
)


async def again(call: Callable[[], Awaitable[T]], timeout: float, per_try: float = ASK_S) -> T:
    """`call()`'s answer, each try bounded by `per_try`, asked again while unanswered
    until `timeout` has passed.

    Raises:
        TimeoutError: no try was answered within `timeout` (or the last try's error,
            whichever of `UNANSWERED` it was). Any other error at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        try:
            return await asyncio.wait_for(call(), max(min(per_try, left), 0.0))
        except UNANSWERED as e:
            if deadline - loop.time() <= 0:
                raise
            if not isinstance(e, TimeoutError):
                # Refused at once rather than lost: do not ask again in a tight loop.
                await asyncio.sleep(min(_PAUSE_S, max(deadline - loop.time(), 0.0)))
