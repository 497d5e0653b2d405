"""`python -m bench --cluster 1,2`: the scenarios through broker nodes in cluster mode
(`python -m broker --nats ...`, issue 14) over three local NATS servers with JetStream,
each against the embedded broker measured earlier in the same run.

The nodes are children of the benchmark's `Cluster` like any broker (their CPU counts as
the broker's); the NATS servers are started by `tools.natsd` and watched by role `nats`,
so the cluster's CPU per call can include the log's. The client connections take turns
over the nodes' ingresses. `bench.failover` kills the nodes' leaders.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from collections.abc import Callable

import grpc
from durable.process import free_ports
from durable.v1 import admin_pb2, admin_pb2_grpc

from bench.procs import STARTUP_TIMEOUT_S, BenchError, Cluster, Proc
from bench.spawn import Addresses, ready_services, services_for, spawn_services
from tools.natsd import NatsCluster, NatsError

NATS_SERVERS = 3
# Four partitions: two per node with two nodes, so each node leads some.
DEFAULT_PARTITIONS = 4
DEFAULT_FAILOVER = 10
# Partitions start on whichever node comes first and move to the node they prefer only
# after it led them a while (`HANDOFF_AFTER_S` in broker/cluster/node.py): allow for it.
SETTLE_TIMEOUT_S = 60.0
_POLL_S = 0.1
_STATUS_TIMEOUT_S = 5.0


def add_arguments(p: argparse.ArgumentParser, int_list: Callable[[str], list[int]]) -> None:
    """The cluster flags of `python -m bench` (`int_list` parses `1,2`)."""
    p.add_argument(
        "--cluster",
        type=int_list,
        default=[],
        help="also measure through this many broker nodes in cluster mode (e.g. 1,2), over "
        f"{NATS_SERVERS} NATS servers with JetStream (R3), each against the embedded broker "
        "(--workers must start with 0)",
    )
    p.add_argument(
        "--cluster-partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help=f"the cluster's partition count (default {DEFAULT_PARTITIONS})",
    )
    p.add_argument(
        "--failover",
        type=int,
        default=None,
        metavar="N",
        help=f"kill a partition leader N times and time its failover (default {DEFAULT_FAILOVER} "
        "with --cluster, else 0)",
    )
    p.add_argument(
        "--failover-nodes",
        type=int,
        choices=(2, 3),
        default=2,
        help="broker nodes in the failover run (default 2)",
    )


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses cluster flags that cannot work; fills in `--failover`'s default."""
    if args.failover is None:
        args.failover = DEFAULT_FAILOVER if args.cluster else 0
    if args.failover < 0:
        p.error("--failover must not be negative")
    if args.cluster and args.workers[0] != 0:
        p.error("--cluster is reported against the embedded broker: --workers must start with 0")
    if not 1 <= args.cluster_partitions <= 64:
        p.error("--cluster-partitions must be between 1 and 64")


@dataclasses.dataclass
class Nodes:
    """The broker nodes of a cluster run and their NATS servers.

    Attributes:
        nats: The three servers.
        ingress: Each node's public ingress, node 1 first.
        admin: Each node's admin API.
        argv: Each node's command line (a killed node starts again with it).
        procs: Each node's process now.
    """

    nats: NatsCluster
    ingress: list[str]
    admin: list[str]
    argv: list[list[str]]
    procs: list[Proc]

    @staticmethod
    def name(i: int) -> str:
        """Node `i`'s name in the cluster (`node1`, ...)."""
        return f"node{i + 1}"

    def index(self, name: str) -> int:
        """The index of the node called `name`."""
        return int(name.removeprefix("node")) - 1


def start_nats(cluster: Cluster, stack: contextlib.ExitStack) -> NatsCluster:
    """Starts three clustered NATS servers under the run's folder, stopped when `stack`
    closes (after the nodes: register `cluster.stop` on it afterwards), and waits until
    JetStream is usable."""
    nats = NatsCluster(cluster.workdir / "nats", size=NATS_SERVERS)
    stack.callback(nats.stop)
    try:
        nats.start()
        nats.wait_ready(STARTUP_TIMEOUT_S)
    except NatsError as e:
        raise BenchError(f"NATS: {e}") from None
    for i in range(NATS_SERVERS):
        pid = nats.pid(i)
        if pid is not None:
            cluster.watch("nats", pid)
    return nats


def spawn_nodes(
    cluster: Cluster,
    nats: NatsCluster,
    args: argparse.Namespace,
    count: int,
    ports: list[int],
    log_level: str,
) -> Nodes:
    """Spawns `count` nodes on `ports` (two each), without waiting for them."""
    ingress = [f"127.0.0.1:{ports[2 * i]}" for i in range(count)]
    admin = [f"127.0.0.1:{ports[2 * i + 1]}" for i in range(count)]
    argv = [
        [
            *("-m", "broker", "--nats", ",".join(nats.urls), "--node", Nodes.name(i)),
            *("--partitions", str(args.cluster_partitions)),
            *("--data-dir", str(cluster.workdir / Nodes.name(i))),
            *("--ingress", ingress[i], "--admin", admin[i]),
            *("--suspend-after", args.suspend_after, "--log-level", log_level),
            *args.broker_arg,
        ]
        for i in range(count)
    ]
    procs = [
        cluster.spawn(Nodes.name(i), "broker", ingress[i], argv[i], append=True, tether=True)
        for i in range(count)
    ]
    return Nodes(nats, ingress, admin, argv, procs)


def wait_nodes(cluster: Cluster, nodes: Nodes) -> None:
    """Waits until every node serves its ingress and admin API and the cluster settled."""
    for proc, ingress, admin in zip(nodes.procs, nodes.ingress, nodes.admin, strict=True):
        cluster.wait_ready(proc, ingress)
        cluster.wait_ready(proc, admin)
    wait_settled(cluster, nodes)


def settled(status: admin_pb2.ClusterStatusResponse, names: list[str]) -> str | None:
    """Why the cluster has not settled yet, or None: settled is every node in `names` seen
    alive and every partition served by the node it prefers (no handover still to come)."""
    alive = {n.name for n in status.nodes if n.alive}
    missing = sorted(set(names) - alive)
    if missing:
        return f"nodes not seen alive yet: {', '.join(missing)}"
    if not status.partitions:
        return "no partitions listed"
    for p in status.partitions:
        if not p.owner or not p.serving:
            return f"partition {p.id} not served (leader {p.owner or 'none'})"
        if p.owner != p.preferred:
            return f"partition {p.id} led by {p.owner}, to be handed to {p.preferred}"
    return None


def wait_settled(cluster: Cluster, nodes: Nodes, timeout: float = SETTLE_TIMEOUT_S) -> None:
    """Polls ClusterStatus on a live node until `settled`.

    Raises:
        BenchError: a node died, or the cluster did not settle within `timeout`.
    """
    names = [Nodes.name(i) for i in range(len(nodes.procs))]
    deadline = time.monotonic() + timeout
    why = "no answer yet"
    while time.monotonic() < deadline:
        cluster.check_alive()
        with grpc.insecure_channel(nodes.admin[0]) as channel:
            try:
                status = admin_pb2_grpc.AdminStub(channel).ClusterStatus(
                    admin_pb2.ClusterStatusRequest(), timeout=_STATUS_TIMEOUT_S
                )
            except grpc.RpcError as e:
                why = f"ClusterStatus: {e.code().name}: {e.details()}"
            else:
                reason = settled(status, names)
                if reason is None:
                    return
                why = reason
        time.sleep(_POLL_S)  # polling interval; the deadline decides
    raise BenchError(f"the cluster did not settle within {timeout:.0f} s: {why}")


def start(
    cluster: Cluster,
    stack: contextlib.ExitStack,
    args: argparse.Namespace,
    names: list[str],
    count: int,
    log_level: str = "WARNING",
) -> tuple[Addresses, Nodes]:
    """Starts three NATS servers, `count` nodes and the services the scenarios `names` need
    (and the floor's server if `direct` is among them); readies and registers them through
    the last node (registration through any node applies to the cluster).

    Everything stops when `stack` closes: the nodes and services first, then NATS.
    """
    nats = start_nats(cluster, stack)
    stack.callback(cluster.stop)
    ports = free_ports(2 * count + 1 + len(services_for(names)))
    direct = f"127.0.0.1:{ports[2 * count]}"
    nodes = spawn_nodes(cluster, nats, args, count, ports[: 2 * count], log_level)
    services = spawn_services(cluster, names, direct, ports[2 * count + 1 :])
    wait_nodes(cluster, nodes)
    ready_services(cluster, services, nodes.admin[-1])
    return Addresses(nodes.ingress[0], nodes.admin[0], direct, tuple(nodes.ingress)), nodes
