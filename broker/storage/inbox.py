"""The per-key inbox: exclusive invocations waiting for their key, in arrival order."""

from __future__ import annotations

from collections.abc import Iterator

from . import keys
from .commit import Batch
from .kv import KV


def _key(service: str, key: str, seq: int) -> bytes:
    return keys.INBOX + keys.part(service) + keys.part(key) + keys.u64(seq)


def put(batch: Batch, service: str, key: str, seq: int, invocation_id: str) -> None:
    """Queues an invocation behind the key's current holder."""
    batch.put(_key(service, key, seq), invocation_id.encode())


def delete(batch: Batch, service: str, key: str, seq: int) -> None:
    """Takes an invocation off the inbox."""
    batch.delete(_key(service, key, seq))


def scan(kv: KV) -> Iterator[tuple[str, str, int, str]]:
    """(service, key, seq, invocation id) for every queued invocation, in order."""
    for raw_key, value in kv.scan(keys.INBOX):
        service, offset = keys.read_part(raw_key, 2)
        key, offset = keys.read_part(raw_key, offset)
        yield service.decode(), key.decode(), keys.read_u64(raw_key, offset), value.decode()
