"""The admin API's limits: setting them at run time and reading what is in force.

Status codes: NOT_FOUND for a service or handler the broker does not serve;
INVALID_ARGUMENT for a negative, non-finite or too slow rate (below `MIN_RATE`), or a clear
that also sets values.
"""

from __future__ import annotations

from durable.v1 import admin_pb2

from . import registry as reg
from .core.limits import Limit, rate_problem
from .core.partition import Partition


class LimitError(Exception):
    """A request the broker refuses; `code` names the gRPC status (NOT_FOUND or
    INVALID_ARGUMENT)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check(registry: reg.Registry, request: admin_pb2.SetLimitsRequest) -> Limit | None:
    """The limit a SetLimits request asks for (None: clear it).

    Raises:
        LimitError: an unknown target or values that cannot be limits.
    """
    service = registry.service(request.service)
    if service is None:
        raise LimitError("NOT_FOUND", f"no service {request.service!r} is registered")
    if request.method and request.method not in service.methods:
        raise LimitError(
            "NOT_FOUND",
            f"service {request.service} has no handler {request.method!r} "
            f"(it has: {', '.join(sorted(service.methods))})",
        )
    if request.clear:
        if request.concurrency or request.rate:
            raise LimitError("INVALID_ARGUMENT", "--clear takes no --concurrency or --rate")
        return None
    problem = rate_problem(request.rate)
    if problem is not None:
        raise LimitError("INVALID_ARGUMENT", problem)
    if not request.concurrency and not request.rate:
        raise LimitError(
            "INVALID_ARGUMENT", "give --concurrency N and/or --rate R (or --clear to remove limits)"
        )
    return Limit(request.concurrency, request.rate)


def scope_view(p: Partition, service: str, method: str) -> admin_pb2.ScopeLimits:
    """What is in force for one scope, and how many run and wait under it."""
    limiter = p.limiter
    runtime, declared = limiter.configured([service]).get((service, method), (None, None))
    limit = limiter.limit((service, method))
    waiting = limiter.queued(service)
    return admin_pb2.ScopeLimits(
        service=service,
        method=method,
        concurrency=limit.concurrency,
        rate=limit.rate,
        source="runtime" if runtime else "proto" if declared else "",
        running=limiter.running((service, method)),
        queued=sum(1 for w in waiting if not method or w.method == method),
    )


def view(p: Partition, service: str = "") -> admin_pb2.GetLimitsResponse:
    """Every scope with a limit (or with invocations waiting), optionally of one service."""
    scopes = set(p.limiter.configured(s.name for s in p.registry.services()))
    for name in p.limiter.services_waiting():
        scopes.add((name, ""))
    return admin_pb2.GetLimitsResponse(
        limits=[scope_view(p, s, m) for s, m in sorted(scopes) if not service or s == service]
    )
