"""Who owns which partition, and where each partition's private ports are.

The supervisor picks every address before it starts a worker and hands the same
directory to all of them (`BROKER_CLUSTER`, JSON), so a restarted worker comes back at
the addresses the others already know. Partition `p` belongs to worker `p % workers`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Protocol

import grpc

ENV = "BROKER_CLUSTER"
WORKER_ENV = "BROKER_CLUSTER_WORKER"


class Where(Protocol):
    """Where each partition's private ports are: fixed (`Directory`, `--workers`) or
    wherever its leader is now (`broker.cluster.leaders`, cluster mode)."""

    @property
    def count(self) -> int:
        """How many partitions there are."""
        ...

    async def ingress(self, partition: int, wait: float | None = None) -> str:
        """The partition's private ingress address, waiting up to `wait` seconds (a
        bounded default when None) for a leader to serve it.

        Raises:
            Unreachable: nobody serves it now.
        """
        ...

    async def admin(self, partition: int) -> str:
        """The partition's private admin address (may wait for a leader).

        Raises:
            Unreachable: nobody serves it now.
        """
        ...

    def describe(self, partition: int) -> str:
        """Who serves `partition` and where, for messages."""
        ...

    async def moved(self, partition: int, address: str) -> bool:
        """Waits (a bounded time) until `partition` is served elsewhere than at
        `address`, its ingress or admin; False when it did not move."""
        ...


def never_sent(error: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call certainly never reached its server: gRPC found no address
    to connect to, so nothing went on the wire. Any other failure (a connection cut
    mid-call, a deadline) may come after the server took the call, which must then not
    be sent again: it could run twice."""
    return error.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect to all addresses" in (
        error.details() or ""
    )


class Unreachable(Exception):
    """No process serves the partition right now; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class PartitionAddress:
    """A partition's private ports: its ingress (forwarded calls, cross-partition
    messages), its admin API (the supervisor's front forwards to it) and, with
    `--metrics`, its Prometheus endpoint (the supervisor scrapes it)."""

    ingress: str
    admin: str
    metrics: str | None = None


@dataclasses.dataclass(frozen=True)
class Directory:
    """The cluster as every process of it sees it."""

    workers: int
    partitions: list[PartitionAddress]
    # Proves a cross-partition delivery comes from a worker of this broker: the private
    # ports listen on loopback, where any local process could otherwise inject messages.
    secret: str = ""

    @property
    def count(self) -> int:
        """How many partitions there are."""
        return len(self.partitions)

    def owner(self, partition: int) -> int:
        """The worker that runs `partition`."""
        return partition % self.workers

    async def ingress(self, partition: int, wait: float | None = None) -> str:
        """`partition`'s private ingress address (`Where`): fixed, so never waits."""
        return self.partitions[partition].ingress

    async def admin(self, partition: int) -> str:
        """`partition`'s private admin address (`Where`)."""
        return self.partitions[partition].admin

    def describe(self, partition: int) -> str:
        """Who serves `partition` and where, for messages (`Where`)."""
        return f"worker {self.owner(partition)}, {self.partitions[partition].admin}"

    async def moved(self, partition: int, address: str) -> bool:
        """`Where.moved`: a worker's partition never moves."""
        return False

    def owned_by(self, worker: int) -> list[int]:
        """The partitions `worker` runs."""
        return [p for p in range(self.count) if self.owner(p) == worker]

    def to_json(self) -> str:
        """The form passed to workers."""
        return json.dumps(
            {
                "workers": self.workers,
                "partitions": [dataclasses.asdict(a) for a in self.partitions],
                "secret": self.secret,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Directory:
        """Parses `to_json`'s form."""
        raw = json.loads(text)
        return cls(
            workers=int(raw["workers"]),
            partitions=[PartitionAddress(**a) for a in raw["partitions"]],
            secret=str(raw.get("secret", "")),
        )


def from_environment() -> tuple[Directory, int] | None:
    """The directory and this worker's number, when this process is a worker."""
    text = os.environ.get(ENV)
    if not text:
        return None
    return Directory.from_json(text), int(os.environ[WORKER_ENV])
