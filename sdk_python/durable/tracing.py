"""OpenTelemetry set-up shared by the broker and service endpoints.

Tracing is on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (e.g. Jaeger's OTLP port,
`http://127.0.0.1:4317`): spans are exported over OTLP gRPC in batches. Otherwise
nothing is configured and every tracing call in the broker and SDK is skipped.

A handler's own spans need nothing special: it runs inside its attempt's span, so
`opentelemetry.trace.get_tracer(__name__).start_as_current_span(...)` nests under it.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import TYPE_CHECKING

# OpenTelemetry is imported only once tracing is on: with it off (the default) no process
# should pay for loading it. Callers check `enabled()` before anything else here.
if TYPE_CHECKING:
    from opentelemetry import context, trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_provider: object | None = None
log = logging.getLogger("durable.tracing")
# How long `shutdown` waits for buffered spans to reach the collector.
SHUTDOWN_TIMEOUT_S = 2.0


@functools.cache
def _propagator() -> TraceContextTextMapPropagator:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


@functools.cache
def tracer(name: str) -> trace.Tracer:
    """The tracer named `name` (the broker's, the SDK's), made on first use, with tracing
    on: OpenTelemetry is imported then, not before."""
    from opentelemetry import trace

    return trace.get_tracer(name)


def enabled() -> bool:
    """Whether spans are being exported."""
    return _provider is not None


def configure(service_name: str) -> bool:
    """Installs an OTLP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

    Returns:
        Whether tracing is now enabled.
    """
    global _provider
    if _provider is not None:
        return True
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)}
        ),
        # `shutdown` does it, with a bound; at exit it would wait for the collector again.
        shutdown_on_exit=False,
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    return True


def shutdown(timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
    """Flushes spans still buffered (call before the process exits), waiting at most
    `timeout` seconds: a collector that takes connections and never answers made every
    stop take 10-20 s, and a `--workers` broker killed its workers for it."""
    if _provider is None:
        return
    provider = _provider
    done = threading.Event()

    def flush() -> None:
        try:
            provider.shutdown()  # type: ignore[attr-defined]
        finally:
            done.set()

    threading.Thread(target=flush, name="otel-shutdown", daemon=True).start()
    if not done.wait(timeout):
        log.warning(
            "spans not exported within %.0f s (is the OTLP collector at %s answering?): dropped",
            timeout,
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "?"),
        )


def traceparent(span: trace.Span) -> str:
    """The W3C `traceparent` of a span, to carry its context across processes."""
    from opentelemetry import trace

    carrier: dict[str, str] = {}
    _propagator().inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


def context_from(traceparent_header: str) -> context.Context | None:
    """The context a `traceparent` header names, or None when empty or invalid."""
    if not traceparent_header:
        return None
    from opentelemetry import trace

    ctx = _propagator().extract({"traceparent": traceparent_header})
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx
