"""``brokerctl cluster status``: the processes serving the partitions, and who owns each.

With ``--json`` the response is printed whole (every field of the proto, cluster mode's
addresses, log positions and followers included); the text below is for people.
"""

from __future__ import annotations

import argparse
from typing import Any

from durable.v1 import admin_pb2


def format_status(resp: admin_pb2.ClusterStatusResponse) -> str:
    """One line per node, then one per partition."""
    if resp.mode == "cluster":
        return _format_cluster(resp)
    lines = [f"mode: {resp.mode or 'unknown'}", "nodes:"]
    for n in resp.nodes:
        state = f"pid {n.pid}" if n.alive else "down"
        owned = ", ".join(str(p) for p in n.partitions) or "none"
        lines.append(f"  {n.name}: {state}, {n.restarts} restart(s), partitions {owned}")
    lines.append("partitions:")
    for p in resp.partitions:
        addresses = (("admin", p.admin), ("ingress", p.ingress), ("metrics", p.metrics))
        where = ", ".join(f"{label} {address}" for label, address in addresses if address)
        state = "serving" if p.serving else "NOT SERVING"
        lines.append(f"  {p.id}: {p.owner}, {state}" + (f", {where}" if where else ""))
    return "\n".join(lines)


def _format_cluster(resp: admin_pb2.ClusterStatusResponse) -> str:
    """Cluster mode: each node's addresses, and each partition's leader and log positions.

    A partition's `applied` is its leader's position and `log end` the stream's last
    entry; a follower's lag is how many entries it is behind the leader.
    """
    lines = ["mode: cluster", "nodes:"]
    for n in resp.nodes:
        state = f"alive (pid {n.pid})" if n.alive else "DOWN"
        led = ", ".join(str(p) for p in n.partitions) or "none"
        lines.append(
            f"  {n.name}: {state}, ingress {n.ingress or '-'}, admin {n.admin or '-'}, leads {led}"
        )
    lines.append("partitions:")
    for p in resp.partitions:
        state = "serving" if p.serving else "NOT SERVING"
        leader = f"leader {p.owner}" if p.owner else "no leader"
        followers = ", ".join(f"{f.node} lag {f.lag}" for f in p.followers) or "none"
        line = (
            f"  {p.id}: {leader}, {state}, applied {p.applied}, log end {p.log_last}, "
            f"followers {followers}"
        )
        if p.preferred and p.preferred != p.owner:
            # The leader hands it to the node it prefers (or that node takes it if vacant).
            line += f"; moving to {p.preferred}"
        lines.append(line)
    return "\n".join(lines)


def status(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[Any, str]:
    """Shows the cluster's nodes and partitions."""
    resp: admin_pb2.ClusterStatusResponse = stub.ClusterStatus(
        admin_pb2.ClusterStatusRequest(), timeout=timeout
    )
    return resp, format_status(resp)
