"""`durable.testing` surfaces non-determinism: a handler whose replay takes another branch
fails the test's call with INTERNAL and a message naming the entry and both commands,
instead of being retried until a replay happens to match (and the test passing)."""

from __future__ import annotations

import itertools

import durable
import grpc
import pytest
from durable.testing import DurableTestEnvironment
from playground import playground_pb2 as pg
from playground import playground_pb2_grpc as pg_grpc

waiter = durable.Service(pg.DESCRIPTOR.services_by_name["Waiter"])
_executions = itertools.count()


@waiter.handler("Sleep")
async def sleep(ctx: durable.Context, request: pg.SleepRequest) -> pg.Reply:
    # Stands for `if random.random() < 0.5:` (not ctx.random()): the first execution
    # sleeps, every replay of it runs a side effect in that place instead.
    if next(_executions) == 0:
        await ctx.sleep(request.millis / 1000)
    else:
        await ctx.run("charge", lambda: "charged")
    return pg.Reply(text="done")


def test_a_divergent_replay_fails_the_call_with_both_commands() -> None:
    with DurableTestEnvironment([waiter]) as env:
        stub = pg_grpc.WaiterStub(env.channel())
        with pytest.raises(grpc.RpcError) as failed:
            stub.Sleep(pg.SleepRequest(millis=1), timeout=20)

        assert failed.value.code() is grpc.StatusCode.INTERNAL, failed.value
        message = failed.value.details() or ""
        assert "non-determinism at journal entry 1" in message, message
        assert "the journal has sleep" in message and "proposed run" in message, message
        (record,) = env.invocations(service="playground.Waiter")
        assert record.attempts == 2, record
