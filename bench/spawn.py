"""The processes a benchmark run measures: the broker (one process or `--workers N`), the
services its scenarios call and the floor's plain gRPC server, started, readied and
registered; `bench.cluster` starts cluster nodes and reuses the services part."""

from __future__ import annotations

import argparse
import dataclasses

from durable.process import free_ports

from bench.procs import Cluster, Proc, broker_supports

DEMO_SERVICES = ("flights", "cars", "payments", "trips")
# The broker's counters read around each window, when it serves metrics (`--metrics`).
BROKER_METRICS = (
    "durable_invocations_started_total",
    "durable_journal_batch_steps_count",
    "durable_journal_batch_steps_sum",
    "durable_journal_fsync_seconds_count",
    "durable_journal_fsync_seconds_sum",
    "durable_endpoint_frames_total",
    "durable_endpoint_messages_total",
)


@dataclasses.dataclass
class Addresses:
    """Where the processes under test listen.

    Attributes:
        ingress: The broker's ingress (the first node's, in cluster mode).
        admin: Its admin API.
        direct: The floor's plain gRPC server.
        ingresses: Every node's ingress in cluster mode (the client connections are spread
            over them); empty for a single broker.
    """

    ingress: str
    admin: str
    direct: str
    ingresses: tuple[str, ...] = ()


def services_for(names: list[str]) -> list[str]:
    """The services the scenarios `names` call."""
    services: list[str] = []
    if {"trivial", "keyed", "journal"} & set(names):
        services.append("bench")
    if "saga" in names:
        services.extend(DEMO_SERVICES)
    return services


@dataclasses.dataclass
class Services:
    """The services spawned for a run, not yet ready nor registered."""

    addresses: dict[str, str]
    procs: list[Proc]
    direct: Proc | None


def spawn_services(cluster: Cluster, names: list[str], direct: str, ports: list[int]) -> Services:
    """Spawns the services the scenarios `names` need, on `ports` (one each, chosen with the
    broker's so that none collide), and the floor's server on `direct` when asked for."""
    services = services_for(names)
    addresses = {s: f"127.0.0.1:{p}" for s, p in zip(services, ports, strict=True)}
    procs = []
    for name, address in addresses.items():
        module = "bench.service" if name == "bench" else f"services.{name}"
        extra = ["--log-level", "WARNING"]
        if name == "trips":
            extra += ["--notification-log", str(cluster.workdir / "trips-notifications.log")]
        procs.append(
            cluster.spawn(name, "service", address, ["-m", module, "--listen", address, *extra])
        )
    direct_proc = None
    if "direct" in names:
        direct_proc = cluster.spawn(
            "direct", "direct", direct, ["-m", "bench.direct", "--listen", direct]
        )
    return Services(addresses, procs, direct_proc)


def ready_services(cluster: Cluster, services: Services, admin: str) -> None:
    """Waits until every spawned service serves, then registers them through `admin`."""
    for proc in services.procs:
        cluster.wait_ready(proc)
    if services.direct is not None:
        cluster.wait_ready(services.direct)
    cluster.register(admin, [f"http://{a}" for a in services.addresses.values()])


def start(
    cluster: Cluster, args: argparse.Namespace, names: list[str], workers: int = 0
) -> Addresses:
    """Starts the broker (`workers` > 0: over that many processes) and the services the
    scenarios need, readies and registers them."""
    host = "127.0.0.1"
    ports = free_ports(4 + len(services_for(names)))
    ingress, admin, direct, metrics = (f"{host}:{p}" for p in ports[:4])

    # Spawn everything first (children fork before this process starts any gRPC thread).
    broker_args = [
        "-m", "broker",
        "--data-dir", str(cluster.workdir / "broker"),
        "--ingress", ingress,
        "--admin", admin,
        "--suspend-after", args.suspend_after,
    ]  # fmt: skip
    if args.no_fsync:
        broker_args.append("--no-fsync")
    if workers:
        broker_args += ["--workers", str(workers)]
    broker_args += args.broker_arg
    if broker_supports("--metrics"):
        broker_args += ["--metrics", metrics]
        cluster.metrics_address, cluster.metric_names = metrics, BROKER_METRICS
    broker = cluster.spawn("broker", "broker", ingress, broker_args)
    services = spawn_services(cluster, names, direct, ports[4:])
    cluster.wait_ready(broker, ingress)
    cluster.wait_ready(broker, admin)
    ready_services(cluster, services, admin)
    return Addresses(ingress, admin, direct)
