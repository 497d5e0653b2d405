"""`python -m tests.cluster_standin`: a stand-in for `broker.cluster.worker` in tests of
the supervisor and its admin front (`BROKER_CLUSTER_WORKER_MODULE=tests.cluster_standin`).

Run by the supervisor with the same flags and environment as a worker, it serves each
of its partitions as an ordinary single-process broker on the partition's private
ingress and admin addresses (and metrics, when the directory has one), with its journal
in the partition's directory, and the public ingress's health (SO_REUSEPORT, as every
worker binds it). It has no cross-partition traffic: a test creates each invocation on
the partition that owns it, through that partition's private ingress.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys

import grpc
from durable import wire
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from broker.cluster import layout
from broker.cluster.directory import from_environment
from broker.config import parse_args
from broker.server import Broker


async def _main(argv: list[str]) -> None:
    settings = parse_args(argv)
    found = from_environment()
    assert found is not None, "not started as a worker (no BROKER_CLUSTER)"
    directory, index = found
    assert settings.data_dir is not None
    brokers = []
    for p in directory.owned_by(index):
        address = directory.partitions[p]
        own = dataclasses.replace(
            settings,
            ingress=address.ingress,
            admin=address.admin,
            metrics=address.metrics,
            data_dir=layout.partition_dir(settings.data_dir, p),
            console=None,
        )
        broker = Broker(own)
        await broker.start()
        brokers.append(broker)
    public = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, public)
    public.add_insecure_port(settings.ingress)
    await public.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await public.stop(1)
    for broker in brokers:
        await broker.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    wire.run(_main(sys.argv[1:]))
