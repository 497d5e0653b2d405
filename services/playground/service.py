"""The playground handlers: one small example per feature of the programming model."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from typing import ClassVar

import durable
import grpc
from playground import playground_pb2 as pb
from playground.playground_durable import (
    BusyServicer,
    CounterServicer,
    FlakyServicer,
    SignupServicer,
    WaiterClient,
    WaiterServicer,
)

# Failures per key, kept in this process: a stand-in for a flaky outside system.
_failures: collections.Counter[str] = collections.Counter()


class Waiter(WaiterServicer):
    """Timers, awakeables and combinators."""

    async def Sleep(self, ctx: durable.Context, request: pb.SleepRequest) -> pb.Reply:
        await ctx.sleep(request.millis / 1000)
        return pb.Reply(text="slept", number=request.millis)

    async def Await(self, ctx: durable.Context, request: pb.AwaitRequest) -> pb.Reply:
        _, value = ctx.awakeable()
        return pb.Reply(text=json.dumps(await value))

    async def Race(self, ctx: durable.Context, request: pb.RaceRequest) -> pb.Reply:
        a = ctx.sleep(request.a_millis / 1000)
        b = ctx.sleep(request.b_millis / 1000)
        winner, _ = await durable.select(a, b)
        return pb.Reply(text="ab"[winner])

    async def Gather(self, ctx: durable.Context, request: pb.RaceRequest) -> pb.Reply:
        waiter = WaiterClient(ctx)
        replies = await durable.gather(
            waiter.Sleep(pb.SleepRequest(millis=request.a_millis)),
            waiter.Sleep(pb.SleepRequest(millis=request.b_millis)),
        )
        return pb.Reply(text="gathered", items=[str(r.number) for r in replies])

    async def Timeout(self, ctx: durable.Context, request: pb.RaceRequest) -> pb.Reply:
        call = WaiterClient(ctx).Sleep(pb.SleepRequest(millis=request.a_millis))
        reply = await call.with_timeout(request.timeout_millis / 1000)
        return pb.Reply(text="in time", number=reply.number)

    async def Chain(self, ctx: durable.Context, request: pb.RaceRequest) -> pb.Reply:
        try:
            reply = await WaiterClient(ctx).Sleep(pb.SleepRequest(millis=request.a_millis))
        except durable.TerminalError as e:
            # Compensation point: record what happened, then fail as asked.
            await ctx.run("compensate", lambda: "undone")
            raise durable.TerminalError(f"chain stopped: {e.message}; compensated", e.code) from e
        return pb.Reply(text="chained", number=reply.number)

    async def Later(self, ctx: durable.Context, request: pb.SleepRequest) -> pb.Reply:
        WaiterClient(ctx).send(delay=request.millis / 1000).Sleep(pb.SleepRequest(millis=1))
        return pb.Reply(text="sent")

    async def Follow(self, ctx: durable.Context, request: pb.FollowRequest) -> pb.Reply:
        peeked = await ctx.get_output(request.invocation_id, pb.Reply)
        reply = await ctx.attach(request.invocation_id, pb.Reply)
        return pb.Reply(text=reply.text, items=["running" if peeked is None else "ready"])

    async def Resolve(self, ctx: durable.Context, request: pb.ResolveRequest) -> pb.Reply:
        if request.reject:
            ctx.reject_awakeable(request.awakeable_id, request.value or "rejected")
        else:
            ctx.resolve_awakeable(request.awakeable_id, json.loads(request.value or "null"))
        return pb.Reply(text="resolved")


class Counter(CounterServicer):
    """A counter per key."""

    async def Add(self, ctx: durable.ObjectContext, request: pb.AddRequest) -> pb.Reply:
        total = int(await ctx.get("total", 0)) + request.amount
        ctx.set("total", total)
        ctx.set(f"by-{request.amount}", True)
        return pb.Reply(number=total)

    async def Get(self, ctx: durable.ObjectSharedContext, request: pb.CounterRef) -> pb.Reply:
        return pb.Reply(number=int(await ctx.get("total", 0)))

    async def Keys(self, ctx: durable.ObjectSharedContext, request: pb.CounterRef) -> pb.Reply:
        return pb.Reply(items=await ctx.state_keys())

    async def Reset(self, ctx: durable.ObjectContext, request: pb.CounterRef) -> pb.Reply:
        ctx.clear_all()
        return pb.Reply(text="reset")

    async def Hold(self, ctx: durable.ObjectContext, request: pb.AddRequest) -> pb.Reply:
        await ctx.sleep(request.millis / 1000)
        total = int(await ctx.get("total", 0)) + request.amount
        ctx.set("total", total)
        return pb.Reply(number=total)

    async def Drop(self, ctx: durable.ObjectContext, request: pb.CounterRef) -> pb.Reply:
        ctx.clear("total")
        return pb.Reply(text="dropped")


class Signup(SignupServicer):
    """Runs once per user; waits for a verification signal."""

    async def Run(self, ctx: durable.WorkflowContext, request: pb.SignupRequest) -> pb.Reply:
        ctx.set("status", "waiting for verification")
        verified = ctx.promise("verified").value()
        try:
            if request.timeout_millis:
                code = await verified.with_timeout(request.timeout_millis / 1000)
            else:
                code = await verified
        except durable.TerminalError as e:
            ctx.set("status", f"failed: {e.message}")
            raise
        ctx.set("status", "verified")
        return pb.Reply(text=f"welcome {request.email}", items=[str(code)])

    async def Verify(
        self, ctx: durable.WorkflowSharedContext, request: pb.VerifyRequest
    ) -> pb.Reply:
        promise = ctx.promise("verified")
        if request.code == "reject":
            await promise.reject("verification refused")
        else:
            await promise.resolve(request.code)
        return pb.Reply(text="ok")

    async def Status(self, ctx: durable.WorkflowSharedContext, request: pb.UserRef) -> pb.Reply:
        peeked = await ctx.promise("verified").peek()
        return pb.Reply(text=str(await ctx.get("status", "")), items=[json.dumps(peeked)])


def _maybe_fail(key: str, times: int) -> None:
    if _failures[key] < times:
        _failures[key] += 1
        raise RuntimeError(f"flaky failure {_failures[key]} of {times} for {key!r}")


class Flaky(FlakyServicer):
    """Failures on purpose, under retry policies."""

    RETRY_POLICIES: ClassVar[dict[str, durable.RetryPolicy]] = {
        "Bounded": durable.RetryPolicy(initial_interval=0.05, max_attempts=3),
        "Pausing": durable.RetryPolicy(
            initial_interval=0.05, max_attempts=2, on_max_attempts="pause"
        ),
    }

    async def Bounded(self, ctx: durable.Context, request: pb.FlakyRequest) -> pb.Reply:
        _maybe_fail(request.key, request.fail_times)
        return pb.Reply(text="ok", number=ctx.attempt)

    async def Pausing(self, ctx: durable.Context, request: pb.FlakyRequest) -> pb.Reply:
        _maybe_fail(request.key, request.fail_times)
        return pb.Reply(text="ok", number=ctx.attempt)

    async def RunRetries(self, ctx: durable.Context, request: pb.FlakyRequest) -> pb.Reply:
        policy = durable.RetryPolicy(initial_interval=0.01, max_attempts=3)

        def effect() -> str:
            _maybe_fail(request.key, request.fail_times)
            return "done"

        try:
            text = await ctx.run("effect", effect, retry_policy=policy)
        except durable.TerminalError as e:
            raise durable.TerminalError(e.message, grpc.StatusCode.ABORTED) from e
        return pb.Reply(text=text, number=ctx.attempt)

    async def RetryAfter(self, ctx: durable.Context, request: pb.FlakyRequest) -> pb.Reply:
        if _failures[request.key] < 1:
            _failures[request.key] += 1
            raise durable.RetryableError("try later", retry_after=request.retry_after_millis / 1000)
        return pb.Reply(text="ok", number=ctx.attempt)


# Per group: side effects of Busy/Work running now, the most at once, and how many began.
_busy_now: collections.Counter[str] = collections.Counter()
_busy_max: collections.Counter[str] = collections.Counter()
_busy_began: collections.Counter[str] = collections.Counter()


class Busy(BusyServicer):
    """Work that keeps its attempt (and so its slot under a concurrency limit) busy."""

    async def Work(self, ctx: durable.Context, request: pb.WorkRequest) -> pb.Reply:
        group = request.group

        async def hold() -> int:
            began = int(time.time() * 1000)
            _busy_began[group] += 1
            _busy_now[group] += 1
            _busy_max[group] = max(_busy_max[group], _busy_now[group])
            try:
                await asyncio.sleep(request.millis / 1000)
            finally:
                _busy_now[group] -= 1
            return began

        return pb.Reply(text="ok", number=await ctx.run("hold", hold))

    async def Stats(self, ctx: durable.Context, request: pb.WorkRequest) -> pb.Reply:
        group = request.group
        return pb.Reply(number=_busy_max[group], items=[str(_busy_began[group])])

    async def Fill(self, ctx: durable.Context, request: pb.FillRequest) -> pb.Reply:
        return pb.Reply(text="x" * request.size, number=request.size)
