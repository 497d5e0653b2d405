"""Endpoints that advertise `multiplex` in discovery: the broker drives their attempts
over one shared `Multiplex` stream per deployment.

A raw endpoint (no SDK, like the one in test_protocol_violations.py) serves
playground.Waiter over Multiplex only, so it sees exactly what the broker sends and
answers exactly what the test scripts: a frame that does not parse, or an item for an
attempt id the broker never opened followed by a correct answer. The SDK's playground
service then checks that many concurrent invocations complete both multiplexed and with
the broker's `--no-multiplex` (a stream per attempt).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import durable
import grpc
import pytest
from durable._endpoint import _files
from durable.v1 import admin_pb2, invocation_pb2, journal_pb2, protocol_pb2
from flights import flights_pb2
from playground import playground_pb2

from broker.cluster import placement
from tests.cluster_nodes import NodesCluster
from tests.support import PLAYGROUND, Cluster, free_port, invocation_id_of, wait_for

Status = invocation_pb2.InvocationStatus
WAITER = playground_pb2.DESCRIPTOR.services_by_name["Waiter"]
# Retry soon, so that a failing invocation shows several attempts within the deadline.
BROKER_ARGS = ["--inactivity-timeout", "5s", "--retry-initial", "200ms", "--retry-max", "1s"]

# What the raw endpoint answers to one attempt's start: serialized MultiplexResponse
# frames (or bytes that are not one).
Answer = Callable[[int, protocol_pb2.StartMessage], list[bytes]]


def _frame(*items: tuple[int, protocol_pb2.InvokeResponse]) -> bytes:
    response = protocol_pb2.MultiplexResponse(
        items=[
            protocol_pb2.AttemptResponse(attempt_id=attempt_id, message=message)
            for attempt_id, message in items
        ]
    )
    return response.SerializeToString()


def _reply_for(start: protocol_pb2.StartMessage) -> playground_pb2.Reply:
    request = playground_pb2.SleepRequest.FromString(start.journal[0].input.request)
    return playground_pb2.Reply(text="multiplexed", number=request.millis)


def _output_and_end(start: protocol_pb2.StartMessage) -> list[protocol_pb2.InvokeResponse]:
    """What the SDK sends when a handler returns: the output entry (proposed at the
    journal's length, with its result) and `end`."""
    output = journal_pb2.JournalEntry(
        output=journal_pb2.OutputCommand(),
        result=journal_pb2.Result(value=_reply_for(start).SerializeToString()),
    )
    return [
        protocol_pb2.InvokeResponse(
            entry=protocol_pb2.ProposedEntry(index=len(start.journal), entry=output)
        ),
        protocol_pb2.InvokeResponse(end=protocol_pb2.EndMessage()),
    ]


def garbage(attempt_id: int, start: protocol_pb2.StartMessage) -> list[bytes]:
    """Bytes that do not parse as a MultiplexResponse."""
    return [b"\xff\xff\xff\xff"]


STRANGER_OFFSET = 1000


def stranger_then_answer(attempt_id: int, start: protocol_pb2.StartMessage) -> list[bytes]:
    """First an item for an attempt the broker never opened, then the right answer.

    The stranger's messages would break any attempt they reached: an `end` without an
    output, and an output for another invocation.
    """
    stranger = attempt_id + STRANGER_OFFSET
    wrong = playground_pb2.Reply(text="not yours").SerializeToString()
    wrong_output = journal_pb2.JournalEntry(
        output=journal_pb2.OutputCommand(), result=journal_pb2.Result(value=wrong)
    )
    return [
        _frame((stranger, protocol_pb2.InvokeResponse(end=protocol_pb2.EndMessage()))),
        _frame(
            (
                stranger,
                protocol_pb2.InvokeResponse(
                    entry=protocol_pb2.ProposedEntry(index=1, entry=wrong_output)
                ),
            )
        ),
        _frame(*((attempt_id, message) for message in _output_and_end(start))),
    ]


class _MultiplexEndpoint:
    """A raw gRPC endpoint serving playground.Waiter over `Multiplex` only (it has no
    Invoke nor InvokeOnce: an attempt the broker drove otherwise would fail)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.address = f"127.0.0.1:{free_port()}"
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self._lock = threading.Lock()
        self.multiplex_calls = 0
        self.attempt_ids: list[int] = []
        # Set when a Multiplex call ends (the broker let go of the stream).
        self.stream_ended = threading.Event()

        def discover(request: bytes, context: Any) -> bytes:
            return protocol_pb2.DiscoverResponse(
                services=[WAITER.full_name],
                files=_files([durable.Service(WAITER)]),
                protocol_version=1,
                multiplex=True,
            ).SerializeToString()

        handler = grpc.method_handlers_generic_handler(
            "durable.v1.ServiceEndpoint",
            {
                "Discover": grpc.unary_unary_rpc_method_handler(discover),
                "Multiplex": grpc.stream_stream_rpc_method_handler(
                    self._multiplex, request_deserializer=protocol_pb2.MultiplexRequest.FromString
                ),
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.server.add_insecure_port(self.address)

    def _multiplex(
        self, requests: Iterator[protocol_pb2.MultiplexRequest], context: Any
    ) -> Iterator[bytes]:
        with self._lock:
            self.multiplex_calls += 1
        context.add_callback(self.stream_ended.set)
        outgoing: queue.Queue[bytes | None] = queue.Queue()

        def read() -> None:
            try:
                for frame in requests:
                    for item in frame.items:
                        if item.message.HasField("start"):
                            with self._lock:
                                self.attempt_ids.append(item.attempt_id)
                            for data in self.answer(item.attempt_id, item.message.start):
                                outgoing.put(data)
            except grpc.RpcError:
                pass  # the broker ended the stream
            finally:
                outgoing.put(None)

        threading.Thread(target=read, daemon=True).start()
        while context.is_active():
            try:
                data = outgoing.get(timeout=0.1)  # re-checks that the call is alive
            except queue.Empty:
                continue
            if data is None:
                return
            yield data

    def __enter__(self) -> _MultiplexEndpoint:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(None)


def _cluster(tmp: Path, endpoint: _MultiplexEndpoint, *more_args: str) -> Cluster:
    cluster = Cluster(tmp, broker_args=[*BROKER_ARGS, *more_args], services=("flights",))
    cluster.start()
    try:
        deployment = cluster.register(f"http://{endpoint.address}")
        assert WAITER.full_name in deployment.services
    except BaseException:
        cluster.close()
        raise
    return cluster


def test_a_frame_that_does_not_parse_backs_off_with_a_protocol_violation(
    tmp_path: Path,
) -> None:
    with _MultiplexEndpoint(garbage) as endpoint:
        cluster = _cluster(tmp_path, endpoint)
        try:
            calls: list[Any] = [
                cluster.waiter.Sleep.future(playground_pb2.SleepRequest(millis=m), timeout=60)
                for m in (1, 2)
            ]
            try:

                def backing_off() -> list[invocation_pb2.Invocation]:
                    records = cluster.invocations(service="playground.Waiter")
                    ready = [
                        i for i in records if i.status == Status.BACKING_OFF and i.attempts >= 2
                    ]
                    return ready if len(ready) == 2 else []

                records = cluster.wait_for(
                    backing_off,
                    timeout=30,
                    message=lambda: (
                        "both invocations to back off: "
                        f"{cluster.invocations(service='playground.Waiter')}"
                    ),
                )
                for record in records:
                    assert "protocol violation" in record.last_error, record
                    assert "does not parse" in record.last_error, record
                    # Nothing was journaled beyond the input.
                    assert cluster.journal_kinds(record.id) == ["input"]
                    described = cluster.invocation(record.id)
                    assert "protocol violation" in described.last_error
                # The broker reopened the stream for the retries, and is still up.
                assert endpoint.multiplex_calls >= 2
                cluster.broker.check_alive()
                reply = cluster.flights.Reserve(
                    flights_pb2.ReserveRequest(trip_id="mux1"), timeout=30
                )
                assert reply.state == "reserved"
                assert not any(call.done() for call in calls)
            finally:
                for call in calls:
                    call.cancel()
                for record in cluster.invocations(service="playground.Waiter"):
                    if record.status != Status.COMPLETED:
                        cluster.kill(record.id)
        finally:
            cluster.close()


def test_an_item_for_an_unknown_attempt_id_is_ignored(tmp_path: Path) -> None:
    with _MultiplexEndpoint(stranger_then_answer) as endpoint:
        cluster = _cluster(tmp_path, endpoint)
        try:
            reply, call = cluster.waiter.Sleep.with_call(
                playground_pb2.SleepRequest(millis=7), timeout=30
            )
            assert reply == playground_pb2.Reply(text="multiplexed", number=7)
            record = cluster.invocation(invocation_id_of(call))
            assert record.status == Status.COMPLETED
            assert record.attempts == 1
            assert record.last_error == ""
            assert cluster.journal_kinds(record.id) == ["input", "output"]
            assert endpoint.multiplex_calls == 1
            assert STRANGER_OFFSET + endpoint.attempt_ids[0] not in endpoint.attempt_ids
        finally:
            cluster.close()


def test_concurrent_invocations_share_one_multiplex_stream(tmp_path: Path) -> None:
    with _MultiplexEndpoint(stranger_then_answer) as endpoint:
        cluster = _cluster(tmp_path, endpoint)
        try:
            count = 20
            calls = [
                cluster.waiter.Sleep.future(playground_pb2.SleepRequest(millis=m), timeout=60)
                for m in range(1, count + 1)
            ]
            replies = [call.result(timeout=60) for call in calls]
            assert [r.number for r in replies] == list(range(1, count + 1))
            assert all(r.text == "multiplexed" for r in replies)
            assert endpoint.multiplex_calls == 1
            # Each attempt got its own id on the stream.
            assert len(endpoint.attempt_ids) == count
            assert len(set(endpoint.attempt_ids)) == count
            records = cluster.invocations(service="playground.Waiter")
            assert len(records) == count
            assert all(r.status == Status.COMPLETED and r.attempts == 1 for r in records)
        finally:
            cluster.close()


def _sleep_on_every_partition(cluster: Cluster) -> None:
    """Calls the endpoint from each of the four partitions."""
    partitions = set()
    for m in range(1, 25):
        # An idempotency key places the invocation by its identity: all four partitions,
        # whichever process took the call.
        reply, call = cluster.waiter.Sleep.with_call(
            playground_pb2.SleepRequest(millis=m),
            metadata=(("idempotency-key", f"share-{m}"),),
            timeout=60,
        )
        assert reply.number == m
        partitions.add(placement.of_id(invocation_id_of(call), 4))
    assert partitions == {0, 1, 2, 3}


def test_the_partitions_of_a_worker_share_its_stream(tmp_path: Path) -> None:
    # Two workers with two partitions each: one stream per worker, not per partition.
    with _MultiplexEndpoint(stranger_then_answer) as endpoint:
        cluster = _cluster(tmp_path, endpoint, "--workers", "2", "--partitions", "4")
        try:
            _sleep_on_every_partition(cluster)
            assert endpoint.multiplex_calls == 2
        finally:
            cluster.close()


def test_the_partitions_a_cluster_node_leads_share_its_stream(tmp_path: Path) -> None:
    # Two nodes leading two partitions each: one stream per node, not per partition.
    with _MultiplexEndpoint(stranger_then_answer) as endpoint:
        cluster = NodesCluster(
            tmp_path, nodes=2, partitions=4, broker_args=BROKER_ARGS, services=("flights",)
        )
        cluster.start()
        try:
            cluster.wait_led(time.monotonic() + 60)
            cluster.register(f"http://{endpoint.address}")
            _sleep_on_every_partition(cluster)
            assert sorted(cluster.leaders().values()) == [0, 0, 1, 1]
            assert endpoint.multiplex_calls == 2
        finally:
            cluster.close()


def test_removing_a_deployment_closes_its_stream(tmp_path: Path) -> None:
    with _MultiplexEndpoint(stranger_then_answer) as endpoint:
        cluster = _cluster(tmp_path, endpoint)
        try:
            reply = cluster.waiter.Sleep(playground_pb2.SleepRequest(millis=3), timeout=30)
            assert reply.number == 3
            assert endpoint.multiplex_calls == 1
            assert not endpoint.stream_ended.is_set()
            [deployment] = [
                d
                for d in cluster.admin.ListDeployments(
                    admin_pb2.ListDeploymentsRequest(), timeout=10
                ).deployments
                if d.uri == f"http://{endpoint.address}"
            ]
            cluster.admin.RemoveDeployment(
                admin_pb2.RemoveDeploymentRequest(deployment_id=deployment.id), timeout=10
            )
            assert endpoint.stream_ended.wait(timeout=10), "the stream stayed open"
        finally:
            cluster.close()


@pytest.mark.parametrize(
    "broker_args", [[], ["--no-multiplex"]], ids=["multiplexed", "stream-per-attempt"]
)
def test_many_concurrent_invocations_of_an_sdk_service_complete(
    tmp_path: Path, broker_args: list[str]
) -> None:
    count = 20
    with Cluster(
        tmp_path, suspend_after="1s", broker_args=broker_args, services=(PLAYGROUND,)
    ) as cluster:
        # Sleeps that outlast --suspend-after suspend and resume on a later attempt;
        # the short ones finish in their first.
        millis = [20 if i % 2 else 1500 for i in range(count)]
        calls = [
            cluster.waiter.Sleep.future(playground_pb2.SleepRequest(millis=m), timeout=60)
            for m in millis
        ]
        replies = [call.result(timeout=60) for call in calls]
        assert [(r.text, r.number) for r in replies] == [("slept", m) for m in millis]

        def all_completed() -> list[invocation_pb2.Invocation]:
            records = cluster.invocations(service="playground.Waiter")
            done = [r for r in records if r.status == Status.COMPLETED]
            return records if len(done) == count else []

        records = wait_for(all_completed, timeout=30, message="every invocation to complete")
        assert all(r.last_error == "" for r in records)
        for record in records:
            assert cluster.journal_kinds(record.id) == ["input", "sleep", "output"]
        # Some went through a suspension and a second attempt.
        assert any(r.attempts >= 2 for r in records)
