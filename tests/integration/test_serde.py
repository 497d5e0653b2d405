"""What state values and `ctx.run` results may be: JSON values, protobuf messages read back
typed (`type=`), and anything else fails at once with a terminal error naming its type
(it used to be retried until the caller's deadline).

Runs through `durable.testing` (a real broker in-process, suspending at every await, so
every value is also read back from the journal on replay).
"""

from __future__ import annotations

from collections.abc import Iterator

import durable
import grpc
import pytest
from durable.testing import DurableTestEnvironment
from durable.v1 import admin_pb2, admin_pb2_grpc
from playground import playground_pb2 as pg
from playground import playground_pb2_grpc as pg_grpc

counter = durable.Service(pg.DESCRIPTOR.services_by_name["Counter"])


class Opaque:
    """Something JSON cannot encode."""


@counter.handler("Add")
async def add(ctx: durable.ObjectContext, request: pg.AddRequest) -> pg.Reply:
    if request.amount == 1:
        ctx.set("last", pg.Reply(text="stored", items=["a", "b"]))
        made = await ctx.run("make", lambda: pg.Reply(number=42), type=pg.Reply)
        await ctx.sleep(0)  # a suspension point: the rest runs on replay
        stored = await ctx.get("last", type=pg.Reply)
        assert stored is not None and isinstance(made, pg.Reply)
        return pg.Reply(text=stored.text, number=made.number, items=stored.items)
    if request.amount == 2:
        ctx.set("bad", Opaque())
    if request.amount == 3:
        await ctx.run("bad", lambda: {1, 2})
    if request.amount == 4:
        await ctx.run("untyped", lambda: pg.Reply(number=1))
    if request.amount == 5:
        await ctx.get("last", type=pg.Reply)
    return pg.Reply()


@counter.handler("Get")
async def get(ctx: durable.ObjectSharedContext, request: pg.CounterRef) -> pg.Reply:
    stored = await ctx.get("last", pg.Reply(text="none"), type=pg.Reply)
    return stored


@pytest.fixture(scope="module")
def env() -> Iterator[DurableTestEnvironment]:
    with DurableTestEnvironment([counter]) as running:
        yield running


@pytest.fixture(scope="module")
def stub(env: DurableTestEnvironment) -> pg_grpc.CounterStub:
    return pg_grpc.CounterStub(env.channel())


def test_protobuf_messages_as_state_and_run_results(stub: pg_grpc.CounterStub) -> None:
    reply = stub.Add(pg.AddRequest(name="typed", amount=1), timeout=20)
    assert (reply.text, reply.number, list(reply.items)) == ("stored", 42, ["a", "b"])
    assert stub.Get(pg.CounterRef(name="typed"), timeout=20).text == "stored"
    assert stub.Get(pg.CounterRef(name="unset"), timeout=20).text == "none"


@pytest.mark.parametrize(
    ("amount", "named"),
    [
        (2, "state value 'bad': a "),
        (3, "the result of run 'bad': a set"),
        (4, "pass type=Reply"),
    ],
)
def test_a_value_that_cannot_be_journaled_fails_at_once(
    stub: pg_grpc.CounterStub, amount: int, named: str
) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        stub.Add(pg.AddRequest(name=f"bad-{amount}", amount=amount), timeout=20)
    assert failed.value.code() is grpc.StatusCode.INTERNAL, failed.value
    message = failed.value.details() or ""
    assert "cannot journal" in message and named in message, message
    if amount == 2:
        assert "Opaque" in message and "protobuf messages" in message, message


def test_a_stored_value_the_handler_cannot_read_fails_at_once_and_frees_the_key(
    env: DurableTestEnvironment, stub: pg_grpc.CounterStub
) -> None:
    admin = admin_pb2_grpc.AdminStub(env.admin_channel())

    def set_last(value: bytes) -> None:
        request = admin_pb2.SetStateRequest(
            service="playground.Counter", key="repairable", name="last", value=value
        )
        admin.SetState(request, timeout=10)

    set_last(b'"just text"')  # valid JSON, but not a playground.Reply
    with pytest.raises(grpc.RpcError) as failed:
        stub.Add(pg.AddRequest(name="repairable", amount=5), timeout=20)
    # Not retried until the deadline: the same bytes would come back every time.
    assert failed.value.code() is grpc.StatusCode.INTERNAL, failed.value
    assert "state value 'last' is not a playground.Reply" in (failed.value.details() or "")
    # The failed invocation released the key, so an operator can repair the value.
    set_last(b'{"text": "repaired"}')
    assert stub.Get(pg.CounterRef(name="repairable"), timeout=20).text == "repaired"
