"""A workflow runs once per key: a second submission of its run joins the first.

Cancelling or killing a caller that joined ends its own wait only (an attack showed it
cancelled, or killed, the run that another caller had started and waited on, and used up
the workflow's key until retention ended); and the run is found by the idempotency key
it was submitted with."""

from __future__ import annotations

import durable
import grpc
import pytest
from durable.testing import DurableTestEnvironment
from durable.v1 import admin_pb2, admin_pb2_grpc, ingress_pb2, ingress_pb2_grpc
from playground import playground_pb2 as pg
from playground import playground_pb2_grpc as pg_grpc

from tests.support import wait_for

waiter = durable.Service(pg.DESCRIPTOR.services_by_name["Waiter"])
signup = durable.Service(pg.DESCRIPTOR.services_by_name["Signup"])


@waiter.handler("Await")
async def join_the_run(ctx: durable.Context, request: pg.AwaitRequest) -> pg.Reply:
    """Calls the run of user "u", which is already running: the call joins it."""
    run = pg.SignupRequest(user="u", email="joined@example.com")
    reply: pg.Reply = await ctx.call("playground.Signup", "Run", run, pg.Reply)
    return reply


@signup.handler("Run")
async def run(ctx: durable.WorkflowContext, request: pg.SignupRequest) -> pg.Reply:
    code = await ctx.promise("verified").value()
    return pg.Reply(text=f"{request.email}: {code}")


@signup.handler("Verify")
async def verify(ctx: durable.WorkflowSharedContext, request: pg.VerifyRequest) -> pg.Reply:
    await ctx.promise("verified").resolve(request.code)
    return pg.Reply(text="ok")


@pytest.mark.parametrize("how", ["cancel", "kill"])
def test_ending_a_caller_that_joined_a_run_leaves_the_run_alone(how: str) -> None:
    with DurableTestEnvironment([waiter, signup]) as env:
        signups = pg_grpc.SignupStub(env.channel())
        started = signups.Run.future(
            pg.SignupRequest(user="u", email="first@example.com"), timeout=60
        )
        (the_run,) = wait_for(
            lambda: env.invocations(service="playground.Signup", method="Run"),
            timeout=20,
            message="the workflow's run",
        )
        joining = pg_grpc.WaiterStub(env.channel()).Await.future(pg.AwaitRequest(), timeout=60)
        (caller,) = wait_for(
            lambda: env.invocations(service="playground.Waiter", method="Await"),
            timeout=20,
            message="the caller",
        )
        wait_for(
            lambda: any(e.HasField("call") for e in env.describe(caller.id).journal),
            timeout=20,
            message="the caller's call to the run",
        )
        admin = admin_pb2_grpc.AdminStub(env.admin_channel())
        request = admin_pb2.InvocationRequest(invocation_id=caller.id)
        if how == "cancel":
            admin.CancelInvocation(request, timeout=10)
            expected = grpc.StatusCode.CANCELLED
        else:
            admin.KillInvocation(request, timeout=10)
            expected = grpc.StatusCode.ABORTED
        with pytest.raises(grpc.RpcError) as ended:
            joining.result(timeout=30)
        assert ended.value.code() == expected

        # The run goes on, for the caller that started it.
        assert not env.describe(the_run.id).invocation.cancelled
        signups.Verify(pg.VerifyRequest(user="u", code="1234"), timeout=30)
        assert started.result(timeout=30).text == "first@example.com: 1234"


def test_a_run_submitted_with_an_idempotency_key_is_found_by_it() -> None:
    # A second Run with the same key joined the run, but Attach and GetOutput by that
    # key answered NOT_FOUND: only an empty idempotency key found it.
    with DurableTestEnvironment([waiter, signup]) as env:
        signups = pg_grpc.SignupStub(env.channel())
        key = (("idempotency-key", "ik"),)
        started = signups.Run.future(
            pg.SignupRequest(user="w", email="w@example.com"), metadata=key, timeout=60
        )
        wait_for(
            lambda: env.invocations(service="playground.Signup", method="Run"),
            timeout=20,
            message="the workflow's run",
        )
        ingress = ingress_pb2_grpc.IngressStub(env.channel())
        target = ingress_pb2.AttachRequest(
            idempotent=ingress_pb2.IdempotentTarget(
                service="playground.Signup", method="Run", key="w", idempotency_key="ik"
            )
        )
        attached = ingress.Attach.future(target, timeout=60)
        signups.Verify(pg.VerifyRequest(user="w", code="42"), timeout=30)
        assert started.result(timeout=30).text == "w@example.com: 42"
        expected = pg.Reply(text="w@example.com: 42").SerializeToString()
        assert attached.result(timeout=30).value == expected
        assert ingress.GetOutput(target, timeout=30).value == expected
