"""The endpoint's side of a Multiplex stream: many attempts, one stream, one outbox.

The broker keeps one such stream per deployment and tags every item with an attempt
id. Each attempt runs as on its own stream; what the attempts send is queued and goes
out as one frame when the stream is ready to write, after waiting as long as the broker's
latest frame said (`linger_us`: its event loop is saturated, and a frame costs it more
than the messages in it do).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc

from durable.v1 import protocol_pb2

from ._errors import ProtocolViolation
from ._runtime import Runtime
from .wire import Unparsed
from .wire import frames as packed_frames

log = logging.getLogger("durable")

# An attempt ends with the first of these it sends.
TERMINAL = ("end", "suspension", "error")

# The longest wait for a frame the broker can ask for, whatever it says.
MAX_LINGER_US = 100_000

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]

Send = Callable[[protocol_pb2.InvokeResponse], None]
StartAttempt = Callable[
    [protocol_pb2.StartMessage, Send], tuple[Runtime, Callable[[], Coroutine[Any, Any, None]]]
]


# An attempt's id and one of its messages, queued for the next frame.
_Item = tuple[int, protocol_pb2.InvokeResponse]

# What wrapping a message in an AttemptResponse adds to its size, at most: the frame's
# field tag and length, the attempt id's tag and varint, the message's tag and length.
_ITEM_OVERHEAD = 24


def _frame(items: list[_Item]) -> protocol_pb2.MultiplexResponse:
    """One frame of the queued messages, each copied once, straight into it."""
    frame = protocol_pb2.MultiplexResponse()
    add = frame.items.add
    for attempt_id, message in items:
        item = add()
        item.attempt_id = attempt_id
        item.message.CopyFrom(message)
    return frame


class Multiplexer:
    """Runs the attempts one Multiplex stream carries."""

    def __init__(self, start_attempt: StartAttempt, draining: bool = False) -> None:
        self._start_attempt = start_attempt
        # Attempts that may still send: from their start until their terminal message.
        self._running: dict[int, Runtime | None] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        # Each attempt's messages with their sizes, for frames().
        self._outbox: asyncio.Queue[tuple[_Item, int] | None] = asyncio.Queue()
        self._draining = draining
        # How long a frame waits for more items, as the broker's latest frame said.
        self.linger = 0.0
        self.ended = asyncio.Event()
        # Why the stream was refused (a frame that does not parse), for the call's status.
        self.refused: str | None = None
        self._end_if_drained()

    async def read(self, frames: AsyncIterator[protocol_pb2.MultiplexRequest | Unparsed]) -> None:
        """Dispatches what the broker sends until it ends the stream, or sends a frame
        that does not parse (no attempt can be told: the whole stream is refused)."""
        try:
            async for frame in frames:
                if isinstance(frame, Unparsed):
                    log.warning("Multiplex refused: %s", frame.problem)
                    self.refused = frame.problem
                    return
                self.linger = min(frame.linger_us, MAX_LINGER_US) / 1e6
                for item in frame.items:
                    try:
                        self._dispatch(item)
                    except ProtocolViolation as e:
                        # The broker's mistake, not a bug here: one line, no traceback.
                        log.warning("attempt %d: %s", item.attempt_id, e)
                        self._fail(
                            item.attempt_id,
                            f"the endpoint rejected a message: {e}",
                            grpc.StatusCode.INVALID_ARGUMENT.value[0],
                        )
                    except Exception as e:
                        # One bad item fails its own attempt, never the whole stream.
                        log.exception(
                            "attempt %d: cannot take the broker's message", item.attempt_id
                        )
                        self._fail(item.attempt_id, f"the endpoint rejected a message: {e}")
        finally:
            self._end()

    def frames(self) -> AsyncIterator[protocol_pb2.MultiplexResponse]:
        """Frames to send: everything queued when the stream is ready to write."""
        return packed_frames(self._outbox, _frame, linger=lambda: self.linger)

    def drain(self) -> None:
        """Refuses new attempts; ends the stream once the running ones have ended."""
        self._draining = True
        self._end_if_drained()

    def stop_all(self) -> None:
        """The stream is gone: no attempt on it can report anything any more."""
        self._running.clear()
        for task in list(self._tasks.values()):
            task.cancel()
        self._end()

    def _end(self) -> None:
        if not self.ended.is_set():
            self.ended.set()
            self._outbox.put_nowait(None)

    def _dispatch(self, item: protocol_pb2.AttemptRequest) -> None:
        attempt_id = item.attempt_id
        if item.abandon:
            self._stop(attempt_id)
            self._end_if_drained()
            return
        kind = item.message.WhichOneof("message")
        if kind == "start":
            if attempt_id in self._running or attempt_id in self._tasks:
                return  # a repeated start would fork the attempt; the first one stands
            if self._draining:
                self._fail(attempt_id, "the endpoint is shutting down")
                return
            self._running[attempt_id] = None
            runtime, execute = self._start_attempt(
                item.message.start, lambda m: self._send(attempt_id, m)
            )
            if attempt_id in self._running:
                self._running[attempt_id] = runtime
            task = asyncio.create_task(execute())
            self._tasks[attempt_id] = task
            task.add_done_callback(lambda _: self._tasks.pop(attempt_id, None))
        elif kind == "completion":
            waiting = self._running.get(attempt_id)
            if waiting is not None:
                waiting.on_completion(item.message.completion)

    def _stop(self, attempt_id: int) -> None:
        """Stops an attempt's handler, if it runs; nothing it sends goes out any more."""
        self._running.pop(attempt_id, None)
        task = self._tasks.get(attempt_id)
        if task is not None:
            task.cancel()

    def _fail(self, attempt_id: int, message: str, code: int = _UNAVAILABLE) -> None:
        """Ends an attempt with a retryable error and stops its handler, if it runs."""
        self._stop(attempt_id)
        error = protocol_pb2.ErrorMessage(code=code, message=message, entry_index=-1)
        self._queue(attempt_id, protocol_pb2.InvokeResponse(error=error))
        self._end_if_drained()

    def _queue(self, attempt_id: int, message: protocol_pb2.InvokeResponse) -> None:
        self._outbox.put_nowait(((attempt_id, message), message.ByteSize() + _ITEM_OVERHEAD))

    def _send(self, attempt_id: int, message: protocol_pb2.InvokeResponse) -> None:
        if attempt_id not in self._running or self.ended.is_set():
            return  # abandoned by the broker, or already ended: nobody listens
        self._queue(attempt_id, message)
        if message.WhichOneof("message") in TERMINAL:
            self._running.pop(attempt_id, None)
            self._end_if_drained()

    def _end_if_drained(self) -> None:
        if self._draining and not self._running:
            self._end()
