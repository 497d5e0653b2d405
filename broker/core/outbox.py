"""The partition's side of cross-partition messages (pure: what to write, what to ship).

Sending writes the message into the sender's batch and, once that batch is durable,
asks the driver to ship it (`actions.Ship`). Receiving skips what the per-source mark
says is applied and moves the mark in the batch that applies the rest.
"""

from __future__ import annotations

import collections

from durable.v1 import cluster_pb2

from ..cluster.placement import Placement
from ..storage import Batch
from ..storage import outbox as table
from ..storage.kv import KV
from . import actions

Message = cluster_pb2.OutboxMessage


class Outbox:
    """Sequence numbers, messages awaiting acknowledgement, and the applied marks.

    Args:
        kv: The partition's store (read at recovery).
        placement: Where every partition is.
    """

    def __init__(self, kv: KV, placement: Placement) -> None:
        self._kv = kv
        self.placement = placement
        self._last: dict[int, int] = {}
        # Per destination, in sequence order: what was written and not yet acknowledged.
        self.pending: dict[int, collections.deque[tuple[int, Message]]] = collections.defaultdict(
            collections.deque
        )
        self._applied: dict[int, int] = {}

    def send(self, batch: Batch, destination: int, message: Message) -> None:
        """Writes `message` for `destination` into `batch`; shipped once durable."""
        seq = self._last.get(destination, 0) + 1
        self._last[destination] = seq
        table.put(batch, destination, seq, message)
        self.pending[destination].append((seq, message))
        batch.then(actions.Ship(destination, seq))

    def to_owner(self, batch: Batch, invocation_id: str, message: Message) -> None:
        """Sends `message` to the partition owning `invocation_id`."""
        self.send(batch, self.placement.of_id(invocation_id), message)

    def acknowledged(self, batch: Batch, destination: int, seq: int) -> None:
        """`destination` applied everything up to `seq`: those rows go."""
        queue = self.pending.get(destination)
        while queue and queue[0][0] <= seq:
            table.delete(batch, destination, queue.popleft()[0])

    def fresh(self, source: int, seq: int) -> bool:
        """Whether the message `seq` from `source` is not applied yet."""
        return seq > self._applied.get(source, 0)

    def applied(self, batch: Batch, source: int, seq: int) -> None:
        """Marks messages from `source` up to `seq` applied, in the batch applying them."""
        self._applied[source] = seq
        table.mark_applied(batch, source, seq)

    def applied_mark(self, source: int) -> int:
        """The last sequence number applied from `source`."""
        return self._applied.get(source, 0)

    def recover(self, batch: Batch) -> None:
        """Reloads the marks and the unacknowledged messages, and ships those again."""
        self._last = table.last_sequences(self._kv)
        self._applied = table.applied(self._kv)
        self.pending.clear()
        for destination, seq, message in table.scan(self._kv):
            self.pending[destination].append((seq, message))
        for destination, queue in self.pending.items():
            if queue:
                batch.then(actions.Ship(destination, queue[-1][0]))
