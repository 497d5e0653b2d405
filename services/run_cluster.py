"""`make cluster`: a broker cluster on one machine, with the demo services registered.

Starts three NATS servers clustered with JetStream (`tools/natsd.py`, stores under
`.data/cluster/nats`), three broker nodes writing their partitions' logs to them (3
replicas), and the four demo services; waits until every process answers gRPC health
checks; registers the services through node 1's admin API (registration applies to the
whole cluster); prints how to call any node. Ctrl-C, SIGTERM or SIGHUP (the terminal
closed) stops them all: the nodes and services first (SIGTERM, then SIGKILL after 10 s),
then the NATS servers. If any process dies on its own, it says so, stops the rest and
exits non-zero.

Every port is checked before anything starts; a taken one is named with the variable
that moves it:

- `CLUSTER_NODE{1,2,3}_INGRESS`, `CLUSTER_NODE{1,2,3}_ADMIN`: node N's addresses
  (default 127.0.0.1:9190/9191, 9200/9201, 9210/9211);
- `CLUSTER_NATS_CLIENT_PORTS`, `CLUSTER_NATS_ROUTE_PORTS`, `CLUSTER_NATS_HTTP_PORTS`:
  the three servers' client, route and monitoring ports, comma-separated (default
  4222,4223,4224 / 6222,6223,6224 / 8222,8223,8224; NATS's usual ports, counted up);
- `CLUSTER_PARTITIONS` (default 4), `CLUSTER_DATA_DIR` (default `.data/cluster`);
- `FLIGHTS_LISTEN`, `CARS_LISTEN`, `PAYMENTS_LISTEN`, `TRIPS_LISTEN`: as for `make run`,
  so `make run` and `make cluster` cannot run at once with the defaults.
"""

from __future__ import annotations

import os
import sys

from services._launch import (
    BIN,
    ROOT,
    Child,
    LaunchError,
    check_ports,
    run,
    shown,
    spawn,
    wait_all_healthy,
)
from services.run_demo import SERVICE_PORTS, call_examples, register_services, start_services
from tools.natsd import NatsCluster, NatsError, ServerPorts

NODES = 3
# Relative to the repository, as `make run`'s data dir is (an absolute path stays so).
DATA_DIR = ROOT / os.environ.get("CLUSTER_DATA_DIR", ".data/cluster")
PARTITIONS = os.environ.get("CLUSTER_PARTITIONS", "4")
# The module a node runs; tests set a stand-in (the broker's `--nats` may not exist yet).
BROKER_MODULE = os.environ.get("CLUSTER_BROKER_MODULE", "broker")
NATS_READY_TIMEOUT_S = 30.0


def _node_address(n: int, kind: str, port: int) -> str:
    return os.environ.get(f"CLUSTER_NODE{n}_{kind.upper()}", f"127.0.0.1:{port}")


# (name, ingress, admin) of node 1..3.
NODE_ADDRESSES = [
    (
        f"node{n}",
        _node_address(n, "ingress", 9190 + 10 * (n - 1)),
        _node_address(n, "admin", 9191 + 10 * (n - 1)),
    )
    for n in range(1, NODES + 1)
]


def _ports(variable: str, default: int) -> list[int]:
    text = os.environ.get(variable, ",".join(str(default + i) for i in range(NODES)))
    values = [part.strip() for part in text.split(",")]
    if len(values) != NODES or not all(v.isdigit() for v in values):
        raise LaunchError(f"{variable}={text!r}: expected {NODES} comma-separated ports")
    return [int(v) for v in values]


def _nats_ports() -> list[ServerPorts]:
    clients = _ports("CLUSTER_NATS_CLIENT_PORTS", 4222)
    routes = _ports("CLUSTER_NATS_ROUTE_PORTS", 6222)
    https = _ports("CLUSTER_NATS_HTTP_PORTS", 8222)
    return [ServerPorts(c, r, h) for c, r, h in zip(clients, routes, https, strict=True)]


class ClusterDemo:
    """The NATS servers, and how to start the nodes and the services on them."""

    def __init__(self) -> None:
        self.nats_ports = _nats_ports()
        self.nats = NatsCluster(DATA_DIR / "nats", size=NODES, ports=self.nats_ports)

    def ports(self) -> list[tuple[str, str, str]]:
        """What listens where, and the variable that moves it."""
        listed = []
        for name, ingress, admin in NODE_ADDRESSES:
            variable = f"CLUSTER_{name.upper()}"
            listed.append((f"{name}'s ingress", ingress, f"{variable}_INGRESS"))
            listed.append((f"{name}'s admin API", admin, f"{variable}_ADMIN"))
        for i, ports in enumerate(self.nats_ports):
            server = f"NATS server {self.nats.name(i)}"
            listed.append(
                (f"{server}'s clients", f"127.0.0.1:{ports.client}", "CLUSTER_NATS_CLIENT_PORTS")
            )
            listed.append(
                (f"{server}'s routes", f"127.0.0.1:{ports.route}", "CLUSTER_NATS_ROUTE_PORTS")
            )
            listed.append(
                (f"{server}'s monitoring", f"127.0.0.1:{ports.http}", "CLUSTER_NATS_HTTP_PORTS")
            )
        return [*listed, *SERVICE_PORTS]

    def check(self) -> None:
        """Raises `LaunchError` naming every taken port; starts nothing."""
        check_ports(
            self.ports(),
            "the cluster",
            "Is another `make cluster` (or `make run`, for the services' ports) still "
            "running? Stop it, or move the ports with the variables named, e.g. "
            "CLUSTER_NATS_CLIENT_PORTS=4322,4323,4324 make cluster",
        )

    def start(self, children: list[Child]) -> str:
        """Starts NATS, waits for JetStream, starts the nodes and services, registers."""
        print(f"starting NATS: {', '.join(self.nats.urls)}", flush=True)
        try:
            self.nats.start()
            for i in range(NODES):
                print(f"started NATS {self.nats.name(i)} (pid {self.nats.pid(i)})", flush=True)
            self.nats.wait_ready(NATS_READY_TIMEOUT_S)
        except NatsError as e:
            raise LaunchError(str(e)) from None
        for name, ingress, admin in NODE_ADDRESSES:
            args = ["-m", BROKER_MODULE, "--nats", ",".join(self.nats.urls), "--node", name]
            args += ["--partitions", PARTITIONS, "--ingress", ingress, "--admin", admin]
            args += ["--data-dir", str(DATA_DIR / name)]
            children.append(spawn(name, args, [ingress, admin]))
        start_services(children)
        wait_all_healthy(children)
        register_services(NODE_ADDRESSES[0][2])
        return self.usage()

    def watch(self) -> None:
        """Raises `LaunchError` if a NATS server died."""
        try:
            self.nats.check_alive()
        except NatsError as e:
            raise LaunchError(str(e)) from None

    def usage(self) -> str:
        """What runs where, and how to call it."""
        brokerctl = shown(BIN / "brokerctl")
        nodes = "\n".join(
            f"  {name}: ingress {ingress}, admin {admin}, data {shown(DATA_DIR / name)}"
            for name, ingress, admin in NODE_ADDRESSES
        )
        grpcurl = f"{shown(BIN / 'grpcurl')} -plaintext"
        any_node = "\n".join(
            f"  {grpcurl} -d '{{}}' {ingress} trips.Trips/Reserve    # through {name}"
            for name, ingress, _ in NODE_ADDRESSES
        )
        return f"""
The cluster is running ({PARTITIONS} partitions, logs replicated on 3 NATS servers):
{nodes}
  NATS: {",".join(self.nats.urls)} (JetStream stores in {shown(self.nats.base_dir)})

{call_examples(NODE_ADDRESSES[0][1])}
Any node serves any call: book a trip through each:
{any_node}
Who leads which partition, and each follower's lag (any node's admin API):
  {brokerctl} --admin {NODE_ADDRESSES[0][2]} cluster status
Every brokerctl verb works against any node, e.g.:
  {brokerctl} --admin {NODE_ADDRESSES[1][2]} invocations list

Press Ctrl-C to stop everything.
"""


def main() -> int:
    """Runs the cluster until Ctrl-C/SIGTERM/SIGHUP (exit 0) or a process fails (exit 1)."""
    try:
        demo = ClusterDemo()
    except LaunchError as e:
        print(f"error: {e}; nothing was started", file=sys.stderr)
        return 1
    return run("the cluster", demo.check, demo.start, demo.watch, demo.nats.stop)


if __name__ == "__main__":
    sys.exit(main())
