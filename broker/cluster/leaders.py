"""Cluster mode: where each partition is served now, as this node last read the leases.

A partition's private addresses are those its leader published in its lease; between
leaders (a failover) a caller waits a bounded time for the next one rather than failing
at once.
"""

from __future__ import annotations

import asyncio

from ..replication.lease import Holder
from .directory import Unreachable

# How long a call waits for a partition without a serving leader (a failover takes the
# lease's TTL plus catching up).
LEADER_WAIT_S = 8.0


class Leaders:
    """Each partition's current leader (`Where` in cluster mode).

    Args:
        count: How many partitions there are.
    """

    def __init__(self, count: int) -> None:
        self.holders: list[Holder | None] = [None] * count
        self._changed = asyncio.Event()

    @property
    def count(self) -> int:
        """How many partitions there are."""
        return len(self.holders)

    def set(self, partition: int, holder: Holder | None) -> None:
        """Records what the lease says now."""
        if self.holders[partition] != holder:
            self.holders[partition] = holder
            self._changed.set()

    async def serving(self, partition: int, timeout: float = LEADER_WAIT_S) -> Holder:
        """The partition's leader once it serves, waiting up to `timeout`.

        Raises:
            Unreachable: none serves it within `timeout`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            holder = self.holders[partition]
            if holder is not None and holder.ingress:
                return holder
            left = deadline - loop.time()
            if left <= 0:
                raise Unreachable(
                    f"partition {partition} has no leader serving it "
                    f"({'led by ' + holder.node + ', starting' if holder else 'no lease'}) "
                    f"after {timeout:.0f} s; a failover may be under way, retry shortly"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                continue

    async def moved(self, partition: int, address: str, timeout: float = LEADER_WAIT_S) -> bool:
        """`Where.moved`: waits until the partition's leader serves elsewhere."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            holder = self.holders[partition]
            if (
                holder is not None
                and holder.ingress
                and address
                not in (
                    holder.ingress,
                    holder.admin,
                )
            ):
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return False

    async def ingress(self, partition: int, wait: float | None = None) -> str:
        """`Where.ingress`."""
        return (await self.serving(partition, LEADER_WAIT_S if wait is None else wait)).ingress

    async def admin(self, partition: int) -> str:
        """`Where.admin`."""
        return (await self.serving(partition)).admin

    def describe(self, partition: int) -> str:
        """`Where.describe`."""
        holder = self.holders[partition]
        if holder is None:
            return "no leader"
        return f"leader {holder.node}, {holder.admin or 'starting'}"
