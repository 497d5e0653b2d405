"""Journal payloads as JSON for operators: the broker knows each method's message types.

Requests and responses are journaled as serialized protobuf messages; `brokerctl
invocations describe` shows them in the proto3 JSON mapping where the registry knows
their type, and leaves them as bytes (shown in hex) where it does not. An answer holding a
journal stays under the admin API's message size cap: whole, without its renderings if it
must (`fit`), or a page at a time (`fill`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, cast

from durable.v1 import admin_pb2, invocation_pb2, journal_pb2
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message import Message

from . import registry as reg
from .config import ANSWER_FRAMING_BYTES, REPEATED_ITEM_BYTES

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


def fit(answer: Answer, limit: int) -> str | None:
    """Leaves the renderings out of `answer` when with them it would be over `limit`
    bytes (a journal with payloads near the size limit renders to more than its own
    size); returns why it cannot go even without them, or None.

    The journal itself is what a reader needs whole (replay reads it); the renderings
    only show its payloads as JSON, and readers fall back to the bytes without them.
    """
    cap = limit - ANSWER_FRAMING_BYTES
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
        "ask for it in pages (max_entries; brokerctl does)"
    )


def first_entry_error(invocation_id: str, first: int, length: int) -> str | None:
    """Why `first` cannot start an answer from a journal of `length` entries, if it
    cannot."""
    if first < length or first == 0:
        return None
    return (
        f"invocation {invocation_id}'s journal has {length} "
        f"{'entry' if length == 1 else 'entries'} (0 to {length - 1}): "
        f"first_entry {first} is past its end"
    )


def window(
    journal: Sequence[journal_pb2.JournalEntry], first: int, max_entries: int
) -> Sequence[journal_pb2.JournalEntry]:
    """The entries a request asks for: from `first`, at most `max_entries` (0: all)."""
    return journal[first : first + max_entries if max_entries else None]


def place(
    answer: Answer,
    entries: Sequence[journal_pb2.JournalEntry],
    rendered: Sequence[admin_pb2.RenderedEntry],
    first: int,
    length: int,
    paged: bool,
    limit: int,
) -> str | None:
    """Puts the `window` into `answer`: as many as fit (`fill`) when `paged`, else all
    of them (`fit`). Returns why the answer cannot go, or None."""
    if paged:
        return fill(answer, entries, rendered, first, length, limit)
    answer.journal_length = length
    answer.journal.extend(entries)
    answer.rendered.extend(rendered)
    return fit(answer, limit)


def fill(
    answer: Answer,
    entries: Sequence[journal_pb2.JournalEntry],
    rendered: Sequence[admin_pb2.RenderedEntry],
    first: int,
    length: int,
    limit: int,
) -> str | None:
    """Adds `entries` (the journal's from index `first`, with their renderings) to a
    paged `answer` while it stays within `limit` bytes, at least one; sets where the next
    page starts. Returns why not even one entry fits, or None.

    When the record's result leaves no room for the first entry and its rendering, the
    result's rendering goes, then the result itself (`result_omitted`): the output entry
    carries it. A rendering that still does not fit is left out (an empty one in its
    place, and `rendering_omitted` set).
    """
    cap = limit - ANSWER_FRAMING_BYTES
    answer.journal_length = length
    size = answer.ByteSize()
    head = entries[0].ByteSize() + REPEATED_ITEM_BYTES if entries else 0
    # Room for the first entry with its rendering: the record's result is the output
    # entry's, so it goes before they do (its rendering first).
    need = head + rendered[0].ByteSize() + REPEATED_ITEM_BYTES if entries else 0
    dropped_json = False
    if size + need > cap and isinstance(answer, admin_pb2.DescribeInvocationResponse):
        dropped_json = bool(answer.result_json)
        answer.ClearField("result_json")
        size = answer.ByteSize()
    if size + need > cap and answer.invocation.HasField("result"):
        # Only when that makes room: a small result (a kill's failure, which no output
        # entry holds) stays.
        result = journal_pb2.Result()
        result.CopyFrom(answer.invocation.result)
        answer.invocation.ClearField("result")
        without = answer.ByteSize()
        if without + need <= cap or (size + head > cap >= without + head):
            answer.result_omitted = True  # and its rendering with it: both are the output's
            size = without
        else:
            answer.invocation.result.CopyFrom(result)
    if dropped_json and not answer.result_omitted:
        answer.rendering_omitted = True
    taken = 0
    for entry, rendering in zip(entries, rendered, strict=True):
        entry_bytes = entry.ByteSize() + REPEATED_ITEM_BYTES
        rendering_bytes = rendering.ByteSize() + REPEATED_ITEM_BYTES
        if size + entry_bytes + rendering_bytes <= cap:
            answer.rendered.append(rendering)
        elif taken == 0 and size + entry_bytes + REPEATED_ITEM_BYTES <= cap:
            # Alone in the page and still too big with its rendering: without it. A
            # later entry that does not fit opens the next page instead.
            answer.rendered.add()
            answer.rendering_omitted = True
            rendering_bytes = REPEATED_ITEM_BYTES
        else:
            break
        answer.journal.append(entry)
        size += entry_bytes + rendering_bytes
        taken += 1
    if taken == 0 and entries:
        return (
            f"entry {first} of invocation {answer.invocation.id}'s journal takes "
            f"{head / 2**20:.1f} MiB, over the {limit / 2**20:g} MiB an admin answer can "
            "carry: it cannot be shown or exported"
        )
    following = first + taken
    answer.next_entry = following if following < length else 0
    return None


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
    try:
        as_dict = to_dict(message)
    except Exception:  # an Any of a type nobody defines, or whose value does not parse
        return ""
    return json.dumps(as_dict, ensure_ascii=False, separators=(", ", ": "))


def to_dict(message: Message, **options: Any) -> dict[str, Any]:
    """`json_format.MessageToDict` with the message's own descriptor pool, where a
    `google.protobuf.Any` of the service's own types is found (each deployment's types
    live in a pool of their own, not in protobuf's default one)."""
    as_dict: dict[str, Any] = json_format.MessageToDict(
        message, descriptor_pool=pool_of(message), **options
    )
    return as_dict


def pool_of(message: Message) -> descriptor_pool.DescriptorPool:
    """The descriptor pool that defines `message`'s type (for json_format's Any)."""
    # The C implementation's pool type is a different class with the same interface.
    return cast(descriptor_pool.DescriptorPool, message.DESCRIPTOR.file.pool)


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
