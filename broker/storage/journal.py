"""Journal entries: one key per (invocation, index), in index order."""

from __future__ import annotations

from durable.v1 import journal_pb2

from . import keys
from .commit import Batch
from .kv import KV

Entry = journal_pb2.JournalEntry


def _prefix(invocation_id: str) -> bytes:
    return keys.JOURNAL + keys.part(invocation_id)


def put(batch: Batch, invocation_id: str, index: int, entry: Entry) -> None:
    """Writes entry `index` (new, or completed since)."""
    batch.put(_prefix(invocation_id) + keys.u32(index), entry.SerializeToString())


def load(kv: KV, invocation_id: str) -> list[Entry]:
    """The whole journal, in order."""
    return [Entry.FromString(raw) for _, raw in kv.scan(_prefix(invocation_id))]


def delete(batch: Batch, invocation_id: str, length: int) -> None:
    """Removes the journal's `length` entries."""
    prefix = _prefix(invocation_id)
    for index in range(length):
        batch.delete(prefix + keys.u32(index))
