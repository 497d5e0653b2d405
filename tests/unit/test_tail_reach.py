"""A new leader's wait for the log (`reach_through`) when the tail it waits on failed.

Found by the chaos runner's pause fault: a node woke from SIGSTOP while NATS servers
restarted, its tail of a partition it was taking over failed ("nats: timeout"), and the
take-over's wait asked the failed tail again and again without ever yielding: the node's
event loop hung for the whole 60 s catch-up bound (no lease renewed, no caller answered),
and the follower that would have started a new tail never ran.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

from nats.js import JetStreamContext

from broker.replication.tail import Tail, reach_through
from broker.storage.kv import MemoryKV

# Far longer than the follower's pause before it starts a new tail (1 s in a replica).
TIMEOUT_S = 5.0


def _tail(applied: int = 0, failed: BaseException | None = None) -> Tail:
    """A tail that is not following (no NATS): only its position and failure count."""
    tail = Tail(cast(JetStreamContext, None), 0, MemoryKV())
    tail.applied = tail.read = applied
    tail.failed = failed
    return tail


def test_a_failed_tail_is_waited_through_without_holding_the_event_loop() -> None:
    async def main() -> tuple[bool, float, int]:
        tails = [_tail(applied=3, failed=RuntimeError("nats: timeout"))]
        ticks = 0

        async def follower() -> None:
            # What `Replica._follow` does: a moment after a tail failed, a new one starts
            # and catches up.
            nonlocal ticks
            for _ in range(4):
                await asyncio.sleep(0.02)
                ticks += 1
            tails.append(_tail(applied=7))

        started = time.monotonic()
        following = asyncio.create_task(follower())
        reached = await reach_through(lambda: tails[-1], 7, TIMEOUT_S)
        await following
        return reached, time.monotonic() - started, ticks

    reached, took, ticks = asyncio.run(main())
    assert reached and ticks == 4
    assert took < TIMEOUT_S / 2, f"the wait held the event loop for {took:.1f} s"


def test_a_failed_tail_never_replaced_times_out() -> None:
    failed = _tail(applied=3, failed=RuntimeError("nats: timeout"))
    started = time.monotonic()
    assert not asyncio.run(reach_through(lambda: failed, 7, 0.3))
    assert time.monotonic() - started < 2.0


def test_a_tail_already_there_answers_at_once() -> None:
    assert asyncio.run(reach_through(lambda: _tail(applied=9), 7, TIMEOUT_S))
