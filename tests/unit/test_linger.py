"""`broker.multiplex.Linger`: frames to endpoints wait only while the loop is saturated,
and `durable.wire.frames` gathers what arrives during the wait."""

from __future__ import annotations

import asyncio

from durable.wire import frames

from broker.multiplex import Linger


def test_frames_wait_only_while_the_loop_thread_is_busy_enough() -> None:
    linger = Linger(seconds=0.005, busy=0.7)
    assert linger() == 0.0  # nothing observed yet
    linger.observe(wall=10.0, cpu=1.0)
    assert linger() == 0.0  # one sample says nothing about a period
    linger.observe(wall=10.1, cpu=1.08)  # 80% of the period on the CPU
    assert linger.saturated and linger() == 0.005
    linger.observe(wall=10.2, cpu=1.13)  # 50%: time to spare again
    assert not linger.saturated and linger() == 0.0
    linger.observe(wall=10.2, cpu=1.2)  # no time passed: no verdict, none changed
    assert not linger.saturated


def test_no_linger_configured_never_waits_nor_watches() -> None:
    async def scenario() -> None:
        linger = Linger(seconds=0.0)
        linger.watch()
        linger.observe(wall=0.0, cpu=0.0)
        linger.observe(wall=0.1, cpu=0.1)
        assert linger() == 0.0
        assert linger._timer is None

    asyncio.run(scenario())


def test_watching_samples_the_loop_and_stop_ends_it() -> None:
    async def scenario() -> None:
        linger = Linger(seconds=0.005, busy=0.5)
        linger.PERIOD_S = 0.01
        linger.watch()
        deadline = asyncio.get_running_loop().time() + 5
        # Keep the loop thread busy: it must be seen saturated within the deadline.
        while not linger.saturated:
            assert asyncio.get_running_loop().time() < deadline, "never saw the busy loop"
            sum(range(20_000))
            await asyncio.sleep(0)
        linger.stop()
        assert linger._timer is None and linger() == 0.0

    asyncio.run(scenario())


def test_what_arrives_during_the_wait_goes_in_the_same_frame() -> None:
    async def scenario() -> None:
        queue: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue()
        waits = [0.05, 0.0]
        stream = frames(queue, list, linger=lambda: waits.pop(0) if waits else 0.0)
        queue.put_nowait(("a", 1))
        asyncio.get_running_loop().call_later(0.01, queue.put_nowait, ("b", 1))
        first = await asyncio.wait_for(anext(stream), 5)
        assert first == ["a", "b"]
        queue.put_nowait(("c", 1))
        asyncio.get_running_loop().call_later(0.01, queue.put_nowait, ("d", 1))
        second = await asyncio.wait_for(anext(stream), 5)
        assert second == ["c"]  # no wait asked for this one

    asyncio.run(scenario())
