"""The connection to NATS JetStream and what the cluster keeps there.

  DURABLE_P<n>     stream: partition n's log (subject `durable.log.<n>`)
  durable_meta     bucket: the cluster's partition count, fixed at creation
  durable_leases   bucket with a TTL: `p<n>` names partition n's leader
  durable_nodes    bucket with a TTL: each live node's addresses and positions
  durable_snapshots  object store: each partition's latest snapshot (`snapshot`)

Every check that can refuse a node runs before it writes anything: a NATS cluster
that cannot be reached, one without JetStream, one with too few servers for the
replicas, and a partition count other than the cluster's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType, StreamConfig
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from .. import logs

log = logging.getLogger("broker.replication")
T = TypeVar("T")

REPLICAS = 3
SNAPSHOTS = "durable_snapshots"
# A leader renews its lease well within this; a silent one loses it after it.
LEASE_TTL_S = 2.0
NODE_TTL_S = 3.0
# The bucket of heartbeats: a key per live node.
NODES_BUCKET = "durable_nodes"
# The bucket of the cluster's settings (its partition count).
META_BUCKET = "durable_meta"
# What JetStream accepts in one entry; a group commit is cut into entries below it.
MAX_ENTRY_BYTES = 7 * 1024 * 1024
# Room left in a NATS message for an entry's headers (append id, expected sequence, part).
_HEADER_ROOM = 4 * 1024
_CONNECT_TIMEOUT_S = 3.0
_READY_TIMEOUT_S = 30.0
# How long a start tries to reach any NATS server before it refuses (nats-py itself
# would retry forever: it only has one retry setting, and later reconnects need it).
START_CONNECT_S = 5.0
# JetStream's error code for replicas asked of a server that is not clustered.
_NOT_CLUSTERED = 10074
# How long JetStream may take to answer an API call (elections included).
API_TIMEOUT_S = 5.0


class EngineError(Exception):
    """The engine cannot serve this node; the message says what to fix."""


def stream_name(partition: int) -> str:
    """The stream holding `partition`'s log."""
    return f"DURABLE_P{partition}"


def subject(partition: int) -> str:
    """The subject `partition`'s entries are published on."""
    return f"durable.log.{partition}"


class Engine:
    """A connected client and the cluster's buckets.

    Use `connect`; `nc` and `js` are the nats-py client and its JetStream context.
    """

    def __init__(self, nc: Client, js: JetStreamContext, urls: list[str]) -> None:
        self.nc = nc
        self.js = js
        self.urls = urls
        self.meta: KeyValue | None = None
        self.leases: KeyValue | None = None
        self.nodes: KeyValue | None = None
        self.snapshots: ObjectStore | None = None

    @classmethod
    async def connect(cls, urls: list[str], name: str) -> Engine:
        """Connects and checks that JetStream answers.

        Raises:
            EngineError: no server answers, or JetStream is off.
        """
        shown = ",".join(urls)
        nc = Client()
        errors: list[Exception] = []

        async def on_error(e: Exception) -> None:
            # Before the first connection each failed attempt is kept for the refusal
            # (nats-py's default logs a traceback per attempt); after it, one line each.
            if nc.is_connected or nc.is_reconnecting:
                log.warning("NATS: %s", logs.reason(e))
            else:
                errors.append(e)

        # nats-py annotates the two timings as int; it takes (and we want) fractions.
        options: dict[str, Any] = {
            "connect_timeout": _CONNECT_TIMEOUT_S,
            # After the first connection: keep trying, a server restart is routine.
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.25,
        }
        try:
            await asyncio.wait_for(
                nc.connect(servers=urls, name=name, error_cb=on_error, **options),
                START_CONNECT_S,
            )
        except Exception as e:
            await nc.close()
            last = errors[-1] if errors else e
            raise EngineError(
                f"cannot reach NATS at {shown} within {START_CONNECT_S:.0f} s "
                f"({last or type(last).__name__}); start the NATS servers first, or fix "
                "--nats"
            ) from None
        js = nc.jetstream(timeout=API_TIMEOUT_S)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _READY_TIMEOUT_S
        while True:
            try:
                await js.account_info()
                break
            except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as e:
                await nc.close()
                raise EngineError(
                    f"NATS at {shown} has no JetStream ({type(e).__name__}); run nats-server "
                    "with JetStream on (`-js`, or a `jetstream {}` block in its config)"
                ) from None
            except nats.errors.TimeoutError:
                # Servers starting together: JetStream answers once they elected a leader.
                if loop.time() > deadline:
                    await nc.close()
                    raise EngineError(
                        f"JetStream at {shown} did not answer within {_READY_TIMEOUT_S:.0f} s; "
                        "are a majority of the NATS servers up and clustered?"
                    ) from None
                await asyncio.sleep(0.5)
            except Exception as e:
                await nc.close()
                raise EngineError(f"JetStream at {shown} does not answer: {e}") from None
        return cls(nc, js, urls)

    @property
    def entry_limit(self) -> int:
        """The largest log entry to publish: `MAX_ENTRY_BYTES`, or less when the NATS
        server takes smaller messages (its `max_payload`, 1 MB unless configured); a
        batch larger than this goes in parts (`PartitionLog.append`)."""
        return max(_HEADER_ROOM, min(MAX_ENTRY_BYTES, self.nc.max_payload - _HEADER_ROOM))

    async def open(self, partitions: int | None, timeout: float = 30.0) -> int:
        """`open_once`, retried while JetStream is busy (nodes starting together create
        the same streams; an election is under way) until `timeout`."""
        return await self._retrying(lambda: self.open_once(partitions), timeout)

    async def stored_partitions(self, timeout: float = 30.0) -> int | None:
        """The cluster's partition count, or None when no node created the cluster yet;
        creates nothing. Retried as `open` is."""
        return await self._retrying(self._stored_once, timeout)

    async def _retrying(self, call: Callable[[], Awaitable[T]], timeout: float) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                return await call()
            except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as e:
                if loop.time() > deadline:
                    raise EngineError(
                        f"JetStream at {','.join(self.urls)} did not answer within "
                        f"{timeout:.0f} s ({type(e).__name__}); are a majority of the NATS "
                        "servers up?"
                    ) from None
                log.info("JetStream busy (%s), retrying", type(e).__name__)
                await asyncio.sleep(0.5)

    async def open_once(self, partitions: int | None) -> int:
        """Opens (creating on first use) the buckets and every partition's stream.

        Args:
            partitions: The count this node was started with, or None to take the
                cluster's.

        Returns:
            The cluster's partition count.

        Raises:
            EngineError: the count differs from the cluster's, the cluster does not
                exist and no count was given, or JetStream refuses the replicas.
        """
        if partitions is None and await self._stored_once() is None:
            # Refused before the first bucket is made: a later start finds NATS as it was.
            raise EngineError(
                "this NATS cluster holds no broker cluster yet: start the first node "
                "with --partitions N"
            )
        self.meta = await self._bucket(KeyValueConfig(bucket=META_BUCKET, history=1))
        stored = await _read_int(self.meta, "partitions")
        if stored is None:
            if partitions is None:
                raise EngineError("the cluster's partition count vanished while reading it")
            try:
                await self.meta.create("partitions", str(partitions).encode())
                stored = partitions
            except nats.js.errors.KeyWrongLastSequenceError:
                stored = await _read_int(self.meta, "partitions")  # another node won
        if stored is None:
            raise EngineError("the cluster's partition count vanished while reading it")
        if partitions is not None and partitions != stored:
            raise EngineError(
                f"the cluster was created with {stored} partitions; this node was started "
                f"with --partitions {partitions} (the count is fixed: omit it, or give "
                f"{stored})"
            )
        self.leases = await self._bucket(
            KeyValueConfig(bucket="durable_leases", history=1, ttl=LEASE_TTL_S)
        )
        self.nodes = await self._bucket(
            KeyValueConfig(bucket=NODES_BUCKET, history=1, ttl=NODE_TTL_S)
        )
        self.snapshots = await self._object_store(SNAPSHOTS)
        for p in range(stored):
            await self._stream(p)
        return stored

    async def _object_store(self, bucket: str) -> ObjectStore:
        try:
            return await self.js.object_store(bucket)
        except nats.js.errors.NotFoundError:
            pass
        config = ObjectStoreConfig(bucket=bucket, replicas=REPLICAS, storage=StorageType.FILE)
        try:
            return await self.js.create_object_store(bucket, config=config)
        except nats.js.errors.BadRequestError as e:
            if "already in use" in (e.description or ""):
                return await self.js.object_store(bucket)  # another node made it
            raise EngineError(self._refused(f"the object store {bucket}", e)) from None
        except nats.js.errors.ServiceUnavailableError:
            raise
        except nats.js.errors.APIError as e:
            raise EngineError(self._refused(f"the object store {bucket}", e)) from None

    async def _stored_once(self) -> int | None:
        try:
            meta = await self.js.key_value(META_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            return None
        return await _read_int(meta, "partitions")

    async def _bucket(self, config: KeyValueConfig) -> KeyValue:
        config.replicas = REPLICAS
        config.storage = StorageType.FILE
        try:
            return await self.js.key_value(config.bucket or "")
        except nats.js.errors.BucketNotFoundError:
            pass
        try:
            return await self.js.create_key_value(config)
        except nats.js.errors.BadRequestError as e:
            if "already in use" in (e.description or ""):
                return await self.js.key_value(config.bucket or "")  # another node made it
            raise EngineError(self._refused(f"the bucket {config.bucket}", e)) from None
        except nats.js.errors.ServiceUnavailableError:
            raise
        except nats.js.errors.APIError as e:
            raise EngineError(self._refused(f"the bucket {config.bucket}", e)) from None

    async def _stream(self, partition: int) -> None:
        name = stream_name(partition)
        try:
            await self.js.stream_info(name)
            return
        except nats.js.errors.NotFoundError:
            pass
        try:
            await self.js.add_stream(
                StreamConfig(
                    name=name,
                    subjects=[subject(partition)],
                    num_replicas=REPLICAS,
                    storage=StorageType.FILE,
                    max_msg_size=MAX_ENTRY_BYTES + 64 * 1024,
                    # Retried appends carry their id: a repeat within this window is
                    # answered with the first one's sequence instead of stored twice.
                    duplicate_window=120.0,
                )
            )
        except nats.js.errors.BadRequestError as e:
            if "already in use" not in (e.description or ""):  # else another node made it
                raise EngineError(self._refused(f"the stream {name}", e)) from None
        except nats.js.errors.ServiceUnavailableError:
            raise
        except nats.js.errors.APIError as e:
            raise EngineError(self._refused(f"the stream {name}", e)) from None

    def _refused(self, what: str, e: nats.js.errors.APIError) -> str:
        if e.err_code == _NOT_CLUSTERED:
            return (
                f"NATS at {','.join(self.urls)} is a single JetStream server, not a "
                f"cluster: the broker keeps {REPLICAS} replicas of every log, so it needs "
                f"{REPLICAS} nats-servers with JetStream, clustered (each with a "
                "`cluster {}` block routing to the others); start them and give every "
                f"server's URL to --nats (JetStream said: {e.description})"
            )
        return (
            f"JetStream refused to create {what} with {REPLICAS} replicas: {e.description} "
            f"(code {e.err_code}); the cluster needs {REPLICAS} NATS servers with "
            "JetStream, clustered (a `cluster {}` block with routes to each other)"
        )

    async def log_bounds(self, partition: int) -> tuple[int, int] | None:
        """The first and last entries `partition`'s log keeps, or None when JetStream
        does not answer."""
        try:
            info = await self.js.stream_info(stream_name(partition))
        except Exception:
            return None
        return int(info.state.first_seq or 0), int(info.state.last_seq or 0)

    async def close(self) -> None:
        """Closes the connection (pending publishes are flushed first)."""
        try:
            await self.nc.drain()
        except Exception:
            await self.nc.close()


async def _read_int(bucket: KeyValue, key: str) -> int | None:
    """The positive count under `key` of `META_BUCKET`, or None when there is none.

    Raises:
        EngineError: Something other than a broker wrote the key (a person, a tool): every
            node would otherwise fail at start with a traceback.
    """
    try:
        entry = await bucket.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    raw = entry.value or b""
    text = raw.decode("ascii", "replace").strip()
    if not text.isdigit() or int(text) < 1:
        raise EngineError(
            f"the cluster's {key} in NATS (bucket {META_BUCKET}, key {key}) is {raw[:40]!r}, "
            "not a count: only brokers write it; put the count back, e.g. "
            f"`nats kv put {META_BUCKET} {key} N`"
        )
    return int(text)
