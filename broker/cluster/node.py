"""`python -m broker --nats URL[,URL...] --node NAME`: one node of a cluster.

Every node holds a replica of every partition (a RocksDB its tail keeps up to date) and
leads some of them; every node serves the public ingress and admin API and sends each
call to the partition's leader, in-process or over the leader's private ports. A
vacant partition (its leader's lease expired or was released) is taken by the node the
partition prefers among the live ones (rendezvous hashing on the names), or by any node
once it stayed vacant a moment longer; a node that leads a partition another live node
prefers hands it over, so partitions spread over the nodes as they join.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import secrets
import urllib.parse
from collections.abc import Coroutine, Sequence
from typing import Any

import grpc
import nats.js.errors
from durable.v1 import cluster_pb2, cluster_pb2_grpc, ingress_pb2_grpc

from .. import endpoint_uri, logs, metrics, security
from ..config import Settings
from ..ingress import IngressRouter, IngressServicer
from ..invoker import endpoint_streams
from ..metrics import LATENCY_BUCKETS, Histogram
from ..registry import Registry
from ..replication.engine import Engine, stream_name
from ..replication.lease import Leases
from ..replication.turns import Turns
from ..server import Broker, GenericOnly, ingress_server
from ..storage import deployments
from ..storage.kv import StorageError
from . import layout, node_metrics
from .assign import assignment
from .deliver import SECRET_HEADER
from .forward import Partitions
from .front import FrontServer
from .ingress import ClusterIngressServicer, ClusterRouter
from .leaders import Leaders
from .node_status import STALE_S, NodeFront, heartbeat
from .peers import Peers
from .placement import Placement
from .replica import Replica

log = logging.getLogger("broker.cluster")

POLL_S = 0.25
HEARTBEAT_S = 0.5
# A vacant partition its preferred node has not taken within this is anyone's.
GRACE_S = 1.0
# A node hands a partition to the node it prefers only after leading it this long.
HANDOFF_AFTER_S = 3.0
# How long a starting node waits for the first heartbeats before it takes partitions.
JOIN_S = 3.0
# How long a call to an unknown service waits for this node to apply the log's end.
CATCH_UP_S = 2.0
# How long stopping waits for a take-over or handover under way to end.
CHANGES_STOP_S = 10.0
_DELIVER_TIMEOUT = 30.0
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class NodeError(Exception):
    """The node cannot start; the message says what to fix."""


def check(settings: Settings) -> tuple[list[str], str]:
    """The NATS URLs and node name of a `--nats` start; writes nothing.

    Raises:
        NodeError: a flag is missing or malformed.
    """
    assert settings.nats is not None
    urls = [u.strip() for u in settings.nats.split(",") if u.strip()]
    bad = [u for u in urls if not _valid_url(u)]
    if not urls or bad:
        shown = ", ".join(repr(u) for u in bad) or repr(settings.nats)
        raise NodeError(
            f"--nats {shown} is not a NATS URL: give nats://HOST:PORT[,nats://HOST:PORT...]"
        )
    if not settings.node or not _NAME.match(settings.node):
        raise NodeError(
            "--nats needs --node NAME (BROKER_NODE): this node's name in the cluster, "
            "letters, digits, '-' and '_' only"
        )
    if settings.data_dir is None:
        raise NodeError("--nats needs a --data-dir: each node keeps a replica of every partition")
    if layout.is_single_process(settings.data_dir):
        raise NodeError(
            f"{settings.data_dir} is a single-process broker's data dir; a node keeps its "
            "replicas in a data dir of its own: give --data-dir a new one"
        )
    if settings.workers is not None:
        raise NodeError("--nats and --workers do not go together")
    if settings.partitions is not None and not 1 <= settings.partitions <= layout.MAX_PARTITIONS:
        raise NodeError(f"--partitions must be between 1 and {layout.MAX_PARTITIONS}")
    return urls, settings.node


def _valid_url(url: str) -> bool:
    """nats:// or tls://, a host, and a port if one is given (NATS's default is 4222)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("nats", "tls") and bool(parts.hostname) and parts.path in ("", "/")


class Node:
    """This node: its replicas, its view of the leaders, its public servers.

    Args:
        settings: The node's settings.
        engine: Connected, with its buckets open.
        count: The cluster's partition count.
        secret: What cross-partition deliveries carry.
    """

    def __init__(self, settings: Settings, engine: Engine, count: int, secret: str) -> None:
        assert settings.node is not None and engine.leases is not None
        self.settings = settings
        self.name = settings.node
        self.engine = engine
        self.count = count
        self.secret = secret
        self.leases = Leases(engine.leases)
        self.leaders = Leaders(count)
        self.peers = Peers(self.leaders, settings.max_payload_bytes)
        # One stream per endpoint for the whole node, whichever partitions it leads.
        self.streams = endpoint_streams(settings.endpoint_secret, settings.stream_linger)
        self.routers: dict[int, IngressRouter] = {}
        self.ingress_servicers: dict[int, IngressServicer] = {}
        self.brokers: dict[int, Broker] = {}
        # What routes a call by its key: the deployments as partition 0's replica has them.
        self.registry = Registry()
        self.replicas = [Replica(self, p) for p in range(count)]
        self._tasks: list[asyncio.Task[None]] = []
        self._public: grpc.aio.Server | None = None
        self._front: FrontServer | None = None
        self._vacant_since: dict[int, float] = {}
        self._changes: set[asyncio.Task[None]] = set()
        self._catching_up: asyncio.Future[None] | None = None
        self._led_since: dict[int, float] = {}
        # name -> (last revision seen, local time it changed): liveness without clocks.
        self.seen: dict[str, tuple[int, float]] = {}
        self.alive_since: dict[str, float] = {}
        self.beat_at = 0.0
        # Every node's last heartbeat, by name (`node_status`).
        self.beats: dict[str, dict[str, Any]] = {}
        self.ingress_port = 0
        self.admin_port = 0
        self.append_seconds = Histogram(LATENCY_BUCKETS)
        self.turns = Turns()
        self._metrics: asyncio.Server | None = None

    @property
    def replica_views(self) -> Sequence[Replica]:
        """The replicas, one per partition."""
        return self.replicas

    @property
    def positions(self) -> list[int]:
        """How far this node applied each partition's log."""
        return [r.applied for r in self.replicas]

    # ---- Serving partitions

    def serve(self, partition: int, broker: Broker) -> None:
        """Routes calls for `partition` to `broker`, in-process."""
        self.brokers[partition] = broker
        self.routers[partition] = broker.router
        self.ingress_servicers[partition] = broker.ingress_servicer
        self._led_since[partition] = asyncio.get_running_loop().time()

    def unserve(self, partition: int) -> None:
        """Stops routing to this node's broker for `partition`."""
        self.brokers.pop(partition, None)
        self.routers.pop(partition, None)
        self.ingress_servicers.pop(partition, None)
        self._led_since.pop(partition, None)

    async def deliver(self, destination: int, request: cluster_pb2.DeliverRequest) -> int:
        """Cross-partition messages: in-process when this node leads the destination."""
        local = self.brokers.get(destination)
        if local is not None:
            return await local.driver.commit(
                local.partition.on_delivery, request.source, list(request.messages)
            )

        async def send(channel: grpc.aio.Channel) -> int:
            response = await cluster_pb2_grpc.PartitionsStub(channel).Deliver(
                request, timeout=_DELIVER_TIMEOUT, metadata=((SECRET_HEADER, self.secret),)
            )
            return response.applied

        return await self.peers.call(destination, send)

    # ---- Lifecycle

    async def start(self) -> None:
        """Follows every partition, then serves the public ingress and admin API."""
        for replica in self.replicas:
            replica.follow()
        self._refresh_registry()
        placement = Placement(0, self.count)
        public = await ingress_server(self.settings.max_payload_bytes, self.registry)
        public.add_generic_rpc_handlers(
            (ClusterRouter(self.routers, self.registry, placement, self.peers, self.catch_up),)
        )
        ingress_pb2_grpc.add_IngressServicer_to_server(
            ClusterIngressServicer(self.ingress_servicers, placement, self.peers),
            GenericOnly(public),  # type: ignore[arg-type]
        )
        self.ingress_port = await security.bind(
            public, self.settings.ingress, self.settings.tls_cert, self.settings.tls_key
        )
        await public.start()
        self._public = public
        front = NodeFront(Partitions(self.leaders), self)
        self._front = FrontServer(self.settings, front)
        try:
            self.admin_port = await self._front.start(self.settings.admin)
            if self.settings.metrics:
                self._metrics = await metrics.serve_text(
                    self.settings.metrics, functools.partial(node_metrics.render, self)
                )
        except BaseException:
            # Let go of what is serving on the loop, not in a collector after it closed.
            await asyncio.gather(public.stop(None), self._front.stop(0))
            raise
        self._tasks = [
            asyncio.create_task(heartbeat(self, HEARTBEAT_S), name="heartbeat"),
            asyncio.create_task(self._watch_leases(), name="leases"),
        ]
        log.info(
            "node %s ready: %d partitions, ingress 127.0.0.1:%d, admin 127.0.0.1:%d",
            self.name,
            self.count,
            self.ingress_port,
            self.admin_port,
        )

    async def stop(self) -> None:
        """Hands every partition it leads over, stops serving, closes the replicas."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # A take-over or handover under way (no new one starts now) ends first: closing
        # its replica under it would fail it half done, and a take-over that ends leading
        # is then handed over by the replica's close like any other.
        if self._changes:
            await asyncio.wait(set(self._changes), timeout=CHANGES_STOP_S)
            for task in self._changes:
                task.cancel()
            await asyncio.gather(*self._changes, return_exceptions=True)
        await asyncio.gather(*(r.close() for r in self.replicas), return_exceptions=True)
        if self._metrics is not None:
            self._metrics.close()
        if self._public is not None:
            await self._public.stop(1.0)
        if self._front is not None:
            await self._front.stop(1.0)
        await self.peers.close()
        await self.streams.close()
        assert self.engine.nodes is not None
        try:
            await self.engine.nodes.delete(self.name)
        except Exception:
            pass

    # ---- Leadership

    def alive(self) -> list[str]:
        """The nodes whose heartbeat moved recently, this one included."""
        now = asyncio.get_running_loop().time()
        live = {name for name, (_, at) in self.seen.items() if now - at <= STALE_S}
        live.add(self.name)
        return sorted(live)

    def preferred(self, partition: int, alive: list[str]) -> str:
        """The live node `partition` prefers (`assign.py`): balanced, and mostly
        unchanged for the other nodes' partitions when one node dies or returns."""
        return assignment(self.count, tuple(alive))[partition]

    async def _watch_leases(self) -> None:
        loop = asyncio.get_running_loop()
        # Nodes started together see each other's heartbeats first, so each vacant
        # partition goes straight to the node it prefers instead of to whichever node
        # looked first and then over again.
        deadline = loop.time() + JOIN_S
        while not self.beats and loop.time() < deadline:
            await asyncio.sleep(POLL_S)
        await asyncio.sleep(2 * HEARTBEAT_S)
        while True:
            try:
                await self._look(loop.time())
            except Exception as e:
                log.warning("reading the leases failed: %s", logs.reason(e))
            self._refresh_registry()
            await asyncio.sleep(POLL_S)

    async def _look(self, now: float) -> None:
        alive = self.alive()
        for p, replica in enumerate(self.replicas):
            holder = await self.leases.read(p)
            if replica.busy:
                continue
            if not replica.leading:
                self.leaders.set(p, holder)
            if holder is not None:
                self._vacant_since.pop(p, None)
                mine = holder.node == self.name
                if mine and replica.leading and self._should_hand_over(p, alive, now):
                    log.info("partition %d: handing over to %s", p, self.preferred(p, alive))
                    replica.busy = True
                    self._change(replica.release())
                continue
            if replica.leading:
                continue  # its lease lapsed (a NATS outage): its own renewals retake it
            since = self._vacant_since.setdefault(p, now)
            if self.preferred(p, alive) == self.name or now - since >= GRACE_S:
                replica.busy = True
                self._change(replica.take())

    def _change(self, change: Coroutine[Any, Any, None]) -> None:
        # Busy at once: the next look must not start a second change before this runs.
        task = asyncio.create_task(change)
        self._changes.add(task)
        task.add_done_callback(self._changes.discard)

    def _should_hand_over(self, partition: int, alive: list[str], now: float) -> bool:
        """Whether to hand `partition` to the node it prefers now. Only when all is calm:
        this node led it a while, its own heartbeat goes through (a NATS outage makes
        live nodes look dead, and a handover then would only add to the disruption),
        and the preferred node has been alive a while."""
        led = self._led_since.get(partition)
        if led is None or now - led < HANDOFF_AFTER_S or now - self.beat_at > STALE_S:
            return False
        preferred = self.preferred(partition, alive)
        if preferred == self.name:
            return False
        return now - self.alive_since.get(preferred, now) >= HANDOFF_AFTER_S

    async def catch_up(self) -> None:
        """Brings the routing registry up to the log's end (a service registered through
        another node a moment ago); concurrent callers share one catch-up."""
        if self._catching_up is None or self._catching_up.done():
            self._catching_up = asyncio.ensure_future(self._catch_up())
        await asyncio.shield(self._catching_up)

    async def _catch_up(self) -> None:
        replica = self.replicas[0]
        if not replica.leading:
            try:
                info = await self.engine.js.stream_info(stream_name(0))
                await replica.tail.reach(info.state.last_seq, CATCH_UP_S)
            except Exception as e:
                log.warning("catching up with partition 0's log failed: %s", e)
        self._refresh_registry()

    def _refresh_registry(self) -> None:
        """Brings the routing registry in line with partition 0's replica."""
        try:
            stored = {r.id: r for r in deployments.scan(self.replicas[0].kv)}
        except StorageError:
            return  # the replica is between owners (a leadership change)
        known = {d.id for d in self.registry.deployments()}
        for gone in known - stored.keys():
            self.registry.remove(gone)
        for deployment_id in stored.keys() - known:
            record = stored[deployment_id]
            record.uri = endpoint_uri.comparable(record.uri)
            try:
                self.registry.add(record)
            except ValueError as e:
                log.error("stored deployment %s no longer loads: %s", record.id, e)


async def _cluster_secret(engine: Engine) -> str:
    """The delivery secret every node of the cluster shares (made by the first)."""
    assert engine.meta is not None
    try:
        await engine.meta.create("secret", secrets.token_hex(16).encode())
    except nats.js.errors.KeyWrongLastSequenceError:
        pass
    entry = await engine.meta.get("secret")
    return (entry.value or b"").decode()


async def _refuse_a_live_namesake(engine: Engine, name: str) -> None:
    """Refuses a name another running node has: both would think they lead the same
    partitions. A heartbeat left by this node's previous run stands still; a live one
    moves within `HEARTBEAT_S`."""
    assert engine.nodes is not None
    try:
        first = await engine.nodes.get(name)
    except nats.js.errors.KeyNotFoundError:
        return
    await asyncio.sleep(STALE_S)
    try:
        later = await engine.nodes.get(name)
    except nats.js.errors.KeyNotFoundError:
        return
    if later.revision != first.revision:
        raise NodeError(
            f"a node named {name} is running in this cluster already (its heartbeat is "
            "live): give this node another --node name"
        )


async def open_node(settings: Settings) -> Node:
    """Connects, checks the cluster and this data dir, and builds the node.

    Raises:
        EngineError, NodeError, layout.LayoutError: the start is refused; nothing of
            this node was written.
    """
    urls, name = check(settings)
    engine = await Engine.connect(urls, f"broker-{name}")
    try:
        assert settings.data_dir is not None
        recorded = layout.read(settings.data_dir) if os.path.isdir(settings.data_dir) else None
        existing = await engine.stored_partitions()
        if recorded is not None and existing is not None and recorded != existing:
            # Before the flag's own check: the data dir is what is wrong, whatever the flag.
            raise NodeError(
                f"the data dir {settings.data_dir} holds {recorded} partitions but the "
                f"cluster at {settings.nats} has {existing}: it belongs to another cluster; "
                "give this node a new data dir"
            )
        if recorded is not None and settings.partitions not in (None, recorded):
            raise NodeError(
                f"the data dir {settings.data_dir} holds {recorded} partitions, not "
                f"--partitions {settings.partitions}: start it with --partitions "
                f"{recorded} (or without), or give this node a new data dir"
            )
        count = await engine.open(settings.partitions or recorded)
        if recorded is not None and recorded != count:
            raise NodeError(
                f"the data dir {settings.data_dir} holds {recorded} partitions but the "
                f"cluster has {count}: it belongs to another cluster; give this node a new "
                "data dir"
            )
        await _refuse_a_live_namesake(engine, name)
        if recorded is None:
            layout.create(settings.data_dir, count)
        secret = await _cluster_secret(engine)
        return Node(settings, engine, count, secret)
    except BaseException:
        await engine.close()
        raise
