"""A service endpoint that breaks the protocol: the invocation backs off with a clear
recorded error, its journal is intact, and no other invocation is affected."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, ClassVar

import durable
import grpc
import pytest
from durable._endpoint import _files
from durable.v1 import invocation_pb2, journal_pb2, protocol_pb2
from flights import flights_pb2
from playground import playground_pb2
from playground.playground_durable import WaiterServicer

from tests.fake_endpoint import TRANSPORTS, FakeEndpoint
from tests.support import Cluster, free_port, wait_for

Status = invocation_pb2.InvocationStatus
WAITER = playground_pb2.DESCRIPTOR.services_by_name["Waiter"]


def _proposal(index: int, entry: journal_pb2.JournalEntry) -> bytes:
    message = protocol_pb2.InvokeResponse(
        entry=protocol_pb2.ProposedEntry(index=index, entry=entry)
    )
    return message.SerializeToString()


def _misbehave(millis: int, context: Any) -> Iterator[bytes]:
    """What the bad endpoint answers, chosen by the request's `millis`."""
    if millis == 1:  # out of order: skips to entry 5
        yield _proposal(5, journal_pb2.JournalEntry(run=journal_pb2.RunCommand(name="x")))
    elif millis == 2:  # a message with nothing in it
        yield protocol_pb2.InvokeResponse().SerializeToString()
    elif millis == 3:  # bytes that are not an InvokeResponse at all
        yield b"\xff\xff\xff\xff"
    elif millis == 4:  # ends without proposing an output
        yield protocol_pb2.InvokeResponse(end=protocol_pb2.EndMessage()).SerializeToString()
    elif millis == 5:  # suspends on an entry that does not exist
        suspension = protocol_pb2.SuspensionMessage(waiting_on=[7])
        yield protocol_pb2.InvokeResponse(suspension=suspension).SerializeToString()
    elif millis == 6:  # hangs
        while context.is_active():
            time.sleep(0.05)


class _BadEndpoint:
    """A raw gRPC endpoint (no SDK) serving playground.Waiter badly."""

    def __init__(self) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))

        def discover(request: bytes, context: Any) -> bytes:
            return protocol_pb2.DiscoverResponse(
                services=[WAITER.full_name],
                files=_files([durable.Service(WAITER)]),
                protocol_version=1,
            ).SerializeToString()

        def invoke(requests: Iterator[protocol_pb2.InvokeRequest], context: Any) -> Iterator[bytes]:
            start = next(requests).start
            request = playground_pb2.SleepRequest.FromString(start.journal[0].input.request)
            yield from _misbehave(request.millis, context)

        handler = grpc.method_handlers_generic_handler(
            "durable.v1.ServiceEndpoint",
            {
                "Discover": grpc.unary_unary_rpc_method_handler(discover),
                "Invoke": grpc.stream_stream_rpc_method_handler(
                    invoke, request_deserializer=protocol_pb2.InvokeRequest.FromString
                ),
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.server.add_insecure_port(self.address)

    def __enter__(self) -> _BadEndpoint:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(None)


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    args = ["--inactivity-timeout", "1s", "--retry-initial", "200ms", "--retry-max", "1s"]
    with _BadEndpoint() as endpoint:
        tmp = Path(tmp_path_factory.mktemp("bad"))
        with Cluster(tmp, broker_args=args, services=("flights",)) as cluster:
            cluster.register(f"http://{endpoint.address}")
            yield cluster


CASES = {
    1: "protocol violation: entry 5 proposed, but the journal has 1 entry",
    2: "protocol violation: an empty message from the endpoint",
    3: "protocol violation: the endpoint sent a frame that does not parse",
    4: "protocol violation: the attempt ended without an output entry",
    5: "protocol violation: suspended on entry 7, which cannot complete",
    6: "the endpoint sent nothing for 1s (--inactivity-timeout); attempt abandoned",
}


@pytest.mark.parametrize("mode", sorted(CASES))
def test_a_violation_backs_off_with_a_clear_error(bad: Cluster, mode: int) -> None:
    future = bad.waiter.Sleep.future(playground_pb2.SleepRequest(millis=mode), timeout=60)
    try:

        def backing_off() -> invocation_pb2.Invocation | None:
            for i in bad.invocations(service="playground.Waiter"):
                journal = bad.describe(i.id).journal
                request = playground_pb2.SleepRequest.FromString(journal[0].input.request)
                if request.millis == mode and i.status == Status.BACKING_OFF and i.attempts >= 2:
                    return i
            return None

        record = wait_for(backing_off, timeout=30, message=f"mode {mode} to back off")
        assert CASES[mode] in record.last_error
        # Nothing was journaled beyond the input, and nothing was lost.
        kinds = [e.WhichOneof("command") for e in bad.describe(record.id).journal]
        assert kinds == ["input"]
        # Other services are not affected.
        reply = bad.flights.Reserve(flights_pb2.ReserveRequest(trip_id=f"t{mode}"), timeout=30)
        assert reply.state == "reserved"
    finally:
        future.cancel()


class _Diverging(WaiterServicer):
    """Takes a different first step on its second attempt."""

    attempts: ClassVar[dict[str, int]] = {}

    async def Sleep(
        self, ctx: durable.Context, request: playground_pb2.SleepRequest
    ) -> playground_pb2.Reply:
        seen = self.attempts.get(ctx.invocation_id, 0)
        self.attempts[ctx.invocation_id] = seen + 1
        if seen == 0:
            await ctx.run("first", lambda: 1)
            raise RuntimeError("fail once, so the next attempt replays")
        await ctx.sleep(0.01)
        return playground_pb2.Reply(text="unreachable")


def test_a_replay_that_diverges_is_reported_and_retried_not_accepted() -> None:
    from durable.testing import DurableTestEnvironment
    from playground import playground_pb2_grpc

    # Production behaviour: a divergence is retried (a fixed deployment can recover it).
    retried = {"non_determinism_terminal": False}
    with DurableTestEnvironment([_Diverging()], suspend_after=60, broker_settings=retried) as env:
        stub = playground_pb2_grpc.WaiterStub(env.channel())
        call = stub.Sleep.future(playground_pb2.SleepRequest(millis=1), timeout=60)
        try:

            def diverged() -> Any:
                for i in env.invocations(service="playground.Waiter"):
                    if "non-determinism" in i.last_error:
                        return i
                return None

            record = wait_for(diverged, timeout=30, message="the divergence to be recorded")
            assert (
                "non-determinism at journal entry 1: the journal has run 'first', "
                "but the handler proposed sleep" in record.last_error
            )
            kinds = [e.WhichOneof("command") for e in env.describe(record.id).journal]
            assert kinds == ["input", "run"]  # the journal was not rewritten
            assert not call.done()
        finally:
            call.cancel()
    assert threading.active_count() >= 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_reply_that_does_not_parse_is_a_violation_on_every_transport(
    tmp_path: Path, transport: str
) -> None:
    with (
        FakeEndpoint([WAITER], lambda start: b"\xff\xff\xff\xff", transport) as endpoint,
        Cluster(tmp_path, broker_args=["--retry-initial", "200ms"], services=()) as cluster,
    ):
        cluster.register(endpoint.uri)
        future = cluster.waiter.Sleep.future(playground_pb2.SleepRequest(millis=1), timeout=60)
        try:
            record = cluster.wait_for(
                lambda: next(
                    (
                        i
                        for i in cluster.invocations(service=WAITER.full_name)
                        if i.status == Status.BACKING_OFF and i.attempts >= 2
                    ),
                    None,
                ),
                timeout=30,
                message="the invocation to back off",
            )
            assert "protocol violation" in record.last_error
            assert "does not parse" in record.last_error
            assert cluster.journal_kinds(record.id) == ["input"]
            # Reported as the endpoint's fault, not as a crash of the broker's own code.
            assert "attempt crashed" not in (tmp_path / "logs" / "broker.log").read_text()
        finally:
            future.cancel()
