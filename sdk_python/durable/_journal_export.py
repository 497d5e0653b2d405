"""Reading an exported journal: the JSON document `brokerctl invocations export` prints.

The document (format `durable.wire.JOURNAL_EXPORT_FORMAT`)::

    {
      "format": "durable.journal-export/1",
      "invocation": {"id": "inv_...", "service": "...", "method": "...", "key": "",
                     "status": "COMPLETED", "random_seed": "...", ...},
      "deployment": {"id": "dp_...", "uri": "http://..."},
      "descriptors": "<base64 FileDescriptorSet>",
      "journal": [{"index": 0, "kind": "input", "entry": {...}, "decoded": {...}}, ...]
    }

`invocation` is the invocation's record and each `entry` a `durable.v1.JournalEntry`, both
in the proto3 JSON mapping (payloads in base64); `decoded` is a readable view only, and
replay ignores it. Everything wrong with a document is one `JournalFormatError` saying
where, since it is usually a file someone edited or cut short.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from durable.v1 import invocation_pb2, journal_pb2

from .wire import JOURNAL_EXPORT_FORMAT

M = TypeVar("M", bound=Message)


class JournalFormatError(ValueError):
    """An exported journal that cannot be read, with what is wrong and where."""


@dataclasses.dataclass(frozen=True)
class ExportedJournal:
    """An exported journal, parsed."""

    invocation: invocation_pb2.Invocation
    entries: list[journal_pb2.JournalEntry]


def load(journal: str | os.PathLike[str] | dict[str, Any]) -> ExportedJournal:
    """Parses an export given as its JSON text, a path to a file of it, or the decoded dict.

    Raises:
        JournalFormatError: naming the problem (not JSON, another format, a malformed
            entry...).
    """
    document = _document(journal)
    if not isinstance(document, dict):
        raise JournalFormatError(
            f"an exported journal is a JSON object, not {type(document).__name__}"
        )
    found = document.get("format")
    if found != JOURNAL_EXPORT_FORMAT:
        raise JournalFormatError(
            f"not an exported journal: its format is {found!r}, expected "
            f"{JOURNAL_EXPORT_FORMAT!r} (write one with `brokerctl invocations export ID`)"
        )
    invocation = _parse(document.get("invocation"), invocation_pb2.Invocation(), "invocation")
    if not invocation.service or not invocation.method:
        raise JournalFormatError("the exported invocation names no service or method")
    items = document.get("journal")
    if not isinstance(items, list) or not items:
        raise JournalFormatError("the export has no journal entries (a 'journal' list)")
    entries = []
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            raise JournalFormatError(f"journal entry {position} is not a JSON object")
        if item.get("index", position) != position:
            raise JournalFormatError(
                f"journal entry {position} says it is entry {item.get('index')!r}: "
                "entries must be complete and in order"
            )
        entry = _parse(item.get("entry"), journal_pb2.JournalEntry(), f"journal entry {position}")
        if entry.WhichOneof("command") is None:
            raise JournalFormatError(f"journal entry {position} holds no command")
        entries.append(entry)
    if entries[0].WhichOneof("command") != "input":
        raise JournalFormatError("journal entry 0 must be the input")
    return ExportedJournal(invocation, entries)


def _document(journal: str | os.PathLike[str] | dict[str, Any]) -> Any:
    if isinstance(journal, dict):
        return journal
    if not isinstance(journal, str | os.PathLike):
        raise JournalFormatError(
            "an exported journal is given as its JSON text, a path to it or the decoded "
            f"dict, not a {type(journal).__name__}"
        )
    if isinstance(journal, str) and journal.lstrip().startswith(("{", "[")):
        text, source = journal, "the exported journal"
    else:
        path = Path(journal)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise JournalFormatError(f"cannot read the exported journal {path}: {e}") from None
        source = str(path)
    try:
        return json.loads(text)
    except ValueError as e:
        raise JournalFormatError(f"{source} is not JSON: {e}") from None


def _parse(value: Any, message: M, what: str) -> M:
    if not isinstance(value, dict):
        raise JournalFormatError(f"the export's {what} is missing or not a JSON object")
    try:
        return json_format.ParseDict(value, message)
    except json_format.ParseError as e:
        raise JournalFormatError(f"the export's {what} is malformed: {e}") from None
