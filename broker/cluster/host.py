"""What a cluster node offers its replicas and its status page (`node.Node`)."""

from __future__ import annotations

from typing import Any, Protocol

from durable.v1 import cluster_pb2

from ..config import Settings
from ..metrics import Histogram
from ..multiplex import Streams
from ..replication.engine import Engine
from ..replication.lease import Leases
from ..replication.turns import Turns
from ..server import Broker
from .leaders import Leaders


class Applied(Protocol):
    """A replica, as far as the status needs it."""

    @property
    def applied(self) -> int:
        """The last log entry applied here."""
        ...


class Host(Protocol):
    """A node, as its replicas and status see it."""

    settings: Settings
    name: str
    engine: Engine
    count: int
    secret: str
    leases: Leases
    leaders: Leaders
    brokers: dict[int, Broker]
    beats: dict[str, dict[str, Any]]
    seen: dict[str, tuple[int, float]]
    # When each node was last seen coming (back) alive, and when this node's own
    # heartbeat last went through (loop time).
    alive_since: dict[str, float]
    beat_at: float
    ingress_port: int
    admin_port: int
    # Seconds each log append took, by partition.
    append_seconds: Histogram
    # The endpoint streams the partitions this node leads share.
    streams: Streams
    # Whose turn it is to append, among the partitions this node leads.
    turns: Turns

    @property
    def positions(self) -> list[int]:
        """How far this node applied each partition's log."""
        ...

    def alive(self) -> list[str]:
        """The live nodes' names."""
        ...

    def preferred(self, partition: int, alive: list[str]) -> str:
        """The live node `partition` prefers."""
        ...

    def serve(self, partition: int, broker: Broker) -> None:
        """Routes `partition`'s calls to `broker`."""
        ...

    def unserve(self, partition: int) -> None:
        """Stops routing to this node's broker for `partition`."""
        ...

    async def deliver(self, destination: int, request: cluster_pb2.DeliverRequest) -> int:
        """Delivers cross-partition messages."""
        ...
