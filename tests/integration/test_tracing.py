"""Traces: one saga, exported over OTLP by the broker and all four services, forms
one tree; a caller's traceparent is continued."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from trips import trips_pb2

from tests.cluster_nodes import NodesCluster
from tests.support import Cluster, free_port, invocation_id_of, wait_for


class _Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP gRPC trace receiver that keeps what it is sent."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[str, Span]] = []  # (service.name, Span)

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            for resource_spans in request.resource_spans:
                name = next(
                    (
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    ),
                    "?",
                )
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append((name, span))
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: bytes) -> list[tuple[str, Span]]:
        with self.lock:
            return [(n, s) for n, s in self.spans if s.trace_id == trace_id]


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[_Receiver, str]]:
    servicer = _Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    yield servicer, f"http://127.0.0.1:{port}"
    server.stop(None)


@contextlib.contextmanager
def _exporting_to(endpoint: str) -> Iterator[None]:
    """Processes started inside export their spans to `endpoint`, quickly."""
    mp = pytest.MonkeyPatch()
    mp.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    mp.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    mp.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    try:
        yield
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def traced_cluster(
    receiver: tuple[_Receiver, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    with _exporting_to(receiver[1]), Cluster(Path(tmp_path_factory.mktemp("traced"))) as cluster:
        yield cluster


def _attr(span: Span, key: str) -> object:
    for a in span.attributes:
        if a.key == key:
            v = a.value
            return v.string_value or v.int_value
    return None


def _one_trace(receiver: _Receiver, invocation_id: str) -> tuple[bytes, list[tuple[str, Span]]]:
    def invocation_span() -> Span | None:
        with receiver.lock:
            return next(
                (
                    s
                    for _, s in receiver.spans
                    if s.name.startswith("invocation trips.Trips/Reserve")
                    and _attr(s, "durable.invocation_id") == invocation_id
                ),
                None,
            )

    root = wait_for(invocation_span, timeout=20, message="the saga's invocation span")
    trace_id: bytes = root.trace_id
    return trace_id, receiver.trace(trace_id)


@pytest.fixture(scope="module")
def traced_nodes(
    receiver: tuple[_Receiver, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodesCluster]:
    """Three cluster nodes on NATS, exporting to the same receiver."""
    with _exporting_to(receiver[1]):
        cluster = NodesCluster(Path(tmp_path_factory.mktemp("traced-nodes")))
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.close()


def test_a_saga_is_one_trace_across_every_service(
    traced_cluster: Cluster, receiver: tuple[_Receiver, str]
) -> None:
    _one_saga_one_trace(traced_cluster, receiver[0])


def test_a_saga_is_one_trace_across_cluster_nodes(
    traced_nodes: NodesCluster, receiver: tuple[_Receiver, str]
) -> None:
    # The call enters through one node; its steps live in partitions led by others.
    _one_saga_one_trace(traced_nodes, receiver[0])


def _one_saga_one_trace(traced_cluster: Cluster, receiver: _Receiver) -> None:
    response, call = traced_cluster.trips.Reserve.with_call(
        trips_pb2.ReserveTripRequest(), timeout=30
    )
    assert response.status == "success"
    invocation_id = invocation_id_of(call)
    trace_id, _ = _one_trace(receiver, invocation_id)

    wanted = {"broker", "flights.Flights", "cars.Cars", "payments.Payments", "trips.Trips"}

    def complete() -> list[tuple[str, Span]] | None:
        spans = receiver.trace(trace_id)
        handlers = {n for n, s in spans if s.name.startswith("handler ")}
        # The ingress span ends after the response: it may be exported last. Each process
        # (every cluster node too) exports in batches of its own, so a span may arrive
        # before its parent: wait until every parent named has arrived.
        ingress = any(s.name == "ingress trips.Trips/Reserve" for _, s in spans)
        ids = {s.span_id for _, s in spans}
        parents = all(s.parent_span_id in ids for _, s in spans if s.parent_span_id)
        whole = wanted <= {n for n, _ in spans} and len(handlers) >= 4 and ingress and parents
        return spans if whole else None

    spans = wait_for(
        complete, timeout=20, message="spans from the broker and all four services, parents too"
    )
    by_id = {s.span_id: (n, s) for n, s in spans}
    names = [s.name for _, s in spans]
    # One ingress span is the root; every other span's parent is in the same trace.
    roots = [s for _, s in spans if not s.parent_span_id]
    assert [r.name for r in roots] == ["ingress trips.Trips/Reserve"]
    for _, s in spans:
        if s.parent_span_id:
            assert s.parent_span_id in by_id, f"{s.name} has a parent outside the trace"
    for step in (
        "call flights.Flights/Reserve",
        "call cars.Cars/Reserve",
        "call payments.Payments/Process",
        "run 'notify success'",
        "set_state 'booking'",
    ):
        assert step in names, f"no span {step!r} in {sorted(set(names))}"
    # A callee's invocation hangs under the caller's call step, and its handler under
    # its attempt, in the service's own process.
    flights_invocation = next(s for _, s in spans if s.name == "invocation flights.Flights/Reserve")
    parent_name = by_id[flights_invocation.parent_span_id][1].name
    assert parent_name == "call flights.Flights/Reserve"
    handler = next((n, s) for n, s in spans if s.name == "handler flights.Flights/Reserve")
    assert handler[0] == "flights.Flights"
    attempt = by_id[handler[1].parent_span_id][1]
    assert attempt.name.startswith("attempt ")
    assert _attr(attempt, "durable.attempt") is not None


def test_a_callers_traceparent_is_continued(
    traced_cluster: Cluster, receiver: tuple[_Receiver, str]
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = f"00-{trace_id}-00f067aa0ba902b7-01"
    _, call = traced_cluster.trips.Reserve.with_call(
        trips_pb2.ReserveTripRequest(), metadata=(("traceparent", parent),), timeout=30
    )
    invocation_id = invocation_id_of(call)
    got, _ = _one_trace(receiver[0], invocation_id)
    assert got.hex() == trace_id

    def ingress_span() -> Span | None:
        # It ends after the response, so it may be exported after the others.
        spans = receiver[0].trace(got)
        return next((s for _, s in spans if s.name == "ingress trips.Trips/Reserve"), None)

    ingress = wait_for(ingress_span, timeout=20, message="the call's ingress span")
    assert ingress.parent_span_id.hex() == "00f067aa0ba902b7"


def test_retries_show_as_failed_attempts(
    traced_cluster: Cluster, receiver: tuple[_Receiver, str]
) -> None:
    _, call = traced_cluster.trips.Reserve.with_call(
        trips_pb2.ReserveTripRequest(run_type="flakyPayment"), timeout=30
    )
    invocation_id = invocation_id_of(call)
    trace_id, _ = _one_trace(receiver[0], invocation_id)

    def failed_attempts() -> list[Span] | None:
        spans = receiver[0].trace(trace_id)
        failed = [s for _, s in spans if s.name.startswith("attempt ") and s.status.code == 2]
        return failed if len(failed) >= 2 else None

    failed = wait_for(failed_attempts, timeout=20, message="two failed payment attempts")
    assert any("payment gateway unavailable" in s.status.message for s in failed)


def test_a_collector_that_never_answers_does_not_hold_up_a_stop(tmp_path: Path) -> None:
    # It takes connections and answers nothing: a broker's SIGTERM took 10-20 s flushing
    # spans to it, and a --workers broker killed its workers for taking so long.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        with _exporting_to(f"http://127.0.0.1:{port}"), Cluster(tmp_path) as cluster:
            reserved = cluster.trips.Reserve(trips_pb2.ReserveTripRequest(), timeout=60)
            assert reserved.status == "success"  # its spans wait for the collector
            started = time.monotonic()
            assert cluster.broker.terminate() == 0
            assert time.monotonic() - started < 8
    finally:
        listener.close()
        for connection in held:
            connection.close()
