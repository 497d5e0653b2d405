"""`chaos.Counters`: runs a generated program step by step through the durable context.

Each step appends one line to the program's trace, made only of what the step got back
through the broker (a nested program's digest, a side effect's journaled result, an
awakeable's value, a terminal error's code), so the runner can predict every program's
`Outcome` from the program alone and spot anything lost, replayed wrongly or doubled.
"""

from __future__ import annotations

import asyncio
import hashlib

import durable
from chaos import chaos_pb2 as pb
from chaos.chaos_durable import CountersClient, CountersServicer

# (invocation id, step index) of the transient side effects that already failed once in
# this process: their next try succeeds. A restarted process fails them once more.
_failed_once: set[tuple[str, int]] = set()


def outcome_digest(key: str, trace: list[str]) -> str:
    """A short digest of a program's key and trace (what a caller records of a call)."""
    return hashlib.sha256("\n".join([key, *trace]).encode()).hexdigest()[:16]


def side_effect_value(key: str, index: int) -> str:
    """What the side effect of step `index` of the program on `key` returns."""
    return f"{key}#{index}"


class Counters(CountersServicer):
    """Programs on their own keys; counters on shared keys."""

    async def Execute(self, ctx: durable.ObjectContext, request: pb.Program) -> pb.Outcome:
        executions = int(await ctx.get("executions", 0))
        ctx.set("executions", executions + 1)
        trace = [
            await self._step(ctx, request.key, index, step)
            for index, step in enumerate(request.steps)
        ]
        return pb.Outcome(key=request.key, trace=trace, digest=outcome_digest(request.key, trace))

    async def _step(self, ctx: durable.ObjectContext, key: str, index: int, step: pb.Step) -> str:
        counters = CountersClient(ctx)
        kind = step.WhichOneof("kind")
        if kind == "increment":
            await counters.Add(step.increment)
            return f"inc {step.increment.key} {step.increment.amount:+d}"
        if kind == "call":
            outcome = await counters.Execute(step.call)
            return f"call {outcome.key} {outcome.digest}"
        if kind == "send":
            delay = step.send.delay_millis / 1000 if step.send.delay_millis else None
            counters.send(delay=delay).Execute(step.send.program)
            return f"send {step.send.program.key} {step.send.delay_millis}ms"
        if kind == "sleep":
            await ctx.sleep(step.sleep.millis / 1000)
            return f"sleep {step.sleep.millis}ms"
        if kind == "side_effect":
            value = await self._side_effect(ctx, key, index, step.side_effect)
            return f"run {pb.SideEffectStep.Mode.Name(step.side_effect.mode)} {value}"
        if kind == "awakeable":
            awakeable_id, resolved = ctx.awakeable()
            resolve = pb.ResolveRequest(
                key=step.awakeable.resolver_key,
                awakeable_id=awakeable_id,
                value=step.awakeable.value,
            )
            counters.send().Resolve(resolve)
            return f"awakeable {await resolved}"
        if kind == "terminal_recovered":
            fail = pb.FailRequest(
                key=step.terminal_recovered.key,
                message=step.terminal_recovered.message,
                code=step.terminal_recovered.code,
            )
            try:
                await counters.Fail(fail)
            except durable.TerminalError as e:
                seen = "message" if fail.message in e.message else repr(e.message)
                return f"recovered {e.code} {seen}"
            return "recovered nothing: Fail succeeded"
        raise durable.TerminalError(f"step {index} of {key!r} has no kind")

    async def _side_effect(
        self, ctx: durable.ObjectContext, key: str, index: int, step: pb.SideEffectStep
    ) -> str:
        value = side_effect_value(key, index)
        invocation = (ctx.invocation_id, index)

        async def effect() -> str:
            if step.mode == pb.SideEffectStep.TRANSIENT and invocation not in _failed_once:
                _failed_once.add(invocation)
                raise RuntimeError(f"transient failure of step {index} (chaos)")
            if step.mode == pb.SideEffectStep.SLOW:
                await asyncio.sleep(step.slow_millis / 1000)
            return value

        result: str = await ctx.run(f"step {index}", effect)
        return result

    async def Add(self, ctx: durable.ObjectContext, request: pb.Increment) -> pb.Value:
        value = int(await ctx.get("value", 0)) + request.amount
        adds = int(await ctx.get("adds", 0)) + 1
        ctx.set("value", value)
        ctx.set("adds", adds)
        return pb.Value(value=value, adds=adds)

    async def Resolve(self, ctx: durable.ObjectContext, request: pb.ResolveRequest) -> pb.Value:
        ctx.resolve_awakeable(request.awakeable_id, request.value)
        return pb.Value()

    async def Fail(self, ctx: durable.ObjectContext, request: pb.FailRequest) -> pb.Value:
        raise durable.TerminalError(request.message, request.code)

    async def Get(self, ctx: durable.ObjectSharedContext, request: pb.Key) -> pb.Value:
        return pb.Value(
            value=int(await ctx.get("value", 0)),
            adds=int(await ctx.get("adds", 0)),
            executions=int(await ctx.get("executions", 0)),
        )
