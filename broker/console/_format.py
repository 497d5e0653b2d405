"""Small formatting helpers shared by the pages."""

from __future__ import annotations

import datetime

from durable.v1 import invocation_pb2

from ._html import Safe, h, link, url

Status = invocation_pb2.InvocationStatus
Invocation = invocation_pb2.Invocation

STATUS_NAMES = {
    Status.PENDING: "pending",
    Status.RUNNING: "running",
    Status.SUSPENDED: "suspended",
    Status.BACKING_OFF: "backing-off",
    Status.COMPLETED: "completed",
    Status.PAUSED: "paused",
}


def when(ms: int) -> str:
    """UTC time of day with milliseconds (the date too when it is not today)."""
    if not ms:
        return ""
    t = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    today = datetime.datetime.now(tz=datetime.UTC).date()
    text = t.strftime("%H:%M:%S.") + f"{t.microsecond // 1000:03d}"
    return text if t.date() == today else t.strftime("%Y-%m-%d ") + text


def duration(ms: int) -> str:
    """`850 ms`, `12.3 s`, `4 min 05 s`, `2 h 10 min`."""
    if ms < 0:
        return ""
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    if ms < 3_600_000:
        return f"{ms // 60_000} min {ms % 60_000 // 1000:02d} s"
    return f"{ms // 3_600_000} h {ms % 3_600_000 // 60_000:02d} min"


def state_of(record: Invocation) -> str:
    """pending, running, …, succeeded or failed."""
    if record.status == Status.COMPLETED:
        return "failed" if record.result.HasField("failure") else "succeeded"
    return STATUS_NAMES.get(record.status, "unknown")


def badge(record: Invocation) -> Safe:
    """The status as a coloured label (the text says it too)."""
    name = state_of(record)
    return h('<span class="badge s-{name}">{name}</span>', name=name)


def inv_link(invocation_id: str) -> Safe:
    """A link to an invocation's page."""
    return link(f"/invocations/{invocation_id}", invocation_id, class_="mono")


def key_link(service: str, key: str) -> Safe:
    """A link to a key's page (or nothing for unkeyed invocations)."""
    if not key:
        return Safe("")
    return link(url("/key", {"service": service, "key": key}), key, class_="mono")
