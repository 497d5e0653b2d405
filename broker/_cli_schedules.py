"""``brokerctl schedules ...``: the handlers and the human output of the schedule verbs
(their table rows live in ``broker.cli``)."""

from __future__ import annotations

import argparse
import re
from typing import Any

from durable.v1 import admin_pb2, invocation_pb2, storage_pb2

from broker import _cli_format as fmt
from broker.core import schedule_times as times

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")


def duration_ms(text: str) -> int:
    """An argparse type for ``--every``: ``30s``, ``5m``, ``1h30m``, ``1500ms`` as
    milliseconds, within the broker's bounds on an interval (1s to 366d)."""
    parts = _DURATION.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 5m, 1h30m)")
    total = sum(int(n) * _UNITS_MS[u] for n, u in parts)
    # Checked here too: an interval past int64 could not even be put in the request.
    if total < times.MIN_EVERY_MS:
        raise argparse.ArgumentTypeError(
            f"the interval must be at least {times.MIN_EVERY_MS // 1000}s, not {text!r}"
        )
    if total > times.MAX_EVERY_MS:
        raise argparse.ArgumentTypeError(
            f"the interval must be at most {times.MAX_EVERY_MS // 86_400_000}d, not {text!r}; "
            "for rarer runs use --cron"
        )
    return total


def target(text: str) -> tuple[str, str]:
    """An argparse type: ``SERVICE/METHOD``."""
    service, _, method = text.rpartition("/")
    if not service or not method:
        raise argparse.ArgumentTypeError(
            f"expected SERVICE/METHOD, e.g. playground.Counter/Add, not {text!r}"
        )
    return service, method


def create(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[Any, str]:
    """``schedules create``."""
    service, method = args.target
    req = admin_pb2.CreateScheduleRequest(
        name=args.name,
        service=service,
        method=method,
        key=args.key or "",
        request_json=args.request.decode(),
        cron=args.cron or "",
        timezone=args.timezone or "",
        every_ms=args.every or 0,
        overlap=args.overlap,
        catch_up=args.catch_up,
    )
    resp: admin_pb2.ScheduleInfo = stub.CreateSchedule(req, timeout=timeout)
    return resp, "created " + format_info(resp)


def list_(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[Any, str]:
    """``schedules list``: one page (`broker.cli` prints how to get the next)."""
    resp: admin_pb2.ListSchedulesResponse = stub.ListSchedules(
        admin_pb2.ListSchedulesRequest(limit=args.limit, page_token=args.page_token),
        timeout=timeout,
    )
    if not resp.schedules:
        return resp, "no schedules"
    rows = [
        (
            i.schedule.name,
            f"{i.schedule.service}/{i.schedule.method}",
            _when(i.schedule),
            "paused" if i.schedule.paused else "active",
            _timestamp(i.next_fires_ms[0]) if i.next_fires_ms else "-",
            str(i.schedule.fired),
        )
        for i in resp.schedules
    ]
    header = ("NAME", "TARGET", "WHEN", "STATE", "NEXT", "FIRED")
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return resp, "\n".join(lines)


def action(method: str, verb: str) -> Any:
    """A handler for ``describe``, ``pause``, ``resume`` or ``trigger``."""

    def handler(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[Any, str]:
        req = admin_pb2.ScheduleRequest(name=args.name)
        resp: admin_pb2.ScheduleInfo = getattr(stub, method)(req, timeout=timeout)
        prefix = f"{verb} " if verb else ""
        return resp, prefix + format_info(resp)

    return handler


def delete(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[Any, str]:
    """``schedules delete``."""
    stub.DeleteSchedule(admin_pb2.ScheduleRequest(name=args.name), timeout=timeout)
    return {"deleted": args.name}, f"deleted schedule {args.name}"


def _timestamp(ms: int) -> str:
    # A slot past year 9999 (of an interval stored before intervals were bounded) has no
    # datetime: the number still shows, and the other schedules with it.
    try:
        return fmt.format_timestamp(ms)
    except (ValueError, OverflowError, OSError):
        return f"{ms} ms after the epoch"


def _when(s: storage_pb2.ScheduleRecord) -> str:
    if s.cron:
        return f"cron {s.cron!r}" + (f" {s.timezone}" if s.timezone else " UTC")
    return f"every {s.every_ms} ms"


def format_info(info: admin_pb2.ScheduleInfo) -> str:
    """One schedule, for people."""
    s = info.schedule
    lines = [
        f"schedule {s.name}: {s.service}/{s.method}" + (f" key {s.key!r}" if s.key else ""),
        f"  when:      {_when(s)}",
        f"  request:   {info.request_json or '(' + str(len(s.request)) + ' bytes)'}",
        f"  policies:  overlap {s.overlap}, catch-up {s.catch_up}",
        f"  state:     {'paused' if s.paused else 'active'}; fired {s.fired}, skipped {s.skipped}",
        "  next:      " + (", ".join(_timestamp(t) for t in info.next_fires_ms) or "- (paused)"),
    ]
    if s.last_invocation_id:
        status = invocation_pb2.InvocationStatus.Name(info.last_status)
        outcome = admin_pb2.InvocationOutcome.Name(info.last_outcome)
        lines.append(
            f"  last:      {_timestamp(s.last_fire_ms)} {s.last_invocation_id} {status} {outcome}"
        )
    if s.queued_fire_ms:
        lines.append(f"  queued:    {_timestamp(s.queued_fire_ms)}")
    return "\n".join(lines)
