"""`durable.testing`'s time skipping: durable timers on a virtual clock.

A handler that sleeps a day, a one-way send delayed a week, a retry backed off a minute
and a `with_timeout` of an hour all finish in well under a second of wall time with
`time_skipping=True`; `time_skipping="manual"` moves the clock only with `env.advance`;
and the clock never jumps while an attempt is running.
"""

from __future__ import annotations

import asyncio
import datetime
import time

import durable
import pytest
from durable.testing import DurableTestEnvironment
from durable.v1 import invocation_pb2
from playground import playground_pb2 as pg
from playground import playground_pb2_grpc as pg_grpc

from tests.support import wait_for

DAY_S = 24 * 3600
WEEK_S = 7 * DAY_S
# Generous for a loaded 2-core machine; the figures printed are typically far lower.
WALL_LIMIT_S = 5.0

waiter = durable.Service(pg.DESCRIPTOR.services_by_name["Waiter"])
counter = durable.Service(pg.DESCRIPTOR.services_by_name["Counter"])
flaky = durable.Service(pg.DESCRIPTOR.services_by_name["Flaky"])
_failures: dict[str, int] = {}
# Holds `Await` running (an in-process await, not a durable one) until the test opens it.
_gate: asyncio.Event | None = None


def _ms(moment: datetime.datetime) -> int:
    return int(moment.timestamp() * 1000)


@waiter.handler("Sleep")
async def sleep(ctx: durable.Context, request: pg.SleepRequest) -> pg.Reply:
    before = await ctx.now()
    await ctx.sleep(request.millis / 1000)
    after = await ctx.now()
    return pg.Reply(text="slept", number=_ms(after) - _ms(before))


@waiter.handler("Later")
async def later(ctx: durable.Context, request: pg.SleepRequest) -> pg.Reply:
    ctx.send(
        "playground.Counter",
        "Add",
        pg.AddRequest(name="week", amount=_ms(await ctx.now())),
        delay=request.millis / 1000,
    )
    return pg.Reply(text="sent")


@waiter.handler("Timeout")
async def timeout(ctx: durable.Context, request: pg.RaceRequest) -> pg.Reply:
    _, never = ctx.awakeable()
    try:
        await never.with_timeout(request.timeout_millis / 1000)
    except durable.TerminalError as e:
        return pg.Reply(text=str(e))
    return pg.Reply(text="resolved")


@waiter.handler("Await")
async def hold(ctx: durable.Context, request: pg.AwaitRequest) -> pg.Reply:
    assert _gate is not None
    await _gate.wait()
    return pg.Reply(text="released")


@counter.handler("Add")
async def add(ctx: durable.ObjectContext, request: pg.AddRequest) -> pg.Reply:
    # The delay the send was given, as the receiver's clock sees it.
    return pg.Reply(number=_ms(await ctx.now()) - request.amount)


@flaky.handler("Bounded", retry_policy=durable.RetryPolicy(initial_interval=60, max_interval=60))
async def bounded(ctx: durable.Context, request: pg.FlakyRequest) -> pg.Reply:
    failed = _failures.get(request.key, 0)
    if failed < request.fail_times:
        _failures[request.key] = failed + 1
        raise RuntimeError(f"flaky failure {failed + 1}")
    return pg.Reply(text="ok", number=failed)


def test_a_day_of_sleep_and_a_week_delayed_send_take_no_wall_time() -> None:
    with DurableTestEnvironment([waiter, counter], time_skipping=True) as env:
        stub = pg_grpc.WaiterStub(env.channel())
        started = time.monotonic()
        reply = stub.Sleep(pg.SleepRequest(millis=DAY_S * 1000), timeout=20)
        slept = time.monotonic() - started
        print(f"24 h sleep took {slept:.3f} s of wall time")
        assert slept < WALL_LIMIT_S
        assert abs(reply.number - DAY_S * 1000) <= 1000, reply

        started = time.monotonic()
        assert stub.Later(pg.SleepRequest(millis=WEEK_S * 1000), timeout=20).text == "sent"
        (added,) = wait_for(
            lambda: env.invocations(service="playground.Counter", status="completed"),
            timeout=20,
            message="the week-delayed send to run",
        )
        sent = time.monotonic() - started
        print(f"a send delayed a week ran after {sent:.3f} s of wall time")
        assert sent < WALL_LIMIT_S
        assert env.time() - time.time() >= DAY_S + WEEK_S - 1
        output = pg.Reply.FromString(env.describe(added.id).invocation.result.value)
        assert abs(output.number - WEEK_S * 1000) <= 1000, output


def test_retry_backoff_and_timeouts_are_skipped() -> None:
    with DurableTestEnvironment([waiter, flaky], time_skipping=True) as env:
        started = time.monotonic()
        reply = pg_grpc.FlakyStub(env.channel()).Bounded(
            pg.FlakyRequest(key="minute", fail_times=2), timeout=20
        )
        backed_off = time.monotonic() - started
        print(f"two 1-minute retry backoffs took {backed_off:.3f} s of wall time")
        assert reply.number == 2 and backed_off < WALL_LIMIT_S
        assert env.time() - time.time() >= 2 * 60 - 1

        started = time.monotonic()
        reply = pg_grpc.WaiterStub(env.channel()).Timeout(
            pg.RaceRequest(timeout_millis=3600 * 1000), timeout=20
        )
        assert "timed out after 3600s" in reply.text, reply
        assert time.monotonic() - started < WALL_LIMIT_S


def test_manual_mode_moves_only_with_advance() -> None:
    with DurableTestEnvironment([waiter], time_skipping="manual") as env:
        stub = pg_grpc.WaiterStub(env.channel())
        started = time.monotonic()
        call = stub.Sleep.future(pg.SleepRequest(millis=3600 * 1000), timeout=20)
        wait_for(
            lambda: env.invocations(service="playground.Waiter", status="suspended"),
            timeout=20,
            message="the hour-long sleep to suspend",
        )
        env.advance(1800)
        # Half the hour fired nothing: the timer is still pending.
        (waiting,) = env.invocations(service="playground.Waiter")
        assert waiting.status == invocation_pb2.SUSPENDED and not call.done()
        env.advance(1800)
        reply = call.result(timeout=20)
        print(f"an hour advanced by hand took {time.monotonic() - started:.3f} s")
        assert time.monotonic() - started < WALL_LIMIT_S
        assert abs(reply.number - 3600 * 1000) <= 1000, reply
        with pytest.raises(ValueError, match="forward"):
            env.advance(-1)


def test_the_clock_waits_while_an_attempt_runs() -> None:
    """Idle means no attempt running: a handler busy in memory holds the clock still,
    even with another invocation's timer pending."""

    async def scenario() -> None:
        global _gate
        _gate = asyncio.Event()
        async with DurableTestEnvironment([waiter], time_skipping=True) as env:
            stub = pg_grpc.WaiterStub(env.aio_channel())
            held = stub.Await(pg.AwaitRequest(), timeout=20)
            while not await env.invocations_async(service="playground.Waiter", status="running"):
                await asyncio.sleep(0.01)  # polling; the test's timeout bounds it
            sleeping = stub.Sleep(pg.SleepRequest(millis=3600 * 1000), timeout=20)
            while len(await env.invocations_async(service="playground.Waiter")) < 2:
                await asyncio.sleep(0.01)
            # An observation window, not synchronisation: over it the clock must not move.
            await asyncio.sleep(0.3)
            assert env.time() - time.time() < 1, "skipped while an attempt was running"
            assert not sleeping.done()
            _gate.set()
            assert (await held).text == "released"
            reply = await sleeping
            assert abs(reply.number - 3600 * 1000) <= 1000, reply
            assert env.time() - time.time() >= 3600 - 1

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))


def test_advance_needs_a_virtual_clock() -> None:
    with DurableTestEnvironment([waiter]) as env:
        with pytest.raises(RuntimeError, match="time_skipping"):
            env.advance(1)
        assert abs(env.time() - time.time()) < 1
    with pytest.raises(ValueError, match="time_skipping"):
        DurableTestEnvironment([waiter], time_skipping="auto")  # type: ignore[arg-type]


def test_retention_passes_on_the_virtual_clock() -> None:
    with DurableTestEnvironment(
        [waiter], time_skipping="manual", broker_settings={"retention": 3600}
    ) as env:
        stub = pg_grpc.WaiterStub(env.channel())
        assert stub.Sleep(pg.SleepRequest(millis=0), timeout=20).text == "slept"
        assert env.invocations(service="playground.Waiter", status="completed")
        # Past the retention and the next purge round (a quarter of it, at most 60 s).
        env.advance(3600 + 61)
        wait_for(
            lambda: not env.invocations(service="playground.Waiter"),
            timeout=20,
            message="the completed invocation to be purged",
        )
