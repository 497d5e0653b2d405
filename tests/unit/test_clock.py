"""The virtual clock of the test environment's time skipping (broker/clock.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from broker.clock import WALL, VirtualClock, auto_skip, now_ms
from broker.storage.commit import Batch, Committer
from broker.storage.kv import MemoryKV


def test_the_wall_clock_is_time_time() -> None:
    before = int(time.time() * 1000)
    assert before <= now_ms(WALL) <= int(time.time() * 1000)


def test_advance_fires_what_became_due_in_due_order() -> None:
    async def scenario() -> list[str]:
        clock = VirtualClock()
        fired: list[str] = []
        clock.call_later(3600, lambda: fired.append("hour"))
        clock.call_later(60, lambda: fired.append("minute"))
        cancelled = clock.call_later(120, lambda: fired.append("cancelled"))
        clock.call_later(86_400, lambda: fired.append("day"))
        cancelled.cancel()
        clock.advance(3600)
        assert clock.offset == 3600
        with pytest.raises(ValueError, match="forward"):
            clock.advance(-1)
        return fired

    assert asyncio.run(scenario()) == ["minute", "hour"]


def test_skip_jumps_to_the_next_durable_timer_only() -> None:
    async def scenario() -> None:
        clock = VirtualClock()
        fired: list[str] = []
        clock.call_later(60, lambda: fired.append("purge"), durable=False)
        assert clock.next_durable() is None
        assert not clock.skip()  # housekeeping never makes time jump
        clock.call_later(3600, lambda: fired.append("sleep"))
        assert clock.skip()
        assert fired == ["purge", "sleep"]  # time passed the purge on its way
        assert 3600 - 1 < clock.time() - time.time() < 3600 + 1

    asyncio.run(scenario())


def test_time_keeps_flowing_with_the_wall() -> None:
    async def scenario() -> None:
        clock = VirtualClock()
        fired = asyncio.Event()
        clock.call_later(0.01, fired.set)
        await asyncio.wait_for(fired.wait(), timeout=10)

    asyncio.run(scenario())


def test_auto_skip_jumps_only_while_idle() -> None:
    async def scenario() -> None:
        clock = VirtualClock()
        busy = True
        fired = asyncio.Event()
        clock.call_later(3600, fired.set)
        skipper = asyncio.create_task(auto_skip(clock, lambda: not busy))
        try:
            # An observation window, not synchronisation: nothing may jump while busy.
            await asyncio.sleep(0.1)
            assert not fired.is_set() and clock.offset == 0
            busy = False
            await asyncio.wait_for(fired.wait(), timeout=10)
            assert clock.offset > 3599
        finally:
            skipper.cancel()

    asyncio.run(scenario())


def test_the_committer_is_idle_only_with_nothing_queued_or_being_written() -> None:
    """Part of `Driver.idle`: a batch queued, being written or having its actions
    carried out keeps a virtual clock from jumping."""

    async def scenario() -> None:
        seen: list[bool] = []
        committer: Committer

        def carry_out(batch_actions: list[object]) -> None:
            seen.append(committer.idle)

        committer = Committer(MemoryKV(), sync=False, carry_out=carry_out)
        assert committer.idle
        batch = Batch()
        batch.put(b"k", b"v")
        batch.then("an action")
        done = committer.submit(batch)
        assert not committer.idle
        await done
        assert seen == [False]  # still busy while its actions run
        await committer.drain()
        assert committer.idle

    asyncio.run(scenario())
