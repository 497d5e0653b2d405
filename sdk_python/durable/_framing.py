"""Packing queued items into frames, for both ends of a Multiplex stream.

Whatever is queued when the stream is ready to write goes out as one frame, up to a
size bound: a frame must fit the peer's message size limit however many items are
waiting, and one large journal should not hold back everything queued behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

Item = TypeVar("Item")
Frame = TypeVar("Frame")

# Items are packed together up to this many bytes; a larger single item goes alone.
FRAME_BYTES = 4 * 1024 * 1024


async def frames(
    queue: asyncio.Queue[tuple[Item, int] | None],
    frame: Callable[[list[Item]], Frame],
    limit: int = FRAME_BYTES,
) -> AsyncIterator[Frame]:
    """Frames of everything queued, in order, each at most `limit` bytes of items
    unless one item alone is larger; ends after flushing when it takes None.

    The queue holds each item with its serialized size, computed once by whoever
    queued it.
    """
    carried: tuple[Item, int] | None = None
    while True:
        first = carried if carried is not None else await queue.get()
        carried = None
        if first is None:
            return
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
