"""A service endpoint driven by a hostile or buggy broker: raw gRPC calls to a real
`python -m services.playground` process. Every mistake gets a clear status or a protocol
error, the endpoint logs no traceback for it, and it keeps serving."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from durable.v1 import journal_pb2, protocol_pb2, protocol_pb2_grpc
from playground import playground_pb2

from tests.support import PYTHON, Process, free_port, wait_for, wait_healthy

ENDPOINT = "/durable.v1.ServiceEndpoint/"
P = protocol_pb2
J = journal_pb2


class Endpoint:
    """The running endpoint process and a raw channel to it."""

    def __init__(self, process: Process, address: str, channel: grpc.Channel) -> None:
        self.process = process
        self.address = address
        self.channel = channel
        self.stub = protocol_pb2_grpc.ServiceEndpointStub(channel)
        # Where the current test's part of the log begins.
        self.offset = 0

    def log(self) -> str:
        """What the endpoint logged during the current test."""
        with self.process.log_path.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", errors="replace")

    def assert_healthy(self) -> None:
        """Still alive, still answering, and no traceback for anything sent so far."""
        self.process.check_alive()
        reply = self.stub.Discover(P.DiscoverRequest(), timeout=10)
        assert "playground.Waiter" in reply.services
        assert "Traceback" not in self.log(), self.log()


@pytest.fixture
def endpoint(running: Endpoint) -> Endpoint:
    """The module's endpoint, its log read from this test on."""
    running.offset = running.process.log_path.stat().st_size
    return running


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path_factory.mktemp("attack") / "playground.log"
    process = Process("playground", [PYTHON, "-m", "services.playground", "--listen", address], log)
    process.start()
    try:
        wait_healthy(address, time.monotonic() + 30, process)
        with grpc.insecure_channel(address) as channel:
            yield Endpoint(process, address, channel)
    finally:
        assert process.terminate() == 0, process.log_tail()


def sleep_start(millis: int = 60_000, suspend_after_ms: int = 60_000) -> P.StartMessage:
    """A start of playground.Waiter/Sleep, which blocks on its timer (entry 1)."""
    request = playground_pb2.SleepRequest(millis=millis).SerializeToString()
    return P.StartMessage(
        invocation_id="inv_attack",
        service="playground.Waiter",
        method="Sleep",
        attempt=1,
        journal=[J.JournalEntry(input=J.InputCommand(request=request))],
        suspend_after_ms=suspend_after_ms,
    )


def fired(index: int) -> P.InvokeRequest:
    return P.InvokeRequest(
        completion=P.CompletionMessage(entry_index=index, result=J.Result(empty=J.Empty()))
    )


def kinds(messages: list[P.InvokeResponse]) -> list[str]:
    return [m.WhichOneof("message") or "" for m in messages]


@pytest.mark.parametrize("method", ["Discover", "InvokeOnce"])
def test_a_unary_body_that_does_not_parse_is_invalid_argument(
    endpoint: Endpoint, method: str
) -> None:
    call = endpoint.channel.unary_unary(ENDPOINT + method, None, None)
    with pytest.raises(grpc.RpcError) as refused:
        call(b"\xff\xff\xff", timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the request is not a valid durable.v1." in (refused.value.details() or "")
    endpoint.assert_healthy()


@pytest.mark.parametrize("method", ["Invoke", "Multiplex"])
def test_a_stream_frame_that_does_not_parse_is_invalid_argument(
    endpoint: Endpoint, method: str
) -> None:
    call = endpoint.channel.stream_stream(ENDPOINT + method, None, None)
    with pytest.raises(grpc.RpcError) as refused:
        list(call(iter([b"\xff\xff\xff"]), timeout=10))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"not a valid durable.v1.{method}Request" in (refused.value.details() or "")
    endpoint.assert_healthy()


BAD_JOURNALS = {
    "empty": ([], "starts with nothing"),
    "run first": ([J.JournalEntry(run=J.RunCommand(name="x"))], "starts with run"),
}


@pytest.mark.parametrize("case", BAD_JOURNALS)
def test_a_start_whose_journal_does_not_begin_with_the_input_is_invalid_argument(
    endpoint: Endpoint, case: str
) -> None:
    journal, says = BAD_JOURNALS[case]
    start = sleep_start()
    del start.journal[:]
    start.journal.extend(journal)
    with pytest.raises(grpc.RpcError) as once:
        endpoint.stub.InvokeOnce(P.InvokeRequest(start=start), timeout=10)
    with pytest.raises(grpc.RpcError) as streamed:
        list(endpoint.stub.Invoke(iter([P.InvokeRequest(start=start)]), timeout=10))
    for refused in (once.value, streamed.value):
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "a journal starts with its input entry" in (refused.details() or "")
        assert says in (refused.details() or "")
    endpoint.assert_healthy()


def test_an_input_that_does_not_parse_is_a_clear_protocol_error(endpoint: Endpoint) -> None:
    start = sleep_start()
    start.journal[0].input.request = b"\xff\xff\xff"
    reply = endpoint.stub.InvokeOnce(P.InvokeRequest(start=start), timeout=10)
    [error] = reply.messages
    assert error.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "the input is not a valid playground.SleepRequest" in error.error.message
    endpoint.assert_healthy()


@pytest.mark.parametrize(
    ("follow_up", "says"),
    [
        (fired(99), "completion for entry 99 beyond the journal's end"),
        (P.InvokeRequest(start=sleep_start()), "a second start"),
    ],
)
def test_a_bad_message_after_the_start_ends_the_attempt_with_an_error(
    endpoint: Endpoint, follow_up: P.InvokeRequest, says: str
) -> None:
    # Without it the attempt would wait for ever on a stream it no longer reads.
    messages = list(
        endpoint.stub.Invoke(iter([P.InvokeRequest(start=sleep_start()), follow_up]), timeout=10)
    )
    assert kinds(messages) == ["entry", "error"], messages
    assert messages[0].entry.entry.HasField("sleep")
    assert messages[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert says in messages[1].error.message
    endpoint.assert_healthy()


def test_a_completion_for_the_awaited_entry_still_completes_the_attempt(
    endpoint: Endpoint,
) -> None:
    messages = list(
        endpoint.stub.Invoke(iter([P.InvokeRequest(start=sleep_start()), fired(1)]), timeout=10)
    )
    assert kinds(messages) == ["entry", "entry", "end"], messages


def test_a_stream_closed_mid_attempt_leaves_the_endpoint_serving(endpoint: Endpoint) -> None:
    call = endpoint.stub.Invoke(iter([P.InvokeRequest(start=sleep_start())]), timeout=30)
    first = next(iter(call))
    assert first.entry.entry.HasField("sleep")
    call.cancel()
    endpoint.assert_healthy()


def test_a_bad_start_on_a_multiplex_stream_fails_only_its_own_attempt(
    endpoint: Endpoint,
) -> None:
    bad = sleep_start()
    del bad.journal[:]
    good = sleep_start(suspend_after_ms=0)
    frame = P.MultiplexRequest(
        items=[
            P.AttemptRequest(attempt_id=1, message=P.InvokeRequest(start=bad)),
            P.AttemptRequest(attempt_id=2, message=P.InvokeRequest(start=good)),
            P.AttemptRequest(attempt_id=3, abandon=True),  # never opened: ignored
            P.AttemptRequest(attempt_id=4, message=fired(1)),  # unknown attempt: ignored
        ]
    )
    done = [False]

    def frames() -> Iterator[P.MultiplexRequest]:
        yield frame
        # Held open until both attempts ended, as the broker holds its stream.
        wait_for(lambda: done[0], timeout=10, message="both attempts to end")

    ended: dict[int, P.InvokeResponse] = {}
    call = endpoint.stub.Multiplex(frames(), timeout=15)
    for response in call:
        for item in response.items:
            if item.message.WhichOneof("message") in ("end", "suspension", "error"):
                ended[item.attempt_id] = item.message
        if len(ended) == 2:
            done[0] = True
            break
    call.cancel()
    assert set(ended) == {1, 2}
    assert ended[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "a journal starts with its input entry" in ended[1].error.message
    assert list(ended[2].suspension.waiting_on) == [1]
    endpoint.assert_healthy()


def test_a_request_over_the_size_limit_is_resource_exhausted(endpoint: Endpoint) -> None:
    start = sleep_start()
    start.journal[0].input.request = b"x" * (65 * 1024 * 1024)
    options = [("grpc.max_send_message_length", 128 * 1024 * 1024)]
    with grpc.insecure_channel(endpoint.address, options=options) as big:
        stub = protocol_pb2_grpc.ServiceEndpointStub(big)
        with pytest.raises(grpc.RpcError) as refused:
            stub.InvokeOnce(P.InvokeRequest(start=start), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    endpoint.assert_healthy()


def test_a_wrong_secret_is_refused_before_the_body_is_read(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    args = [PYTHON, "-m", "services.playground", "--listen", address]
    env = {**os.environ, "DURABLE_ENDPOINT_SECRET": "right"}
    process = Process("secret-playground", args, tmp_path / "p.log", env=env).start()
    try:
        wait_healthy(address, time.monotonic() + 30, process)
        with grpc.insecure_channel(address) as channel:
            garbled = channel.unary_unary(ENDPOINT + "InvokeOnce", None, None)
            for metadata in ((), (("x-durable-secret", "wrong"),)):
                with pytest.raises(grpc.RpcError) as denied:
                    garbled(b"\xff\xff", metadata=metadata, timeout=10)
                assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "shared secret" in (denied.value.details() or "")
        assert "Traceback" not in process.log_path.read_text()
    finally:
        assert process.terminate() == 0, process.log_tail()
