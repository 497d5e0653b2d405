"""Pure formatting helpers for ``brokerctl``'s human-readable output.

Nothing here talks to the network: every function takes admin API messages (or plain
values) and returns text, so the rendering is unit-testable without a broker.
"""

from __future__ import annotations

import base64
import difflib
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from durable.v1 import admin_pb2, invocation_pb2, journal_pb2
from google.protobuf import json_format
from google.protobuf.message import DecodeError

# google.rpc.Code numbering is the same as grpc.StatusCode's; index it by number once.
_CODE_NAMES: dict[int, str] = {code.value[0]: code.name for code in grpc.StatusCode}

# The operator-facing status vocabulary (DESIGN.md): lowercase, hyphenated.
STATUS_CHOICES: tuple[str, ...] = (
    "pending",
    "queued",
    "running",
    "suspended",
    "backing-off",
    "paused",
    "completed",
)

# Refinements of `completed` that `invocations list --status` also accepts: how it ended.
OUTCOME_CHOICES: tuple[str, ...] = ("succeeded", "failed")

# Journal commands whose values (results, or the value they carry) are JSON written by the
# SDK: side effects, state, awakeables and durable promises. Calls, attach/get_output, the
# input and the output carry serialized protobuf messages instead, which are never
# reinterpreted as JSON (some protobuf encodings happen to parse as JSON, e.g. b"85").
JSON_VALUED_COMMANDS: frozenset[str] = frozenset(
    {
        "run",
        "get_state",
        "set_state",
        "awakeable",
        "complete_awakeable",
        "get_promise",
        "peek_promise",
        "complete_promise",
    }
)

# Values longer than this are cut in table cells so one big payload cannot wreck the layout.
_CELL_VALUE_LIMIT = 64
# The most characters `describe` shows of the invocation's result (--json has it whole).
_RESULT_LIMIT = 4096

# Control characters (C0, DEL, C1): written raw, user-supplied text (an object key, a
# state name, an error message) could move the cursor, clear or recolour the operator's
# terminal, or forge output lines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The ones that can still appear raw in JSON text: json.dumps escapes C0 but not DEL and
# C1, and a strict parser accepts them raw inside strings.
_JSON_RAW_CONTROL = re.compile(r"[\x7f-\x9f]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# What a table cell or a prose message is flattened on: whitespace runs, line breaks included.
_WHITESPACE_RUN = re.compile(r"\s+")


def escape_control(text: str, keep: str = "") -> str:
    """``text`` with every control character (C0, DEL, C1) except those in ``keep`` shown
    as an escape: ``\\n``, ``\\r``, ``\\t``, else ``\\xHH`` (``\\x1b`` for ESC).

    Backslashes are left as they are, so JSON text and messages that already quote
    values (``'a\\nb'``) read unchanged.
    """

    def escaped(match: re.Match[str]) -> str:
        ch = match.group()
        if ch in keep:
            return ch
        return _NAMED_ESCAPES.get(ch, f"\\x{ord(ch):02x}")

    return _CONTROL.sub(escaped, text)


def escape_json_controls(text: str) -> str:
    """JSON text with raw DEL and C1 characters written as ``\\u00XX`` escapes.

    They can only occur inside JSON strings, where the escape means the same character:
    the text stays valid JSON with the same values, and prints safely on a terminal.
    """
    return _JSON_RAW_CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class CommandError(Exception):
    """What was asked for does not exist or cannot be done; reported like a broker error.

    Args:
        code: A gRPC status code name for the message, e.g. ``NOT_FOUND``.
        message: What went wrong.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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


def parse_status(name: str) -> invocation_pb2.InvocationStatus.ValueType:
    """Map a CLI status name (``backing-off``) to its ``InvocationStatus`` enum value."""
    return invocation_pb2.InvocationStatus.Value(name.strip().upper().replace("-", "_"))


def parse_status_filter(
    name: str,
) -> tuple[invocation_pb2.InvocationStatus.ValueType, admin_pb2.InvocationOutcome.ValueType]:
    """The (status, outcome) filter a CLI ``--status`` means: ``failed`` is completed with a
    failure, ``succeeded`` completed with a response, the rest a status of any outcome."""
    cleaned = name.strip().lower()
    if cleaned == "succeeded":
        return invocation_pb2.COMPLETED, admin_pb2.OUTCOME_SUCCEEDED
    if cleaned == "failed":
        return invocation_pb2.COMPLETED, admin_pb2.OUTCOME_FAILED
    return parse_status(cleaned), admin_pb2.INVOCATION_OUTCOME_UNSPECIFIED


def outcome_of(inv: invocation_pb2.Invocation) -> tuple[str, str]:
    """How a completed invocation ended: ``("succeeded", "")``, ``("failed", CODE_NAME)``,
    or ``("", "")`` while it has no result."""
    kind = inv.result.WhichOneof("kind") if inv.HasField("result") else None
    if kind is None:
        return "", ""
    if kind == "failure":
        return "failed", code_name(inv.result.failure.code)
    return "succeeded", ""


def format_outcome(inv: invocation_pb2.Invocation) -> str:
    """``succeeded``, ``failed NOT_FOUND``, or ``-`` while the invocation has no result."""
    outcome, code = outcome_of(inv)
    return f"{outcome} {code}".strip() or "-"


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
    With a limit only the bytes it can show are looked at: a 60 MiB payload is shown in
    microseconds, as text when what is shown is text.
    """
    # A character is at most 4 bytes of UTF-8: what `limit` characters can come from.
    shown = data if limit is None or len(data) <= 4 * limit + 4 else data[: 4 * limit + 4]
    text = _utf8_prefix(shown, whole=shown is data)
    if text is not None and all(ch.isprintable() or ch in "\t\n\r" for ch in text):
        truncated = limit is not None and (len(text) > limit or shown is not data)
        # json.dumps quotes and escapes newlines, so the value stays on one line.
        rendered = json.dumps(text[:limit] if truncated else text, ensure_ascii=False)
    else:
        hexed = shown[: limit // 2 + 1].hex() if limit is not None else data.hex()
        truncated = limit is not None and len(data) * 2 > limit
        rendered = "0x" + (hexed[:limit] if truncated else hexed)
    if truncated:
        rendered += f"... ({len(data)} bytes)"
    return rendered


def _utf8_prefix(data: bytes, whole: bool) -> str | None:
    """`data` decoded, or None when it is not UTF-8; a cut (not `whole`) may end inside
    a character, which is dropped."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if not whole and e.start >= len(data) - 3 and e.reason == "unexpected end of data":
            return data[: e.start].decode("utf-8")
        return None


def _reject_constant(name: str) -> Any:
    # Python's json module accepts NaN and Infinity; JSON does not, and neither should we.
    raise ValueError(f"{name} is not valid JSON")


def _finite_number(text: str) -> float:
    # "1e400" is JSON, but Python reads it as infinity, which JSON has no way to say:
    # a handler would get inf, and write back "Infinity", which is not JSON.
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text} is too large to read (it would be infinity)")
    return number


def parse_json(text: str | bytes) -> Any:
    """Parse strict JSON (no ``NaN``/``Infinity``, and no number too large for a float);
    raise ``ValueError`` if it is not JSON.

    ``UnicodeDecodeError`` (bytes that are not UTF-8) is a ``ValueError`` too.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_number)


def json_text(data: bytes) -> str | None:
    """The payload as one line of JSON text if it is valid UTF-8 JSON, else ``None``.

    Single-line JSON is shown as written (so numbers keep their spelling); JSON spread over
    several lines is re-serialized compactly.
    """
    try:
        value = parse_json(data)
    except ValueError:
        return None
    text = data.decode("utf-8").strip()
    if "\n" in text or "\r" in text or "\t" in text:
        text = json.dumps(value, ensure_ascii=False)
    return escape_json_controls(text)


def format_json_bytes(data: bytes, limit: int | None = None) -> str:
    """Show a payload as JSON text when it is valid UTF-8 JSON, else as ``format_bytes`` does.

    ``limit`` caps the rendered length and notes the full size, as in ``format_bytes``.
    """
    text = json_text(data)
    if text is None:
        return format_bytes(data, limit)
    if limit is not None and len(text) > limit:
        return f"{text[:limit]}... ({len(data)} bytes)"
    return text


def format_result(
    result: journal_pb2.Result, limit: int | None = None, json_value: bool = False
) -> str:
    """Render a journal ``Result``: ``value ...``, ``failure code NAME: message`` or ``empty``.

    With ``json_value`` a value that is valid JSON is shown as JSON text (``value 42``,
    ``value {"ok": true}``); otherwise values are shown as ``format_bytes`` does.
    """
    kind = result.WhichOneof("kind")
    if kind == "value":
        render = format_json_bytes if json_value else format_bytes
        return "value " + render(result.value, limit)
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
    error message cannot break the alignment, and any other control character is shown
    escaped (``escape_control``). Cells holding names or keys, where a newline is part of
    the value, are to be escaped by the caller first. Trailing spaces are stripped from
    each line.
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
    return escape_control(_WHITESPACE_RUN.sub(" ", text).strip())


def format_deployments(resp: admin_pb2.ListDeploymentsResponse) -> str:
    """Table of registered deployments."""
    if not resp.deployments:
        return "no deployments registered"
    rows = [
        [
            escape_control(d.id),
            escape_control(d.uri),
            d.mode or "-",
            str(d.in_flight),
            escape_control(", ".join(d.services)) or "-",
            format_timestamp(d.created_at_ms),
        ]
        for d in resp.deployments
    ]
    return format_table(["ID", "URI", "MODE", "IN FLIGHT", "SERVICES", "CREATED"], rows)


def format_removed_deployment(deployment_id: str, in_flight: int) -> str:
    """Confirmation printed after ``deployments remove``."""
    line = f"removed deployment {deployment_id}"
    if in_flight:
        line += (
            f" ({in_flight} invocation{'s' if in_flight != 1 else ''} still in flight on it: "
            "their attempts fail and back off until its URI is registered again, which "
            "gives the endpoint this id back and resumes them there)"
        )
    return line


def format_deployment(dep: admin_pb2.Deployment) -> str:
    """Confirmation printed after ``deployments register``."""
    services = ", ".join(dep.services) or "(none)"
    text = f"registered deployment {dep.id} at {dep.uri}\nservices: {services}"
    if dep.mode:
        text += f"\nmode: {dep.mode}"
    return text


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


def find_service(resp: admin_pb2.ListServicesResponse, name: str) -> admin_pb2.Service | None:
    """The service called ``name`` (its full name, e.g. ``trips.Trips``), if registered."""
    return next((svc for svc in resp.services if svc.name == name), None)


def unknown_service_message(resp: admin_pb2.ListServicesResponse, name: str) -> str:
    """What to say of a service ``name`` that is not registered, with the names it may
    have meant."""
    message = f"no service {name!r} is registered"
    suggestions = suggest_services(resp, name)
    if suggestions:
        message += "; did you mean " + " or ".join(suggestions) + "?"
    return message


def suggest_services(resp: admin_pb2.ListServicesResponse, name: str) -> list[str]:
    """Registered service names ``name`` may have meant: ``Counter`` -> ``playground.Counter``.

    Compares the part after the package (case-insensitively), then whole names closely.
    """
    names = [svc.name for svc in resp.services]
    by_short: dict[str, list[str]] = {}
    for full in names:
        by_short.setdefault(full.rpartition(".")[2].lower(), []).append(full)
    short = name.rpartition(".")[2].lower()
    found = list(by_short.get(short, []))
    for close in difflib.get_close_matches(short, list(by_short), n=3, cutoff=0.75):
        found += by_short[close]
    found += difflib.get_close_matches(name, names, n=3, cutoff=0.85)
    return list(dict.fromkeys(found))


def format_service(svc: admin_pb2.Service, deployment_uri: str = "") -> str:
    """Full human rendering of one service: its kind, deployment, key and handlers."""
    deployment = svc.deployment_id or "-"
    if deployment_uri:
        deployment += f" ({deployment_uri})"
    fields = [
        ("service", svc.name),
        ("kind", svc.kind or "-"),
        ("deployment", deployment),
        ("key field", svc.key_field or "-"),
    ]
    width = max(len(label) for label, _ in fields) + 2
    lines = [f"{label + ':':<{width}}{_field_value(value, width)}" for label, value in fields]
    lines.append("")
    count = len(svc.handlers)
    lines.append(f"handlers ({count}):")
    if svc.handlers:
        rows = [
            [h.name, h.input_type or "-", h.output_type or "-", "shared" if h.shared else "-"]
            for h in svc.handlers
        ]
        table = format_table(["HANDLER", "INPUT", "OUTPUT", "SHARED"], rows)
        lines.extend("  " + line for line in table.splitlines())
    return "\n".join(lines)


def format_target(inv: invocation_pb2.Invocation) -> str:
    """``service/method``, followed by the key for keyed services (control characters
    escaped: a key is any string a caller sent)."""
    target = escape_control(f"{inv.service}/{inv.method}")
    return f"{target} (key {escape_control(inv.key)})" if inv.key else target


def format_invocations(resp: admin_pb2.ListInvocationsResponse) -> str:
    """Table of invocations as listed by the broker (newest first)."""
    if not resp.invocations:
        return "no invocations found"
    # Ids, targets and keys are escaped whole, newlines included: flattened to a space, a
    # key "a\nb" would read as the different key "a b".
    rows = [
        [
            escape_control(inv.id),
            status_name(inv.status),
            format_outcome(inv),
            escape_control(f"{inv.service}/{inv.method}"),
            escape_control(inv.key) or "-",
            str(inv.attempts),
            format_timestamp(inv.created_at_ms),
            format_timestamp(inv.modified_at_ms),
            _truncate(inv.last_error, _CELL_VALUE_LIMIT) or "-",
        ]
        for inv in resp.invocations
    ]
    headers = [
        "ID",
        "STATUS",
        "OUTCOME",
        "TARGET",
        "KEY",
        "ATTEMPTS",
        "CREATED",
        "MODIFIED",
        "LAST ERROR",
    ]
    return format_table(headers, rows)


def invocations_to_json(resp: admin_pb2.ListInvocationsResponse) -> dict[str, Any]:
    """``invocations list --json``: the proto JSON mapping, and for each invocation its
    ``outcome`` (``succeeded``, ``failed`` or empty) and ``failure_code`` (a code name)."""
    out = message_to_json(resp)
    for inv, inv_json in zip(resp.invocations, out.get("invocations", []), strict=True):
        inv_json["outcome"], inv_json["failure_code"] = outcome_of(inv)
    return out


def _truncate(text: str, limit: int) -> str:
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def entry_kind(entry: journal_pb2.JournalEntry) -> str:
    """The journal entry's command kind (its oneof case), or ``unknown`` if none is set."""
    return entry.WhichOneof("command") or "unknown"


def _cut(text: str, data: bytes, limit: int | None) -> str:
    """Rendered JSON cut at `limit` characters, saying where the whole of it is."""
    if limit is not None and len(text) > limit:
        return f"{text[:limit]}... (protobuf, {len(data)} bytes; whole in --json)"
    return text


def entry_details(
    entry: journal_pb2.JournalEntry, rendered: admin_pb2.RenderedEntry | None = None
) -> str:
    """One-line description of what a journal entry's command asked for.

    With `rendered` (the broker's JSON of the entry's payloads), requests are shown as
    JSON; otherwise the input shows its size and calls their target only.
    """
    kind = entry.WhichOneof("command")
    request_json = rendered.request_json if rendered is not None else ""
    if kind == "input":
        cmd_in = entry.input
        if request_json:
            details = "request " + _cut(request_json, cmd_in.request, _CELL_VALUE_LIMIT)
        else:
            details = f"request {len(cmd_in.request)} bytes"
        if cmd_in.headers:
            details += ", headers " + ", ".join(sorted(cmd_in.headers))
        return details
    if kind == "call":
        call = entry.call
        request = " " + _cut(request_json, call.request, _CELL_VALUE_LIMIT) if request_json else ""
        callee = call.invocation_id or "(not yet assigned)"
        return f"{call.service}/{call.method}{request} -> {callee}"
    if kind == "send":
        send = entry.send
        request = " " + _cut(request_json, send.request, _CELL_VALUE_LIMIT) if request_json else ""
        callee = send.invocation_id or "(not yet assigned)"
        details = f"{send.service}/{send.method}{request} -> {callee}"
        if send.invoke_at_ms:
            details += f" at {format_timestamp(send.invoke_at_ms)}"
        return details
    if kind == "run":
        return f"name {_quoted(entry.run.name)}"
    if kind == "sleep":
        return f"wake up at {format_timestamp(entry.sleep.wake_up_at_ms)}"
    if kind == "get_state":
        return f"key {_quoted(entry.get_state.key)}"
    if kind == "set_state":
        value = format_json_bytes(entry.set_state.value, _CELL_VALUE_LIMIT)
        return f"key {_quoted(entry.set_state.key)} = {value}"
    if kind == "clear_state":
        return f"key {_quoted(entry.clear_state.key)}"
    if kind == "awakeable":
        return f"id {entry.awakeable.awakeable_id or '(not yet assigned)'}"
    if kind == "complete_awakeable":
        c_awk = entry.complete_awakeable
        completion = format_result(c_awk.completion, _CELL_VALUE_LIMIT, json_value=True)
        return f"{c_awk.awakeable_id} <- {completion}"
    if kind == "get_promise":
        return f"name {_quoted(entry.get_promise.name)}"
    if kind == "peek_promise":
        return f"name {_quoted(entry.peek_promise.name)}"
    if kind == "complete_promise":
        c_prom = entry.complete_promise
        completion = format_result(c_prom.completion, _CELL_VALUE_LIMIT, json_value=True)
        return f"name {_quoted(c_prom.name)} <- {completion}"
    if kind == "attach":
        return f"-> {entry.attach.invocation_id}"
    if kind == "get_output":
        return f"-> {entry.get_output.invocation_id}"
    if kind == "clear_all_state":
        return "every key"
    return ""


def _quoted(text: str) -> str:
    # json.dumps escapes C0 characters; DEL and C1 too, as \u00XX.
    return escape_json_controls(json.dumps(text, ensure_ascii=False))


def state_keys_of(data: bytes) -> list[str] | None:
    """The names in a ``get_state_keys`` result (a serialized ``StateKeys``), if it parses."""
    try:
        keys = journal_pb2.StateKeys.FromString(data)
    except DecodeError:
        return None
    return list(keys.keys)


def entry_result(
    entry: journal_pb2.JournalEntry,
    limit: int | None = None,
    rendered: admin_pb2.RenderedEntry | None = None,
) -> str:
    """The entry's result as shown in the journal table; ``-`` while it has none.

    JSON-valued commands show their values as JSON text, ``get_state_keys`` shows the
    names it returned rather than their protobuf encoding, and a protobuf value the broker
    rendered (``rendered``) shows as that JSON.
    """
    if not entry.HasField("result"):
        return "-"
    kind = entry.WhichOneof("command")
    result = entry.result
    if rendered is not None and rendered.result_json and result.WhichOneof("kind") == "value":
        return "value " + _cut(rendered.result_json, result.value, limit)
    if kind == "get_state_keys" and result.WhichOneof("kind") == "value":
        keys = state_keys_of(result.value)
        if keys is not None:
            listed = escape_json_controls(json.dumps(keys, ensure_ascii=False))
            if limit is not None and len(listed) > limit:
                listed = listed[:limit] + f"... ({len(keys)} keys)"
            return "keys " + listed
    return format_result(result, limit, json_value=kind in JSON_VALUED_COMMANDS)


def format_describe(resp: admin_pb2.DescribeInvocationResponse, hex_payloads: bool = False) -> str:
    """Full human rendering of one invocation: its record, then its journal entry by entry.

    Protobuf payloads are shown as the JSON the broker rendered with the method's types,
    where it could; with ``hex_payloads`` (or where it could not) as bytes, in hex.
    """
    inv = resp.invocation
    rendered: list[admin_pb2.RenderedEntry | None] = [None] * len(resp.journal)
    if not hex_payloads and len(resp.rendered) == len(resp.journal):
        rendered = list(resp.rendered)
    if inv.HasField("result") and resp.result_json and not hex_payloads:
        result = "value " + _cut(resp.result_json, inv.result.value, _RESULT_LIMIT)
    elif inv.HasField("result"):
        result = format_result(inv.result, _RESULT_LIMIT)
    else:
        result = "-"
    fields: list[tuple[str, str]] = [
        ("invocation", inv.id),
        ("status", status_name(inv.status)),
        ("target", format_target(inv)),
        ("deployment", inv.deployment_id or "-"),
        ("attempts", str(inv.attempts)),
        ("last error", inv.last_error or "-"),
        ("created", format_timestamp(inv.created_at_ms)),
        ("modified", format_timestamp(inv.modified_at_ms)),
        ("result", result),
    ]
    # Optional context, shown only when set so the common case stays short.
    if inv.idempotency_key:
        fields.append(("idempotency key", escape_control(inv.idempotency_key)))
    if inv.HasField("caller") and inv.caller.invocation_id:
        fields.append(("caller", f"{inv.caller.invocation_id} entry {inv.caller.entry_index}"))
    if inv.waiting_on:
        fields.append(("waiting on", "entries " + ", ".join(str(i) for i in inv.waiting_on)))
    # Only meaningful while backing off (a paused invocation waits for an operator instead).
    if inv.next_retry_at_ms and inv.status == invocation_pb2.BACKING_OFF:
        fields.append(("next retry", format_timestamp(inv.next_retry_at_ms)))
    if inv.invoke_at_ms:
        fields.append(("invoke at", format_timestamp(inv.invoke_at_ms)))
    if inv.expires_at_ms:
        fields.append(("expires", format_timestamp(inv.expires_at_ms)))
    if inv.cancel_pending:
        fields.append(("cancellation", "requested, delivered at its next await"))
    width = max(len(label) for label, _ in fields) + 2
    lines = [f"{label + ':':<{width}}{_field_value(value, width)}" for label, value in fields]

    lines.append("")
    count = len(resp.journal)
    lines.append(f"journal ({count} {'entry' if count == 1 else 'entries'}):")
    if resp.journal:
        rows = [
            [
                str(index),
                entry_kind(entry),
                entry_details(entry, rendered[index]) or "-",
                entry_result(entry, _CELL_VALUE_LIMIT, rendered[index]),
            ]
            for index, entry in enumerate(resp.journal)
        ]
        table = format_table(["INDEX", "COMMAND", "DETAILS", "RESULT"], rows)
        lines.extend("  " + line for line in table.splitlines())
    return "\n".join(lines)


def _field_value(value: str, indent: int) -> str:
    """A ``label: value`` field's value, control characters escaped; the lines of a
    multi-line one (an error message, a traceback) are indented under its first line, so
    none of them can pass for a field of its own."""
    return escape_control(value, keep="\n").replace("\n", "\n" + " " * indent)


# -- operator actions -------------------------------------------------------------------

# What each invocation action did, as the confirmation line says it.
_ACTION_VERBS = {
    "cancel": "cancelled",
    "kill": "killed",
    "pause": "paused",
    "resume": "resumed",
    "purge": "purged",
}


def format_invocation_action(action: str, inv: invocation_pb2.Invocation) -> str:
    """Confirmation after ``invocations cancel|kill|pause|resume|purge``: the id and the
    resulting status (a purged one's record is as it was: gone now)."""
    if action == "purge":
        outcome = format_result(inv.result, _CELL_VALUE_LIMIT)
        return f"purged {inv.id} ({inv.service}/{inv.method}, which had completed: {outcome})"
    line = f"{_ACTION_VERBS.get(action, action)} {inv.id}: status {status_name(inv.status)}"
    if inv.HasField("result"):
        line += f" ({format_result(inv.result, _CELL_VALUE_LIMIT)})"
    elif inv.cancel_pending:
        line += " (the cancellation is delivered at its next await)"
    return line


def format_completion(what: str, completion: journal_pb2.Result) -> str:
    """Confirmation after resolving or rejecting an awakeable or a promise."""
    if completion.WhichOneof("kind") == "failure":
        return f"rejected {what}: {completion.failure.message}"
    return f"resolved {what} with {format_json_bytes(completion.value or b'null')}"


# -- virtual object state ---------------------------------------------------------------


def format_state_value(data: bytes) -> str:
    """One state value in full: its JSON text, or ``format_bytes`` if it is not JSON."""
    return format_json_bytes(data)


def format_state(service: str, key: str, state: Mapping[str, bytes]) -> str:
    """Table of an object's state values by name (sorted), values shown as JSON text."""
    if not state:
        return f"no state for {service} key {key!r}"
    rows = [
        [escape_control(name), format_json_bytes(state[name], _CELL_VALUE_LIMIT)]
        for name in sorted(state)
    ]
    return format_table(["NAME", "VALUE"], rows)


def state_to_json(service: str, key: str, state: Mapping[str, bytes]) -> dict[str, Any]:
    """The ``--json`` form of an object's state: values decoded from JSON.

    A value that is not valid JSON (the SDK and the admin API only write JSON, so this
    means something else wrote it) goes to ``raw_state`` as base64 instead.
    """
    decoded: dict[str, Any] = {}
    raw: dict[str, str] = {}
    for name in sorted(state):
        try:
            decoded[name] = parse_json(state[name])
        except ValueError:
            raw[name] = base64.b64encode(state[name]).decode("ascii")
    return {"service": service, "key": key, "state": decoded, "raw_state": raw}


def state_change_to_json(change: admin_pb2.SetStateResponse) -> dict[str, Any]:
    """The ``--json`` form of a ``state set`` or ``state clear``: what changed, and how
    many values and bytes the object holds after it."""
    out: dict[str, Any] = {"service": change.service, "key": change.key, "name": change.name}
    if change.HasField("value"):
        out["value"] = parse_json(change.value)
    else:
        out["cleared"] = True
    out["values"] = change.values
    out["bytes"] = change.bytes
    return out


# -- --json renderings ------------------------------------------------------------------


def message_to_json(message: Any) -> dict[str, Any]:
    """A message as the proto3 JSON mapping, with field names as in the ``.proto`` and every
    field printed (defaults too), so scripts can rely on keys being present."""
    as_dict: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return as_dict


def describe_to_json(resp: admin_pb2.DescribeInvocationResponse) -> dict[str, Any]:
    """``invocations describe --json``: the proto JSON mapping, plus decoded values.

    Bytes are base64 in the proto mapping; for scripts each JSON-valued journal value also
    appears decoded next to it as ``value_json`` (results of runs, state reads, awakeables
    and promises; ``set_state`` values; awakeable and promise completions), and a
    ``get_state_keys`` result as ``state_keys``.
    """
    out = message_to_json(resp)
    # The broker's JSON renderings are folded in next to the bytes they render.
    out.pop("rendered", None)
    result_json = out.pop("result_json", "")
    if result_json and "result" in out.get("invocation", {}):
        _add_json(out["invocation"]["result"], result_json.encode())
    rendered = list(resp.rendered) if len(resp.rendered) == len(resp.journal) else []
    for index, (entry, entry_json) in enumerate(
        zip(resp.journal, out.get("journal", []), strict=True)
    ):
        kind = entry.WhichOneof("command")
        if kind is None:
            continue
        if rendered and rendered[index].request_json and kind in ("input", "call", "send"):
            _add_json(entry_json[kind], rendered[index].request_json.encode(), "request_json")
        if rendered and rendered[index].result_json and "result" in entry_json:
            _add_json(entry_json["result"], rendered[index].result_json.encode())
        if entry.HasField("result") and entry.result.WhichOneof("kind") == "value":
            if kind in JSON_VALUED_COMMANDS:
                _add_json(entry_json["result"], entry.result.value)
            elif kind == "get_state_keys":
                keys = state_keys_of(entry.result.value)
                if keys is not None:
                    entry_json["result"]["state_keys"] = keys
        if kind == "set_state":
            _add_json(entry_json["set_state"], entry.set_state.value)
        elif kind in ("complete_awakeable", "complete_promise"):
            completion = getattr(entry, kind).completion
            if completion.WhichOneof("kind") == "value":
                _add_json(entry_json[kind]["completion"], completion.value)
    return out


def _add_json(target: dict[str, Any], data: bytes, key: str = "value_json") -> None:
    try:
        target[key] = parse_json(data)
    except ValueError:
        pass
