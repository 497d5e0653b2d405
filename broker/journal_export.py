"""An exported journal as the self-describing JSON document `brokerctl invocations
export` prints and `durable.testing.replay` reads (format `JOURNAL_EXPORT_FORMAT`).

The record and each entry are in the proto3 JSON mapping with the `.proto` field names
(bytes in base64), so the document parses back into the exact messages; the
deployment's `FileDescriptorSet` (base64) lets any tool decode the payloads without the
user's `.proto` files; `decoded` shows them readably where the broker knew their types
(requests and responses) or they are JSON (state values, `run` results, awakeable and
promise values). Replay reads `invocation` and each `entry`, nothing else.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from durable.v1 import admin_pb2, journal_pb2
from durable.wire import JOURNAL_EXPORT_FORMAT, describe_command
from google.protobuf import json_format
from google.protobuf.message import DecodeError


def document(export: admin_pb2.ExportInvocationResponse) -> dict[str, Any]:
    """The export as a JSON-serializable dict."""
    rendered = list(export.rendered)
    return {
        "format": JOURNAL_EXPORT_FORMAT,
        # Every field of the record, so a plain service's empty key is there too.
        "invocation": _as_dict(export.invocation, every_field=True),
        "deployment": {"id": export.deployment_id, "uri": export.deployment_uri},
        "descriptors": base64.b64encode(export.files.SerializeToString()).decode(),
        "journal": [
            {
                "index": index,
                "kind": entry.WhichOneof("command") or "",
                "command": describe_command(entry),
                "entry": _as_dict(entry),
                "decoded": _decoded(
                    entry, rendered[index] if index < len(rendered) else admin_pb2.RenderedEntry()
                ),
            }
            for index, entry in enumerate(export.journal)
        ],
    }


def text(export: admin_pb2.ExportInvocationResponse) -> str:
    """The export as indented JSON text."""
    return json.dumps(document(export), indent=2, ensure_ascii=False)


def _as_dict(message: Any, every_field: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=every_field,
    )
    return out


def _decoded(entry: journal_pb2.JournalEntry, rendered: admin_pb2.RenderedEntry) -> dict[str, Any]:
    """What the entry's payloads say, where the broker can tell."""
    out: dict[str, Any] = {}
    if rendered.request_json:
        out["request"] = json.loads(rendered.request_json)
    kind = entry.WhichOneof("command")
    if kind == "set_state":
        _json_into(out, "value", entry.set_state.value)
    elif kind in ("complete_awakeable", "complete_promise"):
        completion = getattr(entry, kind).completion
        if completion.HasField("value"):
            _json_into(out, "completion", completion.value)
    if rendered.result_json:
        out["result"] = json.loads(rendered.result_json)
    elif entry.result.HasField("value"):
        if kind == "get_state_keys":
            try:
                out["result"] = list(journal_pb2.StateKeys.FromString(entry.result.value).keys)
            except DecodeError:
                pass
        else:
            _json_into(out, "result", entry.result.value)
    return out


def _json_into(out: dict[str, Any], name: str, raw: bytes) -> None:
    """Sets `out[name]` to `raw` parsed as JSON, when it is JSON (protobuf payloads of
    unknown type are not, and stay in base64 in the entry only)."""
    try:
        out[name] = json.loads(raw)
    except (ValueError, RecursionError):
        pass
