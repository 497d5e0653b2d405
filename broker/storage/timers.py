"""Durable timers, ordered by due time."""

from __future__ import annotations

from collections.abc import Iterator

from durable.v1 import storage_pb2

from . import keys
from .commit import Batch
from .kv import KV

Timer = storage_pb2.TimerRecord


def _key(due_ms: int, invocation_id: str, entry_index: int) -> bytes:
    # entry_index is -1 for delayed starts; shift so it encodes unsigned.
    return keys.TIMERS + keys.u64(due_ms) + keys.part(invocation_id) + keys.u32(entry_index + 1)


def put(batch: Batch, due_ms: int, invocation_id: str, entry_index: int) -> None:
    """Registers a timer."""
    record = Timer(invocation_id=invocation_id, entry_index=entry_index)
    batch.put(_key(due_ms, invocation_id, entry_index), record.SerializeToString())


def delete(batch: Batch, due_ms: int, invocation_id: str, entry_index: int) -> None:
    """Removes a fired timer."""
    batch.delete(_key(due_ms, invocation_id, entry_index))


def scan(kv: KV) -> Iterator[tuple[int, Timer]]:
    """(due_ms, timer) in due order."""
    for key, raw in kv.scan(keys.TIMERS):
        yield keys.read_u64(key, 2), Timer.FromString(raw)
