"""What the partition's command, attempt, retry, control and recovery modules may use
of it: a structural type, so that those modules never import the partition (and the
imports of `broker/core` stay a tree)."""

from __future__ import annotations

from typing import Protocol

from durable.v1 import cluster_pb2

from .. import registry as reg
from ..cluster.placement import Placement
from ..config import Settings
from ..metrics import Metrics
from ..storage import Batch
from ..storage.kv import KV
from .dedup import Dedup
from .limits import Limiter
from .locks import KeyLocks, Lock
from .model import Entry, Invocation, Live, Result
from .outbox import Outbox
from .waits import Waits


class PartitionOps(Protocol):
    """The partition as its own modules see it (`partition.Partition` is one)."""

    kv: KV
    registry: reg.Registry
    settings: Settings
    metrics: Metrics
    live: dict[str, Live]
    locks: KeyLocks
    limiter: Limiter
    dedup: Dedup
    waits: Waits
    placement: Placement
    outbox: Outbox

    def now_ms(self) -> int: ...

    def submit(self, batch: Batch) -> None: ...

    def save(self, batch: Batch, live: Live) -> None: ...

    def adopt(self, record: Invocation, entries: list[Entry]) -> Live: ...

    def start_attempt(self, batch: Batch, live: Live, fresh: bool = False) -> None: ...

    def abandon_attempt(self, batch: Batch, live: Live, reason: str) -> None: ...

    def release(self, batch: Batch, lock: Lock) -> None: ...

    def complete_entry(self, batch: Batch, live: Live, index: int, result: Result) -> None: ...

    def deliver(self, batch: Batch, live: Live, index: int, result: Result) -> None: ...

    def complete(self, batch: Batch, live: Live, result: Result) -> None: ...

    def completed(self, invocation_id: str) -> Result | None: ...

    def lock_holder(self, service: str, key: str) -> str | None: ...

    def journal_call(self, batch: Batch, live: Live, index: int, entry: Entry) -> Result | None: ...

    def journal_send(self, batch: Batch, live: Live, entry: Entry) -> None: ...

    def complete_waiter(
        self, batch: Batch, invocation_id: str, index: int, result: Result
    ) -> None: ...

    def start_delivered(self, batch: Batch, m: cluster_pb2.InvokeMessage) -> None: ...

    def pause(self, live: Live) -> None: ...

    def free_slot(self, batch: Batch, live: Live) -> None: ...

    def admit(self, batch: Batch, service: str) -> set[str]: ...

    def load_limits(self) -> None: ...

    def resume(self, live: Live) -> None: ...
