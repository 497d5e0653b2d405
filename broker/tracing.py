"""The broker's spans: one trace per ingress call.

    ingress trips.Trips/Reserve                      (continues the caller's traceparent)
      invocation trips.Trips/Reserve                 (service, method, key, invocation id)
        attempt 1                                     (ends with the error when it fails)
          call flights.Flights/Reserve               (one span per journal step)
            invocation flights.Flights/Reserve
              attempt 1
                handler flights.Flights/Reserve      (in the service process)
          run "notify success"
        attempt 2 ...                                 (after a suspension or a retry)

Every function here does nothing unless `durable.tracing.configure` enabled tracing.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from durable import tracing as otel

from .core.model import Entry, Live, Result

# OpenTelemetry is imported only once tracing is on (every function here checks first, or
# has a span only then): with it off (the default) the broker does not load it at all.
if TYPE_CHECKING:
    from opentelemetry.trace import Tracer


def _tracer() -> Tracer:
    return otel.tracer("durable.broker")


# W3C trace context: version, trace id, parent id, flags (lowercase hex; ids not all
# zero, version ff never used). Later versions may append fields after a dash.
_VERSION_00_LENGTH = 55
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-.*)?")


def valid_traceparent(value: str) -> str:
    """`value` if it is a W3C traceparent, else "": an invalid one is ignored, as the
    spec says, rather than stored on the invocation and passed to every endpoint. Of a
    later version only the fields this one knows are kept (the spec's rule), not
    whatever follows them."""
    match = _TRACEPARENT.fullmatch(value)
    if match is None or match[1] == "ff" or (match[1] == "00" and match[4]):
        return ""
    if set(match[2]) == {"0"} or set(match[3]) == {"0"}:
        return ""
    return value[:_VERSION_00_LENGTH]


@contextlib.contextmanager
def ingress(service: str, method: str, traceparent: str) -> Iterator[str]:
    """A span around an ingress call; yields the traceparent its invocation continues."""
    if not otel.enabled():
        yield valid_traceparent(traceparent)
        return
    from opentelemetry.trace import SpanKind

    with _tracer().start_as_current_span(
        f"ingress {service}/{method}",
        context=otel.context_from(traceparent),
        kind=SpanKind.SERVER,
        attributes={"rpc.service": service, "rpc.method": method},
    ) as span:
        yield otel.traceparent(span)


def start_invocation(live: Live, parent: str) -> None:
    """Opens the invocation's span under `parent` (a traceparent)."""
    if not otel.enabled():
        return
    r = live.record
    span = _tracer().start_span(
        f"invocation {r.service}/{r.method}",
        context=otel.context_from(parent),
        attributes={
            "durable.invocation_id": r.id,
            "rpc.service": r.service,
            "rpc.method": r.method,
            "durable.key": r.key,
        },
    )
    live.span = span
    r.traceparent = otel.traceparent(span)


def start_attempt(live: Live) -> str:
    """Opens a span for the attempt about to start; returns the traceparent to send."""
    if not otel.enabled():
        return live.record.traceparent
    r = live.record
    if live.span is not None and r.attempts > 1:
        live.span.add_event("resumed", {"attempt": r.attempts})
    span = _tracer().start_span(
        f"attempt {r.attempts}",
        context=otel.context_from(r.traceparent),
        attributes={
            "durable.invocation_id": r.id,
            "durable.attempt": r.attempts,
            "durable.deployment_id": r.deployment_id,
        },
    )
    live.attempt_span = span
    return otel.traceparent(span)


def end_attempt(
    live: Live, error: str | None = None, suspended_on: list[int] | None = None
) -> None:
    """Closes the attempt's span, with the error or the suspension that ended it."""
    span, live.attempt_span = live.attempt_span, None
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    if error:
        span.set_status(Status(StatusCode.ERROR, error))
        span.add_event("exception", {"exception.message": error})
    if suspended_on is not None:
        span.add_event("suspended", {"durable.waiting_on": suspended_on})
        if live.span is not None:
            live.span.add_event("suspended", {"durable.waiting_on": suspended_on})
    span.end()


def step(live: Live, index: int, entry: Entry) -> str:
    """A span for a journaled step; returns its traceparent (a callee's parent)."""
    if not otel.enabled():
        return live.record.traceparent
    kind = entry.WhichOneof("command") or "?"
    detail = ""
    if kind in ("call", "send"):
        c = getattr(entry, kind)
        detail = f" {c.service}/{c.method}"
    elif kind == "run":
        detail = f" {entry.run.name!r}"
    elif kind in ("get_state", "set_state", "clear_state"):
        detail = f" {getattr(entry, kind).key!r}"
    from opentelemetry import trace

    parent = live.attempt_span or live.span
    span = _tracer().start_span(
        f"{kind}{detail}",
        context=trace.set_span_in_context(parent) if parent is not None else None,
        attributes={"durable.journal.index": index, "durable.journal.command": kind},
    )
    span.end()
    return otel.traceparent(span)


def end_invocation(live: Live, result: Result) -> None:
    """Closes the invocation's span with its outcome."""
    span, live.span = live.span, None
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    if result.HasField("failure"):
        span.set_status(Status(StatusCode.ERROR, result.failure.message))
        span.set_attribute("rpc.grpc.status_code", result.failure.code)
    span.end()
