"""Wires the broker together: storage, partition, invoker, timers, ingress and admin."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
from durable.v1 import admin_pb2, admin_pb2_grpc, cluster_pb2_grpc, ingress_pb2, ingress_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from . import addresses, endpoint_uri, metrics, security
from .admin import AdminServicer
from .affinity import QuietPinning
from .clock import WALL, Clock, now_ms
from .cluster.deliver import DeliverServicer
from .cluster.placement import Placement
from .cluster.shipper import Transport
from .config import MAX_SEND_BYTES, Settings, receive_limit
from .core.partition import Partition
from .driver import Driver
from .ingress import DynamicReflection, IngressRouter, IngressServicer, listen
from .interceptors import ErrorStatuses
from .multiplex import Streams
from .registry import Registry
from .storage import deployments, open_kv
from .storage.commit import Log
from .storage.kv import KV

if TYPE_CHECKING:
    from .console import Console

log = logging.getLogger("broker")

# How long a graceful stop (a shutdown, a cluster handover) lets running attempts end
# before it stops the partition: a handler between steps ends in milliseconds; one waiting
# on a call or a timer suspends after --suspend-after anyway.
DRAIN_S = 1.0

_HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
INGRESS_SERVICE = ingress_pb2.DESCRIPTOR.services_by_name["Ingress"].full_name


def server_options(max_payload: int, reuse_port: bool = False) -> list[tuple[str, int]]:
    """gRPC server options: the payload limit, and whether the port may be shared (by
    the workers of one broker; otherwise a second broker on the port must fail)."""
    return [
        ("grpc.max_receive_message_length", receive_limit(max_payload)),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ("grpc.so_reuseport", int(reuse_port)),
    ]


class GenericOnly:
    """A server as generated `add_*Servicer_to_server` functions see it: they hand it
    their handlers both as a generic handler and as registered methods, and it keeps
    only the generic one.

    grpc.aio waits for the next call of each registered method in a task of its own and,
    for every call it accepts, waits on all of them again (`asyncio.wait` with a
    callback on each): on the ingress, where every user call is accepted that way,
    health's and the broker's own methods would make that six futures per call instead
    of one. Which handler serves a method is unchanged: these services' paths are the
    generic ones the routers decline.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(
        self,
        handlers: Sequence[grpc.GenericRpcHandler],  # type: ignore[type-arg]
    ) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self,
        service: str,
        handlers: dict[str, grpc.RpcMethodHandler],  # type: ignore[type-arg]
    ) -> None:
        """Dropped: the generic handler given with them serves the same methods."""


async def add_health(server: grpc.aio.Server | GenericOnly, servicer: Any = None) -> None:
    """grpc.health.v1: `servicer` (shared by several servers), or one of its own that
    always answers SERVING."""
    if servicer is None:
        servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)


async def ingress_server(
    max_payload: int, registry: Registry, reuse_port: bool = False, health_servicer: Any = None
) -> grpc.aio.Server:
    """An ingress server with health (`health_servicer`'s, or always SERVING) and
    reflection over the registered services; the caller adds the ingress's own handlers."""
    server = grpc.aio.server(
        options=server_options(max_payload, reuse_port), interceptors=[ErrorStatuses()]
    )
    await add_health(GenericOnly(server), health_servicer)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                reflection.SERVICE_NAME,
                {
                    "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                        DynamicReflection(
                            registry, extra=(INGRESS_SERVICE, _HEALTH, reflection.SERVICE_NAME)
                        ).ServerReflectionInfo,
                        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    return server


class Broker:
    """A running broker.

    Args:
        settings: Addresses (port 0 picks a free one), storage and timing settings.
        clock: Where durable time is read and waited on: the wall clock, or a test
            environment's `clock.VirtualClock` (time skipping).
        placement: This partition among others (`--workers`); default: the only one.
        transport: Delivers cross-partition messages (with `placement`).
        delivery_secret: What other partitions' deliveries must carry (with `placement`).
        kv: The store, already open (cluster mode: the replica's); default: opened
            from `settings.data_dir`. Closed by `stop` either way.
        log: Cluster mode: the partition's replicated log, which every write goes
            through before it counts.
        streams: The endpoint streams every partition of this process shares (a
            worker, a cluster node); default: the broker's own.
        pinning: Keeps the process's Python threads on one CPU while attempts come one
            at a time (`broker.affinity`); only for a process that is the broker alone.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Clock = WALL,
        placement: Placement | None = None,
        transport: Transport | None = None,
        delivery_secret: str = "",
        kv: KV | None = None,
        log: Log | None = None,
        streams: Streams | None = None,
        pinning: QuietPinning | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._delivery_secret = delivery_secret
        self.kv = open_kv(settings.data_dir, settings.accept_data_loss) if kv is None else kv
        self.registry = Registry()
        self.partition = Partition(
            self.kv,
            self.registry,
            settings,
            # The wall clock as the partition always read it; any other through the clock.
            placement=placement,
            **({} if clock is WALL else {"now": functools.partial(now_ms, clock)}),
        )
        self.metrics = self.partition.metrics
        self._metrics_server: asyncio.Server | None = None
        self.driver = Driver(
            self.partition,
            self.kv,
            settings,
            observe=self._observe_commit,
            clock=clock,
            transport=transport,
            log=log,
            streams=streams,
            pinning=pinning,
        )
        own = self.driver.invoker.streams
        if own is not None:  # shared ones would repeat in every partition's scrape
            self.metrics.frames = own.linger
        self.committer = self.driver.committer
        self.ingress_port = 0
        self.admin_port = 0
        self._servers: list[grpc.aio.Server] = []
        self._health_updates: list[asyncio.Task[None]] = []
        self._purger: asyncio.Task[None] | None = None
        # Seconds between purges of expired invocations.
        self.purge_interval = max(1.0, min(settings.retention / 4, 60.0))
        self._indexer: asyncio.Task[None] | None = None
        self.console: Console | None = None

    async def start(self) -> None:
        """Recovers from storage and starts serving. A start that fails (a port taken,
        a certificate that does not load) lets go of every server it had bound before
        the error reaches the caller: nothing is left listening, and no server is left
        for the garbage collector to stop on a closed event loop."""
        try:
            await self._start()
        except BaseException:
            await self._stop_serving(grace=None)
            raise

    async def _start(self) -> None:
        for record in deployments.scan(self.kv):
            # Stored before URIs were checked: shown and dialled in the one form.
            record.uri = endpoint_uri.comparable(record.uri)
            try:
                self.registry.add(record)
            except ValueError as e:
                log.error("stored deployment %s no longer loads: %s", record.id, e)
        self.driver.start()
        options = server_options(self.settings.max_payload_bytes)
        self.ingress_servicer = IngressServicer(self.driver)
        self.router = IngressRouter(self.driver, self.registry, self.settings.max_payload_bytes)
        ingresses = await self._ingress_servers()
        interceptors: list[grpc.aio.ServerInterceptor] = (  # type: ignore[type-arg]
            [security.TokenInterceptor(self.settings.admin_token)]
            if self.settings.admin_token
            else []
        )
        interceptors.append(ErrorStatuses())
        admin = grpc.aio.server(options=options, interceptors=interceptors)
        self._servers.append(admin)
        await add_health(admin)
        self.admin_servicer = AdminServicer(self.driver, self.registry)
        admin_pb2_grpc.add_AdminServicer_to_server(self.admin_servicer, admin)
        reflection.enable_server_reflection(
            (
                admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
                _HEALTH,
                reflection.SERVICE_NAME,
            ),
            admin,
        )
        self.admin_port = await self._bind(admin, self.settings.admin)
        for ingress in ingresses:
            await ingress.start()
        await admin.start()
        self._purger = asyncio.create_task(self._purge_loop())
        self._indexer = asyncio.create_task(self.admin_servicer.index_completed())
        if self.settings.console:
            # Imported only here: the console is off by default and aiohttp costs a
            # third of the broker's import time.
            from .console import start_console

            self.console = await start_console(self.settings, self.admin_servicer, self.registry)
        if self.settings.metrics:
            self._metrics_server = await metrics.serve(self.metrics, self.settings.metrics)
        log.info(
            "broker ready: ingress %s, admin %s, data %s",
            addresses.with_port(self.settings.ingress, self.ingress_port),
            addresses.with_port(self.settings.admin, self.admin_port),
            self.settings.data_dir or "(memory)",
        )

    async def stop(self, grace: float = 5.0, drain: float = 0.0) -> None:
        """Stops accepting calls (those in flight get `grace` seconds), lets journal
        writes finish, closes storage. With `drain`, the attempts still running then
        (one-way sends, timers, retries) get up to that many seconds to end before they
        are cut, and no new one starts: a graceful shutdown."""
        await self._stop_serving(grace)
        if drain > 0:
            left = await self.driver.invoker.quiesce(drain)
            if left:
                log.info("%d attempts still running after %.1f s: they resume later", left, drain)
        await self.driver.stop()
        self.kv.close()

    async def _stop_serving(self, grace: float | None) -> None:
        if self._purger is not None:
            self._purger.cancel()
        if self._indexer is not None:
            self._indexer.cancel()
        if self.console is not None:
            await self.console.stop()
        if self._metrics_server is not None:
            self._metrics_server.close()
        await asyncio.gather(*(s.stop(grace) for s in self._servers))

    def idle(self) -> bool:
        """See `Driver.idle`."""
        return self.driver.idle()

    async def _sleep(self, seconds: float) -> None:
        # On the broker's clock, so that retention passes with a test's virtual time;
        # housekeeping, so it never makes a virtual clock jump.
        if self.clock is WALL:
            await asyncio.sleep(seconds)
            return
        woken = asyncio.Event()
        handle = self.clock.call_later(seconds, woken.set, durable=False)
        try:
            await woken.wait()
        finally:
            handle.cancel()

    async def _ingress_servers(self) -> list[grpc.aio.Server]:
        """The ingress: `--ingress-servers` servers on one port (see `ingress.listen`),
        each with every handler; binds them and sets `ingress_port`.

        Only the embedded broker's: a worker's or a cluster node's partition keeps one
        server on its private port. Those ports are picked free by the supervisor and
        bound later, and any gRPC server (SO_REUSEPORT is its default) that took the same
        port meanwhile would share it silently instead of failing to bind."""
        count = self.settings.ingress_servers if self.partition.placement.single else 1
        if count > 1:
            listen.refuse_if_listened(self.settings.ingress)
        servers: list[grpc.aio.Server] = []
        address = self.settings.ingress
        health_servicer = await self._journal_health() if self.partition.placement.single else None
        for _ in range(count):
            server = await ingress_server(
                self.settings.max_payload_bytes,
                self.registry,
                reuse_port=count > 1,
                health_servicer=health_servicer,
            )
            self._servers.append(server)
            ingress_pb2_grpc.add_IngressServicer_to_server(
                self.ingress_servicer,
                GenericOnly(server),  # type: ignore[arg-type]
            )
            if not self.partition.placement.single:
                cluster_pb2_grpc.add_PartitionsServicer_to_server(
                    DeliverServicer(self.driver, self._delivery_secret),
                    GenericOnly(server),  # type: ignore[arg-type]
                )
            server.add_generic_rpc_handlers((self.router,))
            port = await self._bind(server, address)
            if not servers:
                # An ephemeral port (`:0`) is chosen by the first; the others join it.
                self.ingress_port = port
                address = addresses.with_port(address, port)
            servers.append(server)
        return servers

    async def _journal_health(self) -> Any:
        """The ingress's grpc.health.v1: NOT_SERVING while journal writes fail (a full
        disk), when the ingress turns new calls away, so that a load balancer or an
        orchestrator's probe sees it too; SERVING again once they succeed."""
        servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        serving = health_pb2.HealthCheckResponse.SERVING
        await servicer.set("", serving)
        loop = asyncio.get_running_loop()

        def changed(healthy: bool) -> None:
            status = serving if healthy else health_pb2.HealthCheckResponse.NOT_SERVING
            # Set in order: the task of a later change runs after an earlier one's.
            self._health_updates.append(loop.create_task(servicer.set("", status)))
            self._health_updates = [t for t in self._health_updates if not t.done()]

        self.driver.committer.health_listeners.append(changed)
        return servicer

    async def _bind(self, server: grpc.aio.Server, address: str) -> int:
        return await security.bind(server, address, self.settings.tls_cert, self.settings.tls_key)

    def _observe_commit(self, batches: int, sync_seconds: float) -> None:
        self.metrics.batch_size.observe(batches)
        if self.settings.fsync:
            self.metrics.fsync_seconds.observe(sync_seconds)

    async def _purge_loop(self) -> None:
        failing = False
        while True:
            await self._sleep(self.purge_interval)
            try:
                purged = self.driver.apply(self.partition.purge_expired)
                # Wait until the deletions are durable: while writes fail (a full disk)
                # the next round would queue the same deletions again and again.
                await self.committer.barrier()
            except Exception as e:
                # The store is unavailable (e.g. reopening after a full disk): a purge is
                # never urgent, the next round tries again. Said once per outage.
                if not failing:
                    log.error("purging expired invocations failed, retrying: %s", e)
                failing = True
                continue
            if failing:
                log.warning("purging expired invocations works again")
                failing = False
            if purged:
                log.info("purged %d expired invocation(s)", purged)
