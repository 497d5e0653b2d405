"""A method the endpoint has no handler for (a generated servicer's method not yet
written, a `durable.Service` without that handler) is refused with UNIMPLEMENTED where it
is called, as a gRPC server refuses it: not invoked and retried until the caller's
deadline. The generated-servicer path through `python -m durable.codegen` is in
`test_codegen.py`."""

from __future__ import annotations

import durable
import grpc
import pytest
from benchsvc import benchsvc_pb2, benchsvc_pb2_grpc
from durable.testing import DurableTestEnvironment
from durable.v1 import admin_pb2, admin_pb2_grpc

STEPS_MISSING = "benchsvc.Bench/Steps is not implemented: the endpoint at http://127.0.0.1:"


def bench_with_echo_only() -> durable.Service:
    """benchsvc.Bench with Echo alone; Echo with payload `call` calls Steps itself, with
    `send` sends to Steps and to a service nobody hosts."""
    bench = durable.Service(benchsvc_pb2.DESCRIPTOR.services_by_name["Bench"])

    @bench.handler("Echo")
    async def echo(
        ctx: durable.Context, request: benchsvc_pb2.EchoRequest
    ) -> benchsvc_pb2.EchoResponse:
        if request.payload == b"send":
            ctx.send("benchsvc.Bench", "Steps", benchsvc_pb2.StepsRequest(steps=1))
            ctx.send("nope.Nope", "Go", benchsvc_pb2.StepsRequest(steps=1))
            return benchsvc_pb2.EchoResponse(payload=b"sent")
        if request.payload != b"call":
            return benchsvc_pb2.EchoResponse(payload=request.payload)
        try:
            steps = benchsvc_pb2.StepsRequest(steps=1)
            await ctx.call("benchsvc.Bench", "Steps", steps, benchsvc_pb2.StepsResponse)
        except durable.TerminalError as e:
            return benchsvc_pb2.EchoResponse(payload=f"{e.code} {e.message}".encode())
        return benchsvc_pb2.EchoResponse(payload=b"called")

    return bench


def test_a_call_through_the_ingress_is_refused_at_once() -> None:
    with DurableTestEnvironment([bench_with_echo_only()]) as env:
        stub = benchsvc_pb2_grpc.BenchStub(env.channel())
        assert stub.Echo(benchsvc_pb2.EchoRequest(payload=b"x"), timeout=30).payload == b"x"
        with pytest.raises(grpc.RpcError) as refused:
            stub.Steps(benchsvc_pb2.StepsRequest(steps=1), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        details = refused.value.details() or ""
        assert details.startswith(STEPS_MISSING), details
        assert details.endswith("implement it and register the deployment again")
        # Refused before any invocation was made: nothing waits to be retried.
        admin = admin_pb2_grpc.AdminStub(env.admin_channel())
        listed = admin.ListInvocations(admin_pb2.ListInvocationsRequest(), timeout=30)
        assert [i.method for i in listed.invocations] == ["Echo"]


def test_a_handlers_call_to_it_fails_terminally_for_the_caller_to_handle() -> None:
    with DurableTestEnvironment([bench_with_echo_only()]) as env:
        stub = benchsvc_pb2_grpc.BenchStub(env.channel())
        answer = stub.Echo(benchsvc_pb2.EchoRequest(payload=b"call"), timeout=30).payload.decode()
        code, message = answer.split(" ", 1)
        assert int(code) == grpc.StatusCode.UNIMPLEMENTED.value[0]
        assert message.startswith(STEPS_MISSING), message


def test_services_list_only_the_handlers_the_endpoint_has() -> None:
    with DurableTestEnvironment([bench_with_echo_only()]) as env:
        admin = admin_pb2_grpc.AdminStub(env.admin_channel())
        services = admin.ListServices(admin_pb2.ListServicesRequest(), timeout=30).services
        bench = next(s for s in services if s.name == "benchsvc.Bench")
        assert [h.name for h in bench.handlers] == ["Echo"]


def test_a_handlers_send_to_it_is_on_record_as_a_failed_invocation() -> None:
    with DurableTestEnvironment([bench_with_echo_only()]) as env:
        stub = benchsvc_pb2_grpc.BenchStub(env.channel())
        assert stub.Echo(benchsvc_pb2.EchoRequest(payload=b"send"), timeout=30).payload == b"sent"
        admin = admin_pb2_grpc.AdminStub(env.admin_channel())
        failed = admin.ListInvocations(
            admin_pb2.ListInvocationsRequest(outcome=admin_pb2.OUTCOME_FAILED), timeout=30
        ).invocations
        by_target = {f"{i.service}/{i.method}": i for i in failed}
        assert sorted(by_target) == ["benchsvc.Bench/Steps", "nope.Nope/Go"]
        steps = admin.DescribeInvocation(
            admin_pb2.DescribeInvocationRequest(invocation_id=by_target["benchsvc.Bench/Steps"].id),
            timeout=30,
        )
        assert steps.invocation.result.failure.code == grpc.StatusCode.UNIMPLEMENTED.value[0]
        assert steps.invocation.result.failure.message.startswith(STEPS_MISSING)
        nope = admin.DescribeInvocation(
            admin_pb2.DescribeInvocationRequest(invocation_id=by_target["nope.Nope/Go"].id),
            timeout=30,
        )
        assert "unknown service nope.Nope" in nope.invocation.result.failure.message
