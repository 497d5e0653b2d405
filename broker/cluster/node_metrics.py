"""Cluster mode: a node's `GET /metrics` (`--metrics`).

The partitions this node leads report their own metrics, labelled with the partition
(as with `--workers`); the node adds, per partition: whether it leads it, how far it
applied the log, where the log ends and so how far behind it is, how long its appends
take, and how old the snapshot it last stored is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol

from ..metrics import Histogram
from ..server import Broker
from .scrape import combine


class _Replica(Protocol):
    @property
    def applied(self) -> int: ...

    @property
    def snapshot_at(self) -> float | None: ...


class Observed(Protocol):
    """What the metrics read of a node."""

    count: int
    engine: Any
    brokers: dict[int, Broker]
    append_seconds: Histogram

    @property
    def replica_views(self) -> Sequence[_Replica]:
        """The node's replicas."""
        ...


def _gauge(name: str, help_text: str, values: dict[int, float]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    lines += [f'{name}{{partition="{p}"}} {v:g}' for p, v in sorted(values.items())]
    return lines


async def render(node: Observed) -> str:
    """The node's exposition."""
    texts: list[str | None] = [
        node.brokers[p].metrics.render() if p in node.brokers else None for p in range(node.count)
    ]
    bounds = await asyncio.gather(*(node.engine.log_bounds(p) for p in range(node.count)))
    replicas = node.replica_views
    applied = {p: float(r.applied) for p, r in enumerate(replicas)}
    now = time.time()
    lines = [combine(texts).rstrip("\n")]
    lines += _gauge(
        "durable_partition_leader",
        "Whether this node leads the partition.",
        {p: float(p in node.brokers) for p in range(node.count)},
    )
    lines += _gauge("durable_log_applied", "The last log entry this node applied.", applied)
    known = {p: float(b[1]) for p, b in enumerate(bounds) if b is not None}
    lines += _gauge("durable_log_last", "The partition log's last entry.", known)
    lines += _gauge(
        "durable_log_lag_entries",
        "Log entries this node has yet to apply.",
        {p: max(last - applied[p], 0.0) for p, last in known.items()},
    )
    lines += _gauge(
        "durable_snapshot_age_seconds",
        "Seconds since this node stored the partition's latest snapshot.",
        {p: now - r.snapshot_at for p, r in enumerate(replicas) if r.snapshot_at is not None},
    )
    name = "durable_log_append_seconds"
    lines += [
        f"# HELP {name} Seconds a log append took (quorum stored).",
        f"# TYPE {name} histogram",
    ]
    lines += node.append_seconds.render(name, "partition")
    return "\n".join(lines) + "\n"
