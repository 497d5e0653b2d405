"""Pure formatting helpers for ``brokerctl``'s human-readable output.

Nothing here talks to the network: every function takes admin API messages (or plain
values) and returns text, so the rendering is unit-testable without a broker.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import cast

import grpc
from durable.v1 import admin_pb2, invocation_pb2, journal_pb2

# google.rpc.Code numbering is the same as grpc.StatusCode's; index it by number once.
_CODE_NAMES: dict[int, str] = {code.value[0]: code.name for code in grpc.StatusCode}

# The operator-facing status vocabulary (DESIGN.md): lowercase, hyphenated.
STATUS_CHOICES: tuple[str, ...] = ("pending", "running", "suspended", "backing-off", "completed")

# Values longer than this are cut in table cells so one big payload cannot wreck the layout.
_CELL_VALUE_LIMIT = 64


def status_name(status: int) -> str:
    """Render an ``InvocationStatus`` as the CLI spells it: ``BACKING_OFF`` -> ``backing-off``."""
    try:
        name = invocation_pb2.InvocationStatus.Name(status)  # type: ignore[arg-type]
    except ValueError:
        # A newer broker may know statuses this client does not; show the number, not a crash.
        return f"unknown({status})"
    if name == "INVOCATION_STATUS_UNSPECIFIED":
        return "unspecified"
    return name.lower().replace("_", "-")


def parse_status(name: str) -> invocation_pb2.InvocationStatus:
    """Map a CLI status name (``backing-off``) to its ``InvocationStatus`` enum value."""
    number = invocation_pb2.InvocationStatus.Value(name.strip().upper().replace("-", "_"))
    # The generated stubs type Value() as plain int; the number is a valid enum value here.
    return cast(invocation_pb2.InvocationStatus, number)


def code_name(code: int) -> str:
    """Name a gRPC status code (``9`` -> ``FAILED_PRECONDITION``); unknown ones stay numeric."""
    return _CODE_NAMES.get(code, str(code))


def format_timestamp(ms: int) -> str:
    """Render milliseconds since the epoch as ISO 8601 UTC; ``0`` (unset in proto3) is ``-``."""
    if ms <= 0:
        return "-"
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_bytes(data: bytes, limit: int | None = None) -> str:
    """Show a payload as quoted text when it is printable UTF-8, else as hex.

    ``limit`` caps the rendered length (in characters of the payload) and notes the full size.
    """
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(ch.isprintable() or ch in "\t\n\r" for ch in text):
        truncated = limit is not None and len(text) > limit
        # json.dumps quotes and escapes newlines, so the value stays on one line.
        rendered = json.dumps(text[:limit] if truncated else text, ensure_ascii=False)
    else:
        hexed = data.hex()
        truncated = limit is not None and len(hexed) > limit
        rendered = "0x" + (hexed[:limit] if truncated else hexed)
    if truncated:
        rendered += f"... ({len(data)} bytes)"
    return rendered


def format_result(result: journal_pb2.Result, limit: int | None = None) -> str:
    """Render a journal ``Result``: ``value ...``, ``failure code NAME: message`` or ``empty``."""
    kind = result.WhichOneof("kind")
    if kind == "value":
        return "value " + format_bytes(result.value, limit)
    if kind == "failure":
        return format_failure(result.failure)
    if kind == "empty":
        return "empty"
    # A Result message with no case set: present but carrying nothing we can name.
    return "(unset)"


def format_failure(failure: journal_pb2.Failure) -> str:
    """Render a ``Failure`` as ``failure code NAME: message``."""
    return f"failure code {code_name(failure.code)}: {failure.message}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Lay out rows as left-aligned columns separated by two spaces, headers first.

    Cells are flattened to one line (whitespace runs become single spaces) so a multi-line
    error message cannot break the alignment. Trailing spaces are stripped from each line.
    """
    cells = [[_one_line(h) for h in headers]]
    cells += [[_one_line(c) for c in row] for row in rows]
    ncols = max(len(r) for r in cells)
    for row in cells:
        row.extend([""] * (ncols - len(row)))
    widths = [max(len(row[i]) for row in cells) for i in range(ncols)]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def format_deployments(resp: admin_pb2.ListDeploymentsResponse) -> str:
    """Table of registered deployments."""
    if not resp.deployments:
        return "no deployments registered"
    rows = [
        [d.id, d.uri, ", ".join(d.services) or "-", format_timestamp(d.created_at_ms)]
        for d in resp.deployments
    ]
    return format_table(["ID", "URI", "SERVICES", "CREATED"], rows)


def format_deployment(dep: admin_pb2.Deployment) -> str:
    """Confirmation printed after ``deployments register``."""
    services = ", ".join(dep.services) or "(none)"
    return f"registered deployment {dep.id} at {dep.uri}\nservices: {services}"


def format_services(resp: admin_pb2.ListServicesResponse) -> str:
    """Table of the services the ingress serves, with their handlers."""
    if not resp.services:
        return "no services registered"
    rows = []
    for svc in resp.services:
        handlers = ", ".join(h.name + (" (shared)" if h.shared else "") for h in svc.handlers)
        rows.append(
            [svc.name, svc.kind, svc.key_field or "-", svc.deployment_id or "-", handlers or "-"]
        )
    return format_table(["SERVICE", "KIND", "KEY FIELD", "DEPLOYMENT", "HANDLERS"], rows)


def format_target(inv: invocation_pb2.Invocation) -> str:
    """``service/method``, followed by the key for keyed services."""
    target = f"{inv.service}/{inv.method}"
    return f"{target} (key {inv.key})" if inv.key else target


def format_invocations(resp: admin_pb2.ListInvocationsResponse) -> str:
    """Table of invocations as listed by the broker (newest first)."""
    if not resp.invocations:
        return "no invocations found"
    rows = [
        [
            inv.id,
            status_name(inv.status),
            f"{inv.service}/{inv.method}",
            inv.key or "-",
            str(inv.attempts),
            format_timestamp(inv.created_at_ms),
            format_timestamp(inv.modified_at_ms),
            _truncate(inv.last_error, _CELL_VALUE_LIMIT) or "-",
        ]
        for inv in resp.invocations
    ]
    headers = ["ID", "STATUS", "TARGET", "KEY", "ATTEMPTS", "CREATED", "MODIFIED", "LAST ERROR"]
    return format_table(headers, rows)


def _truncate(text: str, limit: int) -> str:
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def entry_kind(entry: journal_pb2.JournalEntry) -> str:
    """The journal entry's command kind (its oneof case), or ``unknown`` if none is set."""
    return entry.WhichOneof("command") or "unknown"


def entry_details(entry: journal_pb2.JournalEntry) -> str:
    """One-line description of what a journal entry's command asked for."""
    kind = entry.WhichOneof("command")
    if kind == "input":
        cmd_in = entry.input
        details = f"request {len(cmd_in.request)} bytes"
        if cmd_in.headers:
            details += ", headers " + ", ".join(sorted(cmd_in.headers))
        return details
    if kind == "call":
        call = entry.call
        return f"{call.service}/{call.method} -> {call.invocation_id or '(not yet assigned)'}"
    if kind == "send":
        send = entry.send
        details = f"{send.service}/{send.method} -> {send.invocation_id or '(not yet assigned)'}"
        if send.invoke_at_ms:
            details += f" at {format_timestamp(send.invoke_at_ms)}"
        return details
    if kind == "run":
        return f"name {json.dumps(entry.run.name, ensure_ascii=False)}"
    if kind == "sleep":
        return f"wake up at {format_timestamp(entry.sleep.wake_up_at_ms)}"
    if kind == "get_state":
        return f"key {json.dumps(entry.get_state.key, ensure_ascii=False)}"
    if kind == "set_state":
        value = format_bytes(entry.set_state.value, _CELL_VALUE_LIMIT)
        return f"key {json.dumps(entry.set_state.key, ensure_ascii=False)} = {value}"
    if kind == "clear_state":
        return f"key {json.dumps(entry.clear_state.key, ensure_ascii=False)}"
    return ""


def format_describe(resp: admin_pb2.DescribeInvocationResponse) -> str:
    """Full human rendering of one invocation: its record, then its journal entry by entry."""
    inv = resp.invocation
    fields: list[tuple[str, str]] = [
        ("invocation", inv.id),
        ("status", status_name(inv.status)),
        ("target", format_target(inv)),
        ("deployment", inv.deployment_id or "-"),
        ("attempts", str(inv.attempts)),
        ("last error", inv.last_error or "-"),
        ("created", format_timestamp(inv.created_at_ms)),
        ("modified", format_timestamp(inv.modified_at_ms)),
        ("result", format_result(inv.result) if inv.HasField("result") else "-"),
    ]
    # Optional context, shown only when set so the common case stays short.
    if inv.idempotency_key:
        fields.append(("idempotency key", inv.idempotency_key))
    if inv.HasField("caller") and inv.caller.invocation_id:
        fields.append(("caller", f"{inv.caller.invocation_id} entry {inv.caller.entry_index}"))
    if inv.waiting_on:
        fields.append(("waiting on", "entries " + ", ".join(str(i) for i in inv.waiting_on)))
    if inv.next_retry_at_ms:
        fields.append(("next retry", format_timestamp(inv.next_retry_at_ms)))
    if inv.invoke_at_ms:
        fields.append(("invoke at", format_timestamp(inv.invoke_at_ms)))
    if inv.expires_at_ms:
        fields.append(("expires", format_timestamp(inv.expires_at_ms)))
    width = max(len(label) for label, _ in fields) + 2
    lines = [f"{label + ':':<{width}}{value}" for label, value in fields]

    lines.append("")
    count = len(resp.journal)
    lines.append(f"journal ({count} {'entry' if count == 1 else 'entries'}):")
    if resp.journal:
        rows = [
            [
                str(index),
                entry_kind(entry),
                entry_details(entry) or "-",
                format_result(entry.result, _CELL_VALUE_LIMIT) if entry.HasField("result") else "-",
            ]
            for index, entry in enumerate(resp.journal)
        ]
        table = format_table(["INDEX", "COMMAND", "DETAILS", "RESULT"], rows)
        lines.extend("  " + line for line in table.splitlines())
    return "\n".join(lines)
