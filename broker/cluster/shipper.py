"""Delivers a partition's outbox to the other partitions, in order, until acknowledged.

One task per destination at a time: it sends what is durable (up to the last
`actions.Ship`) in batches, and hands the destination's acknowledgement back to the
partition, which then drops those messages. A destination that cannot be reached (its
worker is restarting) is retried with a bounded backoff; nothing is lost meanwhile, the
messages stay in the outbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from durable.v1 import cluster_pb2

from ..core.outbox import Outbox

log = logging.getLogger("broker.cluster")

# Delivers one request; returns the destination's applied mark for this source.
Transport = Callable[[int, cluster_pb2.DeliverRequest], Awaitable[int]]

_MAX_MESSAGES = 256
_BACKOFF = (0.02, 1.0)


class Shipper:
    """Ships one partition's outbox.

    Args:
        outbox: The partition's outbox (read: what is pending).
        source: This partition's number.
        transport: Delivers to a destination.
        acknowledged: Called with (destination, seq) once `seq` is applied there.
    """

    def __init__(
        self,
        outbox: Outbox,
        source: int,
        transport: Transport,
        acknowledged: Callable[[int, int], None],
    ) -> None:
        self._outbox = outbox
        self._source = source
        self._transport = transport
        self._acknowledged = acknowledged
        self._durable: dict[int, int] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}

    def durable(self, destination: int, seq: int) -> None:
        """Messages to `destination` up to `seq` are durable: ship them."""
        if seq > self._durable.get(destination, 0):
            self._durable[destination] = seq
        task = self._tasks.get(destination)
        if task is None or task.done():
            self._tasks[destination] = asyncio.get_running_loop().create_task(
                self._ship(destination), name=f"ship-to-p{destination}"
            )

    async def _ship(self, destination: int) -> None:
        delay = _BACKOFF[0]
        failing = False
        while True:
            upto = self._durable.get(destination, 0)
            queue = self._outbox.pending.get(destination)
            batch = [
                cluster_pb2.Envelope(seq=seq, message=message)
                for seq, message in list(queue or ())[:_MAX_MESSAGES]
                if seq <= upto
            ]
            if not batch:
                return
            request = cluster_pb2.DeliverRequest(
                source=self._source, destination=destination, messages=batch
            )
            try:
                applied = await self._transport(destination, request)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not failing:
                    log.warning(
                        "partition %d cannot deliver to partition %d yet (%s); retrying",
                        self._source,
                        destination,
                        e,
                    )
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF[1])
                continue
            if failing:
                log.info("partition %d delivers to partition %d again", self._source, destination)
            failing, delay = False, _BACKOFF[0]
            self._acknowledged(destination, applied)

    async def close(self) -> None:
        """Stops shipping (what is left ships after a restart)."""
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
