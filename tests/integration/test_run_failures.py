"""A side effect (`ctx.run`) that raises fails the attempt, which the broker retries:
through a real broker, a handler that catches the exception cannot take a second path
that its next attempt would not take (an attack ran both the charge and its fallback,
then retried the invocation for ever on a non-determinism error)."""

from __future__ import annotations

import durable
import grpc
import pytest
from benchsvc import benchsvc_pb2, benchsvc_pb2_grpc
from durable.testing import DurableTestEnvironment


def test_a_caught_side_effect_failure_is_retried_not_fallen_back_from() -> None:
    charges: list[str] = []
    fallbacks: list[str] = []
    bench = durable.Service(benchsvc_pb2.DESCRIPTOR.services_by_name["Bench"])

    def charge() -> str:
        charges.append("try")
        if len(charges) == 1:
            raise ConnectionError("bank unreachable")
        return "charged"

    def fall_back() -> str:
        fallbacks.append("queued")
        return "queued"

    @bench.handler("Echo")
    async def echo(
        ctx: durable.Context, request: benchsvc_pb2.EchoRequest
    ) -> benchsvc_pb2.EchoResponse:
        try:
            outcome: str = await ctx.run("charge", charge)
        except Exception:
            outcome = await ctx.run("fallback", fall_back)
        await ctx.sleep(0.05)  # a replay after the run, as any later await brings
        return benchsvc_pb2.EchoResponse(payload=outcome.encode())

    settings = {"retry_initial": 0.01, "retry_max": 0.1}
    with DurableTestEnvironment([bench], broker_settings=settings) as env:
        stub = benchsvc_pb2_grpc.BenchStub(env.channel())
        assert stub.Echo(benchsvc_pb2.EchoRequest(), timeout=30).payload == b"charged"
    assert charges == ["try", "try"]
    assert fallbacks == []


def test_a_terminal_error_with_code_ok_reaches_the_caller_as_unknown() -> None:
    # It hung the caller until its deadline: the broker aborted the call with OK.
    bench = durable.Service(benchsvc_pb2.DESCRIPTOR.services_by_name["Bench"])

    @bench.handler("Echo")
    async def echo(
        ctx: durable.Context, request: benchsvc_pb2.EchoRequest
    ) -> benchsvc_pb2.EchoResponse:
        raise durable.TerminalError("not an error, says the handler", grpc.StatusCode.OK)

    with DurableTestEnvironment([bench]) as env:
        stub = benchsvc_pb2_grpc.BenchStub(env.channel())
        with pytest.raises(grpc.RpcError) as failed:
            stub.Echo(benchsvc_pb2.EchoRequest(), timeout=30)
    assert failed.value.code() == grpc.StatusCode.UNKNOWN
    assert failed.value.details() == "not an error, says the handler"


def test_a_journal_too_large_to_resume_fails_with_resource_exhausted_not_for_ever() -> None:
    # 17 side effects of ~4 MiB each (each under --max-payload-bytes): every attempt to
    # resume it failed "a message of 71 MB exceeds the 64 MiB limit of the endpoint
    # stream" and was retried with backoff for ever; its caller never heard.
    bench = durable.Service(benchsvc_pb2.DESCRIPTOR.services_by_name["Bench"])
    chunk = "x" * (4 * 1024 * 1024 - 1024)

    @bench.handler("Echo")
    async def echo(
        ctx: durable.Context, request: benchsvc_pb2.EchoRequest
    ) -> benchsvc_pb2.EchoResponse:
        for i in range(17):
            await ctx.run(f"chunk {i}", lambda: chunk)
        await ctx.sleep(0.01)  # suspends (suspend_after=0): resuming needs it all
        return benchsvc_pb2.EchoResponse(payload=b"resumed")

    with DurableTestEnvironment([bench], broker_settings={"retry_initial": 0.01}) as env:
        stub = benchsvc_pb2_grpc.BenchStub(env.channel())
        with pytest.raises(grpc.RpcError) as failed:
            stub.Echo(benchsvc_pb2.EchoRequest(), timeout=60)
    assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = failed.value.details() or ""
    assert "the journal and state an attempt starts from are" in details, details
    assert "it cannot be resumed" in details
