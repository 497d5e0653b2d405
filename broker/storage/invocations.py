"""Invocation records, and the expiry index that purges completed ones."""

from __future__ import annotations

from collections.abc import Iterator

from durable.v1 import invocation_pb2

from . import keys
from .commit import Batch
from .kv import KV

Invocation = invocation_pb2.Invocation


def _key(invocation_id: str) -> bytes:
    return keys.INVOCATIONS + keys.part(invocation_id)


def put(batch: Batch, record: Invocation) -> None:
    """Writes the record."""
    batch.put(_key(record.id), record.SerializeToString())


def get(kv: KV, invocation_id: str) -> Invocation | None:
    """The record, or None."""
    raw = kv.get(_key(invocation_id))
    return None if raw is None else Invocation.FromString(raw)


def delete(batch: Batch, invocation_id: str) -> None:
    """Removes the record."""
    batch.delete(_key(invocation_id))


def scan(kv: KV) -> Iterator[Invocation]:
    """Every record, in id order."""
    for _, raw in kv.scan(keys.INVOCATIONS):
        yield Invocation.FromString(raw)


def _expiry_key(expires_at_ms: int, invocation_id: str) -> bytes:
    return keys.EXPIRY + keys.u64(expires_at_ms) + keys.part(invocation_id)


def schedule_expiry(batch: Batch, expires_at_ms: int, invocation_id: str) -> None:
    """Indexes a completed invocation by the time it may be purged."""
    batch.put(_expiry_key(expires_at_ms, invocation_id), b"")


def expired(kv: KV, now_ms: int) -> Iterator[tuple[int, str]]:
    """(expires_at_ms, id) of invocations whose retention ended by `now_ms`."""
    for key, _ in kv.scan(keys.EXPIRY):
        at = keys.read_u64(key, 2)
        if at > now_ms:
            return
        invocation_id, _ = keys.read_part(key, 10)
        yield at, invocation_id.decode()


def unschedule_expiry(batch: Batch, expires_at_ms: int, invocation_id: str) -> None:
    """Drops the expiry index entry."""
    batch.delete(_expiry_key(expires_at_ms, invocation_id))
