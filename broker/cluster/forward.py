"""The front's way to the partitions: one channel per partition's private admin port,
calls forwarded as raw bytes with the caller's metadata (its admin token) and deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .directory import Unreachable, Where, never_sent

ADMIN_SERVICE = "durable.v1.Admin"
# A listing merged from every partition may be large; the public port's own limit
# (and the client's) still applies to what leaves the front.
_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # A restarted worker is reachable again within a second, not after gRPC's
    # default backoff of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# Headers gRPC sets on every call itself; the rest (authorization, tracing) go on.
_OWN_HEADERS = frozenset({"user-agent", "content-type", "te", "host", "accept-encoding"})
HEALTH_TIMEOUT_S = 1.0
# How many times a call follows its partition to a new leader.
_MOVES = 3

Metadata = tuple[tuple[str, str | bytes], ...]


class Failed(Exception):
    """A partition answered with an error (passed on as it is), or could not be reached.

    Args:
        code: The status to answer with.
        message: Its details.
    """

    def __init__(self, code: grpc.StatusCode, message: str, reached: bool = True) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        # False when the partition could not be reached at all (nothing was asked).
        self.reached = reached


def forwarded_metadata(context: grpc.aio.ServicerContext[Any, Any]) -> Metadata:
    """The caller's metadata minus what gRPC sets on every call by itself."""
    return tuple(
        (key, value)
        for key, value in (context.invocation_metadata() or ())
        if key not in _OWN_HEADERS and not key.startswith((":", "grpc-"))
    )


class Partitions:
    """Calls to every partition's private admin API.

    Args:
        directory: Where each partition listens.
    """

    def __init__(self, directory: Where) -> None:
        self.directory = directory
        # By address: in cluster mode a partition moves with its leader.
        self._channels: dict[str, grpc.aio.Channel] = {}

    @property
    def count(self) -> int:
        """How many partitions there are."""
        return self.directory.count

    async def _channel(self, partition: int) -> tuple[grpc.aio.Channel, str]:
        try:
            address = await self.directory.admin(partition)
        except Unreachable as e:
            raise Failed(grpc.StatusCode.UNAVAILABLE, str(e), reached=False) from None
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=_OPTIONS)
            self._channels[address] = channel
        return channel, address

    async def call(
        self,
        partition: int,
        method: str,
        body: bytes,
        metadata: Metadata = (),
        timeout: float | None = None,
    ) -> bytes:
        """`durable.v1.Admin/method` on `partition`, the request and answer as bytes.

        A call that could not connect because the partition moved (a cluster's leader
        changed) is sent again to the new leader, a bounded number of times.

        Raises:
            Failed: the partition's error, or UNAVAILABLE naming the partition when it
                cannot be reached (its worker is down or restarting).
        """
        for attempt in range(_MOVES):
            channel, address = await self._channel(partition)
            # No (de)serializers: the bytes go through as they came.
            stub = channel.unary_unary(f"/{ADMIN_SERVICE}/{method}", None, None)
            try:
                answer: bytes = await stub(body, metadata=metadata, timeout=timeout)
                return answer
            except grpc.aio.AioRpcError as e:
                code, details = e.code(), e.details() or ""
                # A partition's own UNAVAILABLE (say, an endpoint it cannot reach) comes
                # over a connected channel; a refused connection leaves it not READY.
                connected = channel.get_state() == grpc.ChannelConnectivity.READY
                if code != grpc.StatusCode.UNAVAILABLE or connected:
                    raise Failed(code, details) from None
                # Sent again only when it never left: a call cut mid-way may have run.
                if (
                    not never_sent(e)
                    or attempt + 1 == _MOVES
                    or not await self.directory.moved(partition, address)
                ):
                    raise Failed(
                        code, self.unreachable(partition, details), reached=False
                    ) from None
        raise AssertionError("unreachable")

    async def call_all(
        self,
        method: str,
        body: bytes,
        metadata: Metadata = (),
        timeout: float | None = None,
        partitions: Sequence[int] | None = None,
    ) -> list[bytes]:
        """`call` on every partition (or those given) at once, answers in order.

        Raises:
            Failed: the first partition's error (by partition number), when any fails.
        """
        chosen = list(range(self.count)) if partitions is None else list(partitions)
        answers = await asyncio.gather(
            *(self.call(p, method, body, metadata, timeout) for p in chosen),
            return_exceptions=True,
        )
        out: list[bytes] = []
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            out.append(answer)
        return out

    def unreachable(self, partition: int, details: str) -> str:
        """The message for a partition that cannot be reached."""
        return (
            f"partition {partition} ({self.directory.describe(partition)}) is unreachable: "
            f"{details}; its worker may be restarting, retry shortly"
        )

    async def serving(self, partition: int) -> bool:
        """Whether the partition's admin API reports SERVING right now."""
        try:
            health = health_pb2_grpc.HealthStub((await self._channel(partition))[0])
            answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT_S)
        except (grpc.aio.AioRpcError, Failed):
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        """Closes every channel."""
        await asyncio.gather(*(c.close(None) for c in self._channels.values()))
        self._channels.clear()
