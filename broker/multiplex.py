"""One long-lived `Multiplex` stream to a deployment, shared by all its attempts.

Opening a gRPC stream per attempt costs both processes more than the attempt's own
messages do. Here each deployment gets one stream; attempts are told apart by an id,
and whatever is queued when the stream is ready to write goes out as one frame
(`durable.wire`, shared with the endpoint's side).

While the event loop is saturated a frame waits a few milliseconds before it goes
(`Linger`), so that it carries several attempts' messages: each frame is a gRPC write
here and a read at the endpoint, and costs both more than its messages do. The endpoint
is told to do the same with its replies.

A connection knows nothing of invocations: it carries messages for attempt ids and
tells each attempt's receiver when the stream is gone. The invoker decides the rest.
`Streams` holds a process's channels and connections: every partition a process serves
(a `--workers` worker, a cluster node) shares them, so an endpoint sees one stream per
broker process, not one per partition.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

import grpc
from durable.v1 import protocol_pb2, protocol_pb2_grpc
from durable.wire import frames

log = logging.getLogger("broker.invoker")

# A receiver gets each message the endpoint sends for its attempt, or a string saying
# why the stream ended underneath it.
Receiver = Callable[[protocol_pb2.InvokeResponse | str], None]
# An endpoint channel's reconnect backoff, first and most (milliseconds).
RECONNECT_BACKOFF_MS = (200, 2000)


class Linger:
    """How long a frame to an endpoint waits for more messages: only while the event
    loop is saturated.

    With time to spare on the loop every message goes at once: a wait would only add
    latency. Once the loop thread is on the CPU most of the time, calls queue for it
    anyway, and a frame that waits `seconds` carries what arrived meanwhile, which costs
    each call less than the frames it saves. The loop thread's CPU time is sampled every
    `PERIOD_S` (`watch`); `busy` is the share of the period from which frames wait. It
    is 0.7, not near 1: a saturated loop thread still waits for a core now and then
    when it shares the machine (measured on 2 cores: 0.39-0.52 for one caller,
    0.66-0.94 for 64).

    Attributes:
        frames, messages: Frames sent to endpoints and the messages in them.
    """

    PERIOD_S = 0.1

    def __init__(self, seconds: float = 0.0, busy: float = 0.7) -> None:
        self.seconds = seconds
        self.busy = busy
        self.saturated = False
        self.frames = 0
        self.messages = 0
        self._last: tuple[float, float] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self) -> float:
        """The wait for the next frame, in seconds."""
        return self.seconds if self.saturated else 0.0

    def observe(self, wall: float, cpu: float) -> None:
        """Takes one sample (seconds of wall clock and of the loop thread's CPU time) and
        decides from the time since the last one whether the loop is saturated."""
        if self._last is not None:
            elapsed = wall - self._last[0]
            if elapsed > 0:
                self.saturated = (cpu - self._last[1]) / elapsed >= self.busy
        self._last = (wall, cpu)

    def watch(self) -> None:
        """Starts sampling on the running loop (once; never with `seconds` 0, nor where
        the thread's own CPU time cannot be read)."""
        if self._timer is not None or self.seconds <= 0 or not hasattr(resource, "RUSAGE_THREAD"):
            return
        self._sample()

    def stop(self) -> None:
        """Stops sampling; frames no longer wait."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.saturated = False
        self._last = None

    def _sample(self) -> None:
        # Runs on the loop, so RUSAGE_THREAD is the loop thread's own time.
        usage = resource.getrusage(resource.RUSAGE_THREAD)
        self.observe(time.monotonic(), usage.ru_utime + usage.ru_stime)
        self._timer = asyncio.get_running_loop().call_later(self.PERIOD_S, self._sample)


class Connection:
    """A `Multiplex` stream and the attempts riding on it."""

    def __init__(
        self,
        stub: protocol_pb2_grpc.ServiceEndpointStub,
        uri: str,
        metadata: tuple[tuple[str, str], ...],
        max_message_bytes: int,
        linger: Linger | None = None,
    ) -> None:
        self.uri = uri
        self._max_message_bytes = max_message_bytes
        self._linger = linger or Linger()
        self._linger.watch()
        self._receivers: dict[int, Receiver] = {}
        self._ids = itertools.count(1)
        # Items with their sizes, for frames().
        self._outgoing: asyncio.Queue[tuple[protocol_pb2.AttemptRequest, int] | None] = (
            asyncio.Queue()
        )
        self.closed = False
        self._retired = False
        # The generated stubs are typed for the sync API; this is a grpc.aio channel.
        requests = frames(self._outgoing, self._frame, linger=self._linger)
        self._call: Any = stub.Multiplex(requests, metadata=metadata)  # type: ignore[arg-type]
        self._reader = asyncio.create_task(self._read())

    def _frame(self, items: list[protocol_pb2.AttemptRequest]) -> protocol_pb2.MultiplexRequest:
        linger = self._linger
        linger.frames += 1
        linger.messages += len(items)
        # What holds for this frame holds for the replies it asks for.
        return protocol_pb2.MultiplexRequest(items=items, linger_us=int(linger() * 1e6))

    def open(self, receiver: Receiver) -> int:
        """Registers an attempt; returns its id on this stream."""
        attempt_id = next(self._ids)
        self._receivers[attempt_id] = receiver
        return attempt_id

    def send(self, attempt_id: int, message: protocol_pb2.InvokeRequest) -> str | None:
        """Queues a message for the endpoint; returns why it cannot go, if it cannot."""
        if self.closed:
            return f"the stream to {self.uri} is closed"
        item = protocol_pb2.AttemptRequest(attempt_id=attempt_id, message=message)
        size = item.ByteSize()
        if size > self._max_message_bytes - 64:
            return (
                f"a message of {size} bytes exceeds the {self._max_message_bytes} "
                "byte limit of the endpoint stream"
            )
        self._outgoing.put_nowait((item, size))
        return None

    def release(self, attempt_id: int, abandon: bool) -> None:
        """Forgets an attempt; with `abandon`, tells the endpoint to stop its handler."""
        if self._receivers.pop(attempt_id, None) is not None and abandon and not self.closed:
            abandon_item = protocol_pb2.AttemptRequest(attempt_id=attempt_id, abandon=True)
            self._outgoing.put_nowait((abandon_item, abandon_item.ByteSize()))
        if self._retired and not self._receivers:
            self.close()

    def retire(self) -> None:
        """Ends the stream once the attempts on it have ended (its deployment is gone)."""
        self._retired = True
        if not self._receivers:
            self.close()

    def close(self) -> None:
        """Ends the stream; attempts still on it are told so."""
        if not self.closed:
            self._call.cancel()
            self._reader.cancel()
            self._shut(f"the stream to {self.uri} was closed by the broker")

    async def _read(self) -> None:
        reason = f"the endpoint at {self.uri} ended the multiplexed stream"
        try:
            async for frame in self._call:
                if frame is None:  # grpc.aio hands over None for a frame it cannot parse
                    reason = (
                        "protocol violation: the endpoint sent a frame that does not parse "
                        "as a MultiplexResponse"
                    )
                    break
                for item in frame.items:
                    receiver = self._receivers.get(item.attempt_id)
                    if receiver is not None:
                        receiver(item.message)
        except grpc.aio.AioRpcError as e:
            reason = f"call to {self.uri} failed: {e.code().name}: {e.details()}"
        except asyncio.CancelledError:
            reason = f"the stream to {self.uri} was closed by the broker"
        except Exception as e:  # a receiver that raised: never leave attempts hanging
            log.exception("multiplexed stream to %s: reader crashed", self.uri)
            reason = f"broker error reading the stream to {self.uri}: {e!r}"
        self._call.cancel()
        self._shut(reason)

    def _shut(self, reason: str) -> None:
        self.closed = True
        self._outgoing.put_nowait(None)
        receivers, self._receivers = self._receivers, {}
        for receiver in receivers.values():
            receiver(reason)


class Streams:
    """A process's channels and multiplexed streams to endpoints, by deployment.

    Args:
        metadata: Sent with every call to an endpoint (the endpoint secret).
        max_message_bytes: The largest message either side may send.
        linger: When frames wait to carry more (`Linger`); by default they never do.
    """

    def __init__(
        self,
        metadata: tuple[tuple[str, str], ...],
        max_message_bytes: int,
        linger: Linger | None = None,
    ) -> None:
        self.metadata = metadata
        self._max_message_bytes = max_message_bytes
        self.linger = linger or Linger()
        self._stubs: dict[str, protocol_pb2_grpc.ServiceEndpointStub] = {}
        self._channels: list[grpc.aio.Channel] = []
        self._connections: dict[str, Connection] = {}

    def stub(self, uri: str) -> protocol_pb2_grpc.ServiceEndpointStub:
        """The (cached) stub for an endpoint."""
        stub = self._stubs.get(uri)
        if stub is None:
            channel = self.new_channel(uri)
            self._channels.append(channel)
            stub = protocol_pb2_grpc.ServiceEndpointStub(channel)
            self._stubs[uri] = stub
        return stub

    def new_channel(self, uri: str, fresh: bool = False) -> grpc.aio.Channel:
        """A channel of its own to an endpoint (the caller closes it). `fresh`: with
        connections of its own too (gRPC shares them, and their reconnect backoff,
        between channels of the same address and options)."""
        return grpc.aio.insecure_channel(
            endpoint_address(uri),
            options=[
                *([("grpc.use_local_subchannel_pool", 1)] if fresh else []),
                ("grpc.max_receive_message_length", self._max_message_bytes),
                ("grpc.max_send_message_length", self._max_message_bytes),
                # gRPC backs reconnects off up to 120 s: an endpoint restarted after an
                # outage of minutes then waited that long for its invocations to reach
                # it. Endpoints are near, and a connect is cheap.
                ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
                ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1]),
            ],
        )

    def connection(self, deployment_id: str, uri: str) -> Connection:
        """The deployment's multiplexed stream, opened anew if the last one ended."""
        connection = self._connections.get(deployment_id)
        if connection is None or connection.closed:
            connection = Connection(
                self.stub(uri), uri, self.metadata, self._max_message_bytes, self.linger
            )
            self._connections[deployment_id] = connection
        return connection

    def forget(self, deployment_id: str) -> None:
        """Lets go of a removed deployment's stream: it closes once the attempts still
        on it (after a forced removal) have ended."""
        connection = self._connections.pop(deployment_id, None)
        if connection is not None:
            connection.retire()

    async def close(self) -> None:
        """Ends every stream and closes the channels."""
        self.linger.stop()
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
        for channel in self._channels:
            await channel.close(None)
        self._channels.clear()
        self._stubs.clear()


def endpoint_address(uri: str) -> str:
    """`host:port` of an endpoint URI such as `http://127.0.0.1:9101`."""
    for scheme in ("http://", "grpc://", "h2c://"):
        if uri.startswith(scheme):
            uri = uri[len(scheme) :]
    return uri.rstrip("/")
