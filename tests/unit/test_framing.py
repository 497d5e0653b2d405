"""`durable.wire.frames`: what is queued goes out together, in order, in frames that
stay within the size bound whatever is waiting (a peer refuses a larger message)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from durable.wire import frames


def collect(queued: list[tuple[str, int] | None], limit: int) -> list[list[str]]:
    async def scenario() -> list[list[str]]:
        queue: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue()
        for item in queued:
            queue.put_nowait(item)
        out = frames(queue, list, limit)
        return await asyncio.wait_for(_all(out), timeout=5)

    return asyncio.run(scenario())


async def _all(out: AsyncIterator[list[str]]) -> list[list[str]]:
    return [frame async for frame in out]


def test_everything_queued_goes_out_in_one_frame() -> None:
    assert collect([("a", 10), ("b", 10), ("c", 10), None], limit=100) == [["a", "b", "c"]]


def test_a_frame_stops_before_the_item_that_would_exceed_the_limit() -> None:
    queued: list[tuple[str, int] | None] = [("a", 40), ("b", 40), ("c", 40), ("d", 40), None]
    assert collect(queued, limit=100) == [["a", "b"], ["c", "d"]]


def test_an_item_larger_than_the_limit_goes_alone_and_nothing_joins_it() -> None:
    queued: list[tuple[str, int] | None] = [("a", 10), ("big", 500), ("b", 10), None]
    assert collect(queued, limit=100) == [["a"], ["big"], ["b"]]


def test_the_end_marker_flushes_what_is_pending() -> None:
    assert collect([("a", 10), None, ("never", 10)], limit=100) == [["a"]]


def test_items_queued_later_go_out_in_later_frames() -> None:
    async def scenario() -> list[list[str]]:
        queue: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue()
        out = frames(queue, list, 100)
        queue.put_nowait(("a", 1))
        first = await asyncio.wait_for(anext(out), timeout=5)
        queue.put_nowait(("b", 1))
        queue.put_nowait(None)
        rest = await asyncio.wait_for(_all(out), timeout=5)
        return [first, *rest]

    assert asyncio.run(scenario()) == [["a"], ["b"]]
