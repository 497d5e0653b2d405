"""The invocation list's filters: query parameters in, a ListInvocationsRequest out,
with a message a person can act on for each malformed one."""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping

from durable.v1 import admin_pb2, invocation_pb2

from ..admin_paging import MAX_LIST_WINDOW
from ._decode import CODE_NUMBERS

Status = invocation_pb2.InvocationStatus
PAGE_SIZE = 50
# The admin API pages by offset only within its first MAX_LIST_WINDOW matches.
LAST_PAGE = MAX_LIST_WINDOW // PAGE_SIZE
STATUSES: dict[str, tuple[int, int]] = {
    "pending": (Status.PENDING, admin_pb2.INVOCATION_OUTCOME_UNSPECIFIED),
    "queued": (Status.QUEUED, admin_pb2.INVOCATION_OUTCOME_UNSPECIFIED),
    "running": (Status.RUNNING, admin_pb2.INVOCATION_OUTCOME_UNSPECIFIED),
    "suspended": (Status.SUSPENDED, admin_pb2.INVOCATION_OUTCOME_UNSPECIFIED),
    "backing-off": (Status.BACKING_OFF, admin_pb2.INVOCATION_OUTCOME_UNSPECIFIED),
    "paused": (Status.PAUSED, admin_pb2.INVOCATION_OUTCOME_UNSPECIFIED),
    "completed": (Status.COMPLETED, admin_pb2.INVOCATION_OUTCOME_UNSPECIFIED),
    "succeeded": (Status.COMPLETED, admin_pb2.OUTCOME_SUCCEEDED),
    "failed": (Status.COMPLETED, admin_pb2.OUTCOME_FAILED),
}
FIELDS = ("service", "method", "key", "status", "code", "idempotency_key", "since", "until")
_RELATIVE = re.compile(r"(\d+)\s*(s|m|h|d)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def is_number(text: str) -> bool:
    """Whether `text` is a number in ASCII digits: `str.isdigit` takes "²" and "①",
    which `int` refuses."""
    return text.isascii() and text.isdigit()


def _time(text: str, now_ms: int) -> int:
    """ms since the epoch: `2026-11-29T13:05` (UTC, seconds optional) or `15m` ago."""
    relative = _RELATIVE.fullmatch(text)
    if relative:
        return now_ms - int(relative.group(1)) * _UNITS[relative.group(2)] * 1000
    t = datetime.datetime.fromisoformat(text)  # ValueError when malformed
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.UTC)
    return int(t.timestamp() * 1000)


def parse(
    query: Mapping[str, str], now_ms: int
) -> tuple[admin_pb2.ListInvocationsRequest, int, list[str]]:
    """(request, page number from 1, errors). With errors the request must not be sent."""
    errors: list[str] = []
    values = {f: query.get(f, "").strip() for f in FIELDS}
    request = admin_pb2.ListInvocationsRequest(
        service=values["service"],
        method=values["method"],
        key=query.get("key", ""),
        idempotency_key=values["idempotency_key"],
        limit=PAGE_SIZE,
        without_results=True,  # the list shows none, and they can be megabytes each
    )
    status = values["status"].lower()
    code = values["code"].upper()
    if code and not status:
        status = "failed"  # a failure code only makes sense for failed invocations
    if status:
        if status not in STATUSES:
            errors.append(f"unknown status {status!r}: choose one of {', '.join(STATUSES)}")
        else:
            request.status, request.outcome = STATUSES[status]  # type: ignore[assignment]
    if code:
        number = CODE_NUMBERS.get(code)
        if number is None and is_number(code) and 0 < int(code) <= 16:
            number = int(code)
        if not number:
            errors.append(
                f"unknown failure code {values['code']!r}: a gRPC code such as "
                "INVALID_ARGUMENT, or its number 1-16"
            )
        elif status != "failed":
            errors.append("a failure code goes with the status 'failed'")
        else:
            request.failure_code = number
    for name, field in (("since", "created_after_ms"), ("until", "created_before_ms")):
        if values[name]:
            try:
                setattr(request, field, _time(values[name], now_ms))
            except (ValueError, OverflowError):
                errors.append(
                    f"{name}: {values[name]!r} is not a time; write 2026-11-29T13:05 (UTC) "
                    "or a span back from now such as 15m, 2h, 1d"
                )
    page = 1
    raw_page = query.get("page", "").strip()
    if raw_page:
        if not is_number(raw_page) or not 1 <= int(raw_page) <= 1_000_000:
            errors.append(f"page {raw_page!r} is not a page number (1, 2, …)")
        elif int(raw_page) > LAST_PAGE:
            errors.append(
                f"page {raw_page} is past the last page listed ({LAST_PAGE}): pages reach "
                f"the newest {MAX_LIST_WINDOW:,} matches only; narrow the filters (an "
                "earlier 'until', say) to see older ones"
            )
        else:
            page = int(raw_page)
    request.offset = (page - 1) * PAGE_SIZE
    return request, page, errors
