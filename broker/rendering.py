"""Journal payloads as JSON for operators: the broker knows each method's message types.

Requests and responses are journaled as serialized protobuf messages; `brokerctl
invocations describe` shows them in the proto3 JSON mapping where the registry knows
their type, and leaves them as bytes (shown in hex) where it does not.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from durable.v1 import admin_pb2, invocation_pb2, journal_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from . import registry as reg

# The record of another invocation (for attach/get_output results), if retained.
RecordLookup = Callable[[str], invocation_pb2.Invocation | None]


def render(
    registry: reg.Registry,
    record: invocation_pb2.Invocation,
    journal: Sequence[journal_pb2.JournalEntry],
    lookup: RecordLookup,
) -> tuple[list[admin_pb2.RenderedEntry], str]:
    """The rendered entries (one per journal entry) and the invocation's result as JSON."""
    own = _method(registry, record.service, record.method)
    rendered = [_entry(registry, own, entry, lookup) for entry in journal]
    result_json = ""
    if own is not None and record.result.WhichOneof("kind") == "value":
        result_json = as_json(own.output_type, record.result.value)
    return rendered, result_json


Answer = admin_pb2.DescribeInvocationResponse | admin_pb2.ExportInvocationResponse

# Room under the send cap for gRPC's own framing of the answer.
_FRAMING_BYTES = 64 * 1024


def fit(answer: Answer, limit: int) -> str | None:
    """Leaves the renderings out of `answer` when with them it would be over `limit`
    bytes (a journal with payloads near the size limit renders to more than its own
    size); returns why it cannot go even without them, or None.

    The journal itself is what a reader needs whole (replay reads it); the renderings
    only show its payloads as JSON, and readers fall back to the bytes without them.
    """
    cap = limit - _FRAMING_BYTES
    if answer.ByteSize() <= cap:
        return None
    answer.ClearField("rendered")
    if isinstance(answer, admin_pb2.DescribeInvocationResponse):
        answer.ClearField("result_json")
    answer.rendering_omitted = True
    size = answer.ByteSize()
    if size <= cap:
        return None
    entries = f"{len(answer.journal)} entr{'y' if len(answer.journal) == 1 else 'ies'}"
    return (
        f"invocation {answer.invocation.id}'s journal ({entries}) takes "
        f"{size / 2**20:.1f} MiB, over the {limit / 2**20:g} MiB an admin answer can carry: "
        "it cannot be shown or exported whole"
    )


def as_json(message_type: type[Message], data: bytes) -> str:
    """`data` parsed as `message_type`, in compact proto3 JSON; "" if it does not parse."""
    try:
        message = message_type.FromString(data)
    except Exception:  # DecodeError, and whatever a malformed payload raises instead
        return ""
    # Bytes of another type often parse too, as unknown fields: those are not this type.
    message.DiscardUnknownFields()
    if message.ByteSize() != len(data):
        return ""
    as_dict = json_format.MessageToDict(message)
    return json.dumps(as_dict, ensure_ascii=False, separators=(", ", ": "))


def _method(registry: reg.Registry, service: str, method: str) -> reg.Method | None:
    target = registry.service(service)
    return target.methods.get(method) if target is not None else None


def _entry(
    registry: reg.Registry,
    own: reg.Method | None,
    entry: journal_pb2.JournalEntry,
    lookup: RecordLookup,
) -> admin_pb2.RenderedEntry:
    kind = entry.WhichOneof("command")
    out = admin_pb2.RenderedEntry()
    value = entry.result.value if entry.result.WhichOneof("kind") == "value" else None
    if kind == "input" and own is not None:
        out.request_json = as_json(own.input_type, entry.input.request)
    elif kind in ("call", "send"):
        command = entry.call if kind == "call" else entry.send
        target = _method(registry, command.service, command.method)
        if target is not None:
            out.request_json = as_json(target.input_type, command.request)
            if value is not None:
                out.result_json = as_json(target.output_type, value)
    elif kind == "output" and own is not None and value is not None:
        out.result_json = as_json(own.output_type, value)
    elif kind in ("attach", "get_output") and value is not None:
        other_id = (
            entry.attach.invocation_id if kind == "attach" else entry.get_output.invocation_id
        )
        other = lookup(other_id)
        target = _method(registry, other.service, other.method) if other is not None else None
        if target is not None:
            out.result_json = as_json(target.output_type, value)
    return out
