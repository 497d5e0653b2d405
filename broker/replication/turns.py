"""Turns to append: one of a node's partitions has a log append in flight at a time.

A partition's committer cuts its next group only once its turn has come, so while one
partition waits for JetStream's answer the others' batches pile up into bigger groups
instead of each going out as an entry of its own. Without turns, each partition appends
as fast as JetStream answers, whatever the load: with 4 partitions on one node at
concurrency 64, 2.0 appends per call; with turns, 0.7, and the node's CPU per call and
the NATS servers' about halve (`make bench-cluster`, one node).

Only when an entry is sent changes: it still counts once JetStream acknowledged it, is
fenced by its expected last sequence, and keeps its id across retries.

A turn ends when its append is answered, or after `HOLD_S` whatever happens: an append
that waits out a stream's election (seconds) must not hold up the node's other
partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

# Well above an append's round trip on a busy machine (a few ms), well below an election.
HOLD_S = 0.1


class Turns:
    """A node's turns to append, shared by the logs of the partitions it leads.

    Args:
        hold_s: How long one append may keep the turn before the next partition's goes
            ahead anyway.
    """

    def __init__(self, hold_s: float = HOLD_S) -> None:
        self._hold_s = hold_s
        self._free = asyncio.Semaphore(1)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Waits for this partition's turn; it ends on leaving the block or after
        `hold_s`, whichever comes first."""
        await self._free.acquire()
        ended = False

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                self._free.release()

        timer = asyncio.get_running_loop().call_later(self._hold_s, end)
        try:
            yield
        finally:
            timer.cancel()
            end()
