"""Cluster mode: each node's heartbeat, and `ClusterStatus` as any node answers it.

A heartbeat is the node's key in the `durable_nodes` bucket, rewritten every half
second with its addresses and how far it applied each partition's log; the key expires
when the node stops. Liveness is judged by the key's revision moving, as this node saw
it, so no two machines' clocks are compared.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

import nats.js.errors
from durable.v1 import admin_pb2

from ..replication.engine import NODES_BUCKET
from .front import AdminFront, Context
from .host import Host

log = logging.getLogger("broker.cluster")


# A node whose heartbeat stood still this long is taken for dead.
STALE_S = 1.5


def _beat(node: Host) -> bytes:
    return json.dumps(
        {
            "ingress": f"127.0.0.1:{node.ingress_port}",
            "admin": f"127.0.0.1:{node.admin_port}",
            "pid": os.getpid(),
            "leading": sorted(node.brokers),
            "applied": node.positions,
        }
    ).encode()


async def _names(node: Host) -> list[str]:
    """The nodes with a heartbeat in the bucket.

    Read from the stream's subjects (one request its leader answers) rather than with
    `KeyValue.keys()`, which creates, reads and deletes a consumer each time: three
    requests where one will do, and creating a consumer stalled for tens of seconds
    after a NATS server was killed while the keys themselves could be read all along.
    """
    info = await node.engine.js.stream_info(
        f"KV_{NODES_BUCKET}", subjects_filter=f"$KV.{NODES_BUCKET}.>"
    )
    prefix = len(f"$KV.{NODES_BUCKET}.")
    return [subject[prefix:] for subject in info.state.subjects or {}]


async def heartbeat(node: Host, interval: float) -> None:
    """Publishes this node's beat and reads everyone's, forever."""
    bucket = node.engine.nodes
    assert bucket is not None
    loop = asyncio.get_running_loop()
    while True:
        try:
            await bucket.put(node.name, _beat(node))
            node.beat_at = loop.time()
            names = await _names(node)
            beats: dict[str, dict[str, Any]] = {}
            for name in names:
                try:
                    entry = await bucket.get(name)
                except nats.js.errors.KeyNotFoundError:
                    continue
                beats[name] = json.loads(entry.value or b"{}")
                last = node.seen.get(name)
                if last is None or last[0] != entry.revision:
                    now = loop.time()
                    if last is None or now - last[1] > STALE_S:
                        node.alive_since[name] = now  # (back) alive from here on
                    node.seen[name] = (entry.revision or 0, now)
            node.beats = beats
        except Exception as e:
            log.warning("heartbeat failed: %s", e)
        await asyncio.sleep(interval)


class NodeFront(AdminFront):
    """The admin front of a cluster node: routed like `--workers`, its own status."""

    def __init__(self, partitions: Any, node: Host) -> None:
        super().__init__(partitions, lambda: [])
        self._node = node

    async def ClusterStatus(self, body: bytes, context: Context) -> bytes:
        node = self._node
        alive = set(node.alive())
        beats = dict(node.beats)
        out = admin_pb2.ClusterStatusResponse(mode="cluster")
        for name in sorted(beats):
            beat = beats[name]
            out.nodes.add(
                name=name,
                pid=int(beat.get("pid", 0)),
                alive=name in alive,
                partitions=[int(p) for p in beat.get("leading", [])],
                ingress=str(beat.get("ingress", "")),
                admin=str(beat.get("admin", "")),
            )
        serving, lasts = await asyncio.gather(
            asyncio.gather(*(self.partitions.serving(p) for p in range(node.count))),
            asyncio.gather(*(node.engine.log_bounds(p) for p in range(node.count))),
        )
        for p in range(node.count):
            holder = node.leaders.holders[p]
            leader = holder.node if holder else ""
            applied = _applied(beats.get(leader, {}), p)
            partition = out.partitions.add(
                id=p,
                owner=leader,
                ingress=holder.ingress if holder else "",
                admin=holder.admin if holder else "",
                serving=serving[p],
                applied=applied,
                log_first=(lasts[p] or (0, 0))[0],
                log_last=(lasts[p] or (0, 0))[1],
                preferred=node.preferred(p, node.alive()),
            )
            for name in sorted(beats):
                if name == leader or name not in alive:
                    continue
                theirs = _applied(beats[name], p)
                partition.followers.add(node=name, applied=theirs, lag=max(applied - theirs, 0))
        return out.SerializeToString()


def _applied(beat: dict[str, Any], partition: int) -> int:
    applied = beat.get("applied", [])
    return int(applied[partition]) if partition < len(applied) else 0
