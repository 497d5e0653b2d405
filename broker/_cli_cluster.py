"""``brokerctl cluster status``: the processes serving the partitions, and who owns each."""

from __future__ import annotations

import argparse
from typing import Any

from durable.v1 import admin_pb2


def format_status(resp: admin_pb2.ClusterStatusResponse) -> str:
    """One line per node, then one per partition."""
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


def status(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[Any, str]:
    """Shows the cluster's nodes and partitions."""
    resp: admin_pb2.ClusterStatusResponse = stub.ClusterStatus(
        admin_pb2.ClusterStatusRequest(), timeout=timeout
    )
    return resp, format_status(resp)
