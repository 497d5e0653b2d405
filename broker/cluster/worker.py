"""`python -m broker.cluster.worker`: one worker process of `python -m broker --workers N`.

Started by the supervisor with the usual broker flags and, in the environment, the
cluster's directory and this worker's number. It runs each of its partitions as a broker
of its own (own RocksDB, invoker, timers; private ingress and admin ports from the
directory), delivers cross-partition messages in-process or over the private ports,
and serves the public ingress address together with the other workers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys

import grpc
from durable import tracing, wire
from durable.v1 import cluster_pb2, cluster_pb2_grpc, ingress_pb2_grpc

from .. import logs, security
from ..config import Settings, parse_args
from ..invoker import endpoint_streams
from ..server import DRAIN_S, Broker, GenericOnly, ingress_server
from . import layout
from .deliver import SECRET_HEADER
from .directory import Directory, from_environment
from .ingress import ClusterIngressServicer, ClusterRouter
from .peers import Peers
from .placement import Placement

log = logging.getLogger("broker.cluster")

# A delivery that takes longer than this is retried (the destination may be restarting).
_DELIVER_TIMEOUT = 30.0


class Worker:
    """This process's partitions and its share of the public ingress.

    Args:
        settings: The broker's settings as given to the supervisor.
        directory: Every partition's private addresses.
        index: This worker's number.
    """

    def __init__(self, settings: Settings, directory: Directory, index: int) -> None:
        self.settings = settings
        self.directory = directory
        self.index = index
        self.peers = Peers(directory, settings.max_payload_bytes)
        # Local deliveries wait until every partition here has recovered: a partition
        # must know what it already applied before it is handed more.
        self._recovered = asyncio.Event()
        self.brokers: dict[int, Broker] = {}
        # One stream per endpoint for the whole worker, shared by its partitions.
        self.streams = endpoint_streams(settings.endpoint_secret, settings.stream_linger)
        for partition in directory.owned_by(index):
            address = directory.partitions[partition]
            own = dataclasses.replace(
                settings,
                data_dir=(
                    None
                    if settings.data_dir is None
                    else layout.partition_dir(settings.data_dir, partition)
                ),
                ingress=address.ingress,
                admin=address.admin,
                # Loopback only, between our own processes; the public ports keep TLS.
                tls_cert=None,
                tls_key=None,
                console=None,
                metrics=address.metrics or None,
            )
            self.brokers[partition] = Broker(
                own,
                placement=Placement(partition, directory.count),
                transport=self._deliver,
                delivery_secret=directory.secret,
                streams=self.streams,
            )
        self._public: grpc.aio.Server | None = None

    async def _deliver(self, destination: int, request: cluster_pb2.DeliverRequest) -> int:
        local = self.brokers.get(destination)
        if local is not None:
            await self._recovered.wait()
            return await local.driver.commit(
                local.partition.on_delivery, request.source, list(request.messages)
            )
        stub = cluster_pb2_grpc.PartitionsStub(await self.peers.channel(destination))
        response = await stub.Deliver(
            request,
            timeout=_DELIVER_TIMEOUT,
            metadata=((SECRET_HEADER, self.directory.secret),),
        )
        return response.applied

    async def start(self) -> None:
        """Recovers every partition, then serves the public ingress."""
        for broker in self.brokers.values():
            await broker.start()
        self._recovered.set()
        first = self.brokers[min(self.brokers)]
        placement = Placement(0, self.directory.count)
        public = await ingress_server(
            self.settings.max_payload_bytes, first.registry, reuse_port=True
        )
        public.add_generic_rpc_handlers(
            (
                ClusterRouter(
                    {p: b.router for p, b in self.brokers.items()},
                    first.registry,
                    placement,
                    self.peers,
                ),
            )
        )
        ingress_pb2_grpc.add_IngressServicer_to_server(
            ClusterIngressServicer(
                {p: b.ingress_servicer for p, b in self.brokers.items()}, placement, self.peers
            ),
            GenericOnly(public),  # type: ignore[arg-type]
        )
        port = await security.bind(
            public, self.settings.ingress, self.settings.tls_cert, self.settings.tls_key
        )
        await public.start()
        self._public = public
        log.info(
            "worker %d ready: partitions %s, ingress 127.0.0.1:%d",
            self.index,
            ",".join(map(str, self.brokers)),
            port,
        )

    async def stop(self, grace: float = 5.0) -> None:
        """Stops serving; lets every partition's journal writes finish."""
        if self._public is not None:
            await self._public.stop(grace)
        await asyncio.gather(*(b.stop(grace, drain=DRAIN_S) for b in self.brokers.values()))
        await self.peers.close()
        await self.streams.close()


async def _main(settings: Settings, directory: Directory, index: int) -> None:
    tracing.configure("broker")
    worker = Worker(settings, directory, index)
    try:
        await worker.start()
    except BaseException:
        # What started before the failure (its partitions' servers) stops on the loop.
        await worker.stop(grace=0)
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("worker %d shutting down", index)
    await worker.stop()
    tracing.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Entry point (the supervisor's child)."""
    found = from_environment()
    if found is None:
        print(
            "broker.cluster.worker is started by `python -m broker --workers N`, not by hand",
            file=sys.stderr,
        )
        return 2
    directory, index = found
    settings = parse_args(argv)
    logs.configure(settings.log_level, f"w{index}")
    try:
        wire.run(_main(settings, directory, index))
    except Exception as e:
        log.critical("worker %d failed: %s", index, e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
