"""What both ends of the service protocol share below the handlers' API.

The broker and the SDK's service endpoints speak the same protocol and run the same way;
these are the pieces of that they share, public so that the broker (and the benchmarks)
need none of the SDK's private modules:

- `frames` packs queued protocol messages into Multiplex frames, the same on both ends of
  the stream, each at most `FRAME_BYTES` of messages (a larger single message goes
  alone): a frame must fit the peer's message size limit however many messages are
  waiting, and one large journal should not hold back everything queued behind it.
- `run` runs a coroutine on the event loop both the broker and endpoints use: uvloop
  when it is installed (it is a dependency), because scheduling tasks and callbacks is a
  large share of what a broker or endpoint does per message; the plain asyncio loop when
  `DURABLE_EVENT_LOOP=asyncio` asks for it, for comparison and debugging. `loop_name`
  says which.
- `describe_command` names a journal command the way non-determinism reports do (`call
  flights.Flights/Reserve`, `run 'pay'`), so that the broker's deployment check and
  `durable.testing.replay` word a divergence alike.
- `JOURNAL_EXPORT_FORMAT` tags the JSON document `brokerctl invocations export` writes
  and `durable.testing.replay` reads.
- `lenient` parses a gRPC request body without raising: a body that does not parse
  reaches the handler as `Unparsed`, to be refused with INVALID_ARGUMENT, where grpc
  itself would answer UNKNOWN and log a traceback as if the server were broken.
- `awakeable_id` and `parse_awakeable_id`: the SDK hands out the id of an awakeable at
  once and the broker journals and later resolves it, so both must write it alike.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from ._machine import describe as describe_command

__all__ = [
    "FRAME_BYTES",
    "JOURNAL_EXPORT_FORMAT",
    "Unparsed",
    "awakeable_id",
    "describe_command",
    "frames",
    "lenient",
    "loop_name",
    "parse_awakeable_id",
    "run",
]

#: The `format` of an exported journal (`brokerctl invocations export`).
JOURNAL_EXPORT_FORMAT = "durable.journal-export/1"

Item = TypeVar("Item")
Frame = TypeVar("Frame")
T = TypeVar("T")

# Items are packed together up to this many bytes; a larger single item goes alone.
FRAME_BYTES = 4 * 1024 * 1024


class Unparsed:
    """A request body that did not parse, handed to the handler in its message's place.

    Args:
        error: What the parser raised.
        expected: The full name of the message it should have been, when known.
    """

    def __init__(self, error: Exception, expected: str = "") -> None:
        self.error = error
        self.expected = expected

    @property
    def problem(self) -> str:
        """What to tell the caller."""
        if self.expected:
            return f"the request is not a valid {self.expected} message ({self.error})"
        return f"the request body does not parse: {self.error}"


def lenient(parse: Callable[[bytes], T], expected: str = "") -> Callable[[bytes], T | Unparsed]:
    """`parse` as a gRPC request deserializer that hands over `Unparsed` instead of
    raising (`expected`: the message's full name, for the caller's error)."""

    def parse_leniently(body: bytes) -> T | Unparsed:
        try:
            return parse(body)
        except Exception as e:  # protobuf's DecodeError, or what a custom parser raises
            return Unparsed(e, expected)

    return parse_leniently


def awakeable_id(invocation_id: str, index: int) -> str:
    """The id of entry `index` of `invocation_id`, an awakeable: `awk_` and the URL-safe
    base64 of `invocation_id:index`, unpadded."""
    raw = f"{invocation_id}:{index}".encode()
    return "awk_" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def parse_awakeable_id(text: str) -> tuple[str, int] | None:
    """(invocation id, entry index) of an awakeable id, or None if malformed."""
    if not text.startswith("awk_"):
        return None
    body = text[4:]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    invocation, _, index = raw.rpartition(":")
    if not invocation.startswith("inv_") or not (index.isascii() and index.isdigit()):
        return None
    parsed = (invocation, int(index))
    # Only the form `awakeable_id` writes: int() also reads "-1" (which named the last
    # entry, past every check), "+1", " 1" and "01", and the decoder skips stray
    # characters.
    return parsed if awakeable_id(*parsed) == text else None


async def frames(
    queue: asyncio.Queue[tuple[Item, int] | None],
    frame: Callable[[list[Item]], Frame],
    limit: int = FRAME_BYTES,
    linger: Callable[[], float] | None = None,
) -> AsyncIterator[Frame]:
    """Frames of everything queued, in order.

    Each frame holds at most `limit` bytes of items unless one item alone is larger; the
    iteration ends after flushing when it takes None. With `linger`, a frame whose first
    item is taken waits that many seconds (asked anew for each frame; 0 for none) before
    the rest of the queue joins it: one frame then carries several attempts' messages,
    and a frame costs both ends more than a message does.

    Args:
        queue: Each item with its serialized size, computed once by whoever queued it;
            None ends the stream.
        frame: Builds one frame from a list of items.
        limit: The most bytes of items in one frame.
        linger: How long the next frame waits for more items, in seconds.

    Yields:
        The frames, in the order their items were queued.
    """
    carried: tuple[Item, int] | None = None
    while True:
        first = carried if carried is not None else await queue.get()
        carried = None
        if first is None:
            return
        if linger is not None:
            wait = linger()
            if wait > 0:
                await asyncio.sleep(wait)
        items, size = [first[0]], first[1]
        while not queue.empty():
            queued = queue.get_nowait()
            if queued is None:
                yield frame(items)
                return
            if size + queued[1] > limit:
                carried = queued  # it opens the next frame
                break
            items.append(queued[0])
            size += queued[1]
        yield frame(items)


def loop_name() -> str:
    """`uvloop` or `asyncio`: the loop `run` uses."""
    if os.environ.get("DURABLE_EVENT_LOOP", "uvloop") == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on the chosen loop (see `loop_name`).

    Args:
        main: The coroutine to run to completion.

    Returns:
        What `main` returned.
    """
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
