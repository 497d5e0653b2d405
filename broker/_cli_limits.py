"""``brokerctl services limit`` and ``services limits``: run-time concurrency and rate
limits of a service or handler."""

from __future__ import annotations

import argparse
from typing import Any

from durable.v1 import admin_pb2

from broker import _cli_format as fmt


def split_target(target: str) -> tuple[str, str]:
    """An argparse type: ``SERVICE[/METHOD]`` as (service, method).

    A ``/`` with nothing after it is refused: taken as no method, ``Svc/`` would set a
    service-wide limit where one handler's was meant.
    """
    service, slash, method = target.partition("/")
    if not service:
        where = " before /" if slash else ""
        raise argparse.ArgumentTypeError(
            f"expected SERVICE or SERVICE/METHOD, e.g. trips.Trips/Reserve; the service"
            f"{where} is empty in {target!r}"
        )
    if slash and not method:
        raise argparse.ArgumentTypeError(
            f"expected SERVICE or SERVICE/METHOD, e.g. trips.Trips/Reserve; the method "
            f"after / is empty in {target!r}"
        )
    return service, method


def format_scope(s: admin_pb2.ScopeLimits) -> str:
    """One line per scope: what is in force, where from, and how busy it is."""
    target = f"{s.service}/{s.method}" if s.method else s.service
    concurrency = str(s.concurrency) if s.concurrency else "unlimited"
    rate = f"{s.rate:g}/s" if s.rate else "unlimited"
    source = f" ({s.source})" if s.source else ""
    return (
        f"{target}: concurrency {concurrency}, rate {rate}{source}; "
        f"{s.running} running, {s.queued} queued"
    )


def set_limits(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[Any, str]:
    """Sets or clears a scope's limits. A flag not given keeps the limit in force: the
    admin API replaces both, and `--rate 10` after `--concurrency 5` silently dropped
    the concurrency limit."""
    service, method = args.target
    concurrency, rate = args.concurrency, args.rate
    if not args.clear and (concurrency is None) != (rate is None):
        current = _in_force(stub, service, method, timeout)
        if current is not None:
            concurrency = current.concurrency if concurrency is None else concurrency
            rate = current.rate if rate is None else rate
    req = admin_pb2.SetLimitsRequest(
        service=service,
        method=method,
        concurrency=concurrency or 0,
        rate=rate or 0.0,
        clear=args.clear,
    )
    resp: admin_pb2.SetLimitsResponse = stub.SetLimits(req, timeout=timeout)
    return resp, format_scope(resp.limits)


def _in_force(stub: Any, service: str, method: str, timeout: float) -> admin_pb2.ScopeLimits | None:
    """The scope's limits in force (run-time or declared), if it has any."""
    resp: admin_pb2.GetLimitsResponse = stub.GetLimits(
        admin_pb2.GetLimitsRequest(service=service), timeout=timeout
    )
    return next((s for s in resp.limits if s.service == service and s.method == method), None)


def get_limits(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[Any, str]:
    """Lists the limits in force."""
    req = admin_pb2.GetLimitsRequest(service=args.service or "")
    resp: admin_pb2.GetLimitsResponse = stub.GetLimits(req, timeout=timeout)
    if args.service and not resp.limits:
        # The admin API lists no scopes for a service it does not serve, just as for one
        # without limits; `services limit` on it is NOT_FOUND, and so is this.
        services: admin_pb2.ListServicesResponse = stub.ListServices(
            admin_pb2.ListServicesRequest(), timeout=timeout
        )
        if fmt.find_service(services, args.service) is None:
            raise fmt.CommandError("NOT_FOUND", fmt.unknown_service_message(services, args.service))
    lines = [format_scope(s) for s in resp.limits] or ["no limits set"]
    return resp, "\n".join(lines)
