"""Awakeables and workflow promises read back as protobuf messages with `type=`, as state
values and `ctx.run` results are (the README said so before the SDK did)."""

from __future__ import annotations

import durable
import grpc
import pytest
from durable.testing import DurableTestEnvironment
from durable.v1 import admin_pb2, admin_pb2_grpc
from durable.wire import awakeable_id
from google.protobuf import json_format
from playground import playground_pb2 as pg
from playground import playground_pb2_grpc as pg_grpc

from tests.support import wait_for

waiter = durable.Service(pg.DESCRIPTOR.services_by_name["Waiter"])
signup = durable.Service(pg.DESCRIPTOR.services_by_name["Signup"])


@waiter.handler("Await")
async def await_typed(ctx: durable.Context, request: pg.AwaitRequest) -> pg.Reply:
    _, reply = ctx.awakeable(type=pg.Reply)
    value = await reply
    assert isinstance(value, pg.Reply)
    return value


@signup.handler("Run")
async def run(ctx: durable.WorkflowContext, request: pg.SignupRequest) -> pg.Reply:
    value = await ctx.promise("verified").value(type=pg.Reply)
    peeked = await ctx.promise("verified").peek(type=pg.Reply)
    assert peeked == value
    return pg.Reply(text=f"{request.email}: {value.text}", items=value.items)


@signup.handler("Verify")
async def verify(ctx: durable.WorkflowSharedContext, request: pg.VerifyRequest) -> pg.Reply:
    await ctx.promise("verified").resolve(pg.Reply(text=request.code, items=["sent"]))
    return pg.Reply(text="ok")


def _awakeable_of(env: DurableTestEnvironment, invocation_id: str) -> str:
    def journaled() -> int | None:
        journal = env.describe(invocation_id).journal
        return next((i for i, e in enumerate(journal) if e.HasField("awakeable")), None)

    index = wait_for(journaled, timeout=20, message="the awakeable in the journal")
    return awakeable_id(invocation_id, index)


@pytest.mark.parametrize("fits", [True, False])
def test_an_awakeable_is_read_as_the_message_it_is_given(fits: bool) -> None:
    with DurableTestEnvironment([waiter]) as env:
        call = pg_grpc.WaiterStub(env.channel()).Await.future(pg.AwaitRequest(), timeout=30)
        (waiting,) = wait_for(
            lambda: env.invocations(service="playground.Waiter", method="Await"),
            timeout=20,
            message="the Await invocation",
        )
        awakeable_id = _awakeable_of(env, waiting.id)
        value = (
            json_format.MessageToJson(pg.Reply(text="approved", number=7)).encode()
            if fits
            else b'["approved"]'  # JSON, but no object: no Reply
        )
        admin_pb2_grpc.AdminStub(env.admin_channel()).ResolveAwakeable(
            admin_pb2.ResolveAwakeableRequest(awakeable_id=awakeable_id, value=value), timeout=10
        )
        if fits:
            assert call.result(timeout=30) == pg.Reply(text="approved", number=7)
        else:
            # Not a Reply: the same bytes would come back at every retry, so it is final.
            with pytest.raises(grpc.RpcError) as failed:
                call.result(timeout=30)
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            assert "awakeable" in (failed.value.details() or "")


def test_a_promise_is_read_as_the_message_it_was_resolved_with() -> None:
    with DurableTestEnvironment([signup]) as env:
        stub = pg_grpc.SignupStub(env.channel())
        running = stub.Run.future(pg.SignupRequest(user="ada", email="ada@x"), timeout=30)
        wait_for(
            lambda: env.invocations(service="playground.Signup", method="Run", status="suspended"),
            timeout=20,
            message="the run waiting on its promise",
        )
        assert stub.Verify(pg.VerifyRequest(user="ada", code="4711"), timeout=30).text == "ok"
        assert running.result(timeout=30) == pg.Reply(text="ada@x: 4711", items=["sent"])
