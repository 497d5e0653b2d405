"""Channels to the partitions' private ingress ports, and how a call follows its
partition when the process serving it changes (a cluster's leader, a restarted
`--workers` worker)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from durable.v1 import ingress_pb2, ingress_pb2_grpc

from ..ingress.router import is_outcome
from .directory import Unreachable, Where, never_sent

log = logging.getLogger("broker.cluster")

T = TypeVar("T")
# How many times a forwarded call follows its partition to a new leader.
_MOVES = 3
# How long a caller with no deadline of its own waits for an acknowledged invocation
# whose partition's process went away (a failover takes the lease's TTL and catching up;
# a `--workers` worker is restarted within seconds).
FOLLOW_S = 60.0
_FOLLOW_BACKOFF_S = (0.05, 1.0)
# Past the channels' longest reconnect backoff (1 s, below): a process that serves the
# partition again is connected to by then.
_RECONNECT_S = 1.5


def undelivered(error: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call's status says nothing about its invocation: the process
    serving the partition went away or stopped serving it.

    CANCELLED counts too: a partition that steps down stops its private server, which
    cancels the calls still running there after a short grace (one waiting for an append
    that JetStream had not answered yet, in a failover). An invocation's own
    cancellation carries the outcome trailer, like every handler's failure."""
    return error.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
    ) and not is_outcome(error)


class Unanswered(Exception):
    """A forwarded call with an idempotency key that failed before the partition
    acknowledged it (no invocation id): sent again if the partition moved."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(str(error))
        self.error = error


class Answered(Exception):
    """A forwarded call the partition answered with a failure that is neither followed
    nor sent again: relayed as it is."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(str(error))
        self.error = error


async def _connects(channel: grpc.aio.Channel) -> bool:
    """Whether `channel` connects within `_RECONNECT_S`. A channel that failed to reach
    a process (down a moment: a node restarted on its ports, a worker respawned) waits
    out its reconnect backoff before it tries again, and fails calls at once meanwhile:
    one that CI saw reached a node that had just taken its partition back, and was
    answered UNAVAILABLE although nothing had gone on the wire."""
    channel.get_state(try_to_connect=True)
    try:
        await asyncio.wait_for(channel.channel_ready(), _RECONNECT_S)
    except TimeoutError:
        return False
    return True


class Peers:
    """Channels to the other partitions' private ingress ports, opened on first use."""

    def __init__(self, where: Where, max_payload: int) -> None:
        self._where = where
        self._options = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", max_payload + 64 * 1024),
            # A restarted partition is reachable again within a second.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        # By address: in cluster mode a partition moves with its leader.
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def channel(self, partition: int) -> grpc.aio.Channel:
        """The channel to `partition`.

        Raises:
            Unreachable: nobody serves it now.
        """
        return self._at(await self._where.ingress(partition))

    def _at(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=self._options)
            self._channels[address] = channel
        return channel

    async def call(
        self,
        partition: int,
        send: Callable[[grpc.aio.Channel], Awaitable[T]],
        wait: float | None = None,
    ) -> T:
        """`send` over the channel to `partition`; sent again, up to a bound, when it
        could not connect because the partition moved (a cluster's leader changed): such
        a call never reached anyone. While nobody serves the partition (an election), it
        waits up to `wait` seconds (`Where`'s bounded default when None) for a leader.

        Raises:
            Unreachable: nobody serves it now.
            grpc.aio.AioRpcError: the partition's answer, or the last failure to reach it.
        """
        for attempt in range(_MOVES):
            address = await self._where.ingress(partition, wait)
            channel = self._at(address)
            try:
                return await send(channel)
            except grpc.aio.AioRpcError as e:
                if not never_sent(e) or attempt + 1 == _MOVES:
                    raise
                if not await self._where.moved(partition, address) and not await _connects(channel):
                    raise
            except Unanswered as e:
                if attempt + 1 == _MOVES or not await self._where.moved(partition, address):
                    raise Answered(e.error) from None
                log.info("partition %d moved before it took a call; sent again", partition)
        raise AssertionError("unreachable")

    async def attach(
        self,
        partition: int,
        request: ingress_pb2.AttachRequest,
        deadline: float,
        metadata: list[tuple[str, Any]] | None = None,
    ) -> ingress_pb2.Output:
        """Waits for an acknowledged invocation's result wherever `partition` is served,
        following it through leader changes and restarts until `deadline` (loop time).

        Raises:
            Unreachable: nobody serves it now.
            grpc.aio.AioRpcError: the invocation's failure, or the last failure to reach
                its partition once the deadline passed.
        """
        loop = asyncio.get_running_loop()

        async def send(channel: grpc.aio.Channel) -> ingress_pb2.Output:
            output: ingress_pb2.Output = await ingress_pb2_grpc.IngressStub(channel).Attach(
                request, metadata=metadata, timeout=max(deadline - loop.time(), 0.1)
            )
            return output

        delay, most = _FOLLOW_BACKOFF_S
        while True:
            try:
                return await self.call(partition, send)
            except grpc.aio.AioRpcError as e:
                if not undelivered(e) or loop.time() + delay >= deadline:
                    raise
            except Unreachable:
                if loop.time() + delay >= deadline:
                    raise
            await asyncio.sleep(delay)  # a new leader is taking over, or a worker restarting
            delay = min(delay * 2, most)

    async def close(self) -> None:
        """Closes every channel."""
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
