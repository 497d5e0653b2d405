"""Run-time limits per service or handler, and the queue of invocations waiting for them.

A limit row: key (service, method), value the concurrency (u32) and the rate (f64, per
second); 0 means unlimited. A queue row: key the arrival sequence number, value the
invocation id; the invocation's record says which service and handler it waits for.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from . import keys
from .commit import Batch
from .kv import KV

_VALUE = struct.Struct(">Id")


def _limit_key(service: str, method: str) -> bytes:
    return keys.LIMITS + keys.part(service) + keys.part(method)


def put_limit(batch: Batch, service: str, method: str, concurrency: int, rate: float) -> None:
    """Stores a scope's limits (method "" for the whole service)."""
    batch.put(_limit_key(service, method), _VALUE.pack(concurrency, rate))


def delete_limit(batch: Batch, service: str, method: str) -> None:
    """Removes a scope's limits."""
    batch.delete(_limit_key(service, method))


def scan_limits(kv: KV) -> Iterator[tuple[str, str, int, float]]:
    """(service, method, concurrency, rate) of every stored limit."""
    for raw_key, value in kv.scan(keys.LIMITS):
        service, offset = keys.read_part(raw_key, 2)
        method, _ = keys.read_part(raw_key, offset)
        concurrency, rate = _VALUE.unpack(value)
        yield service.decode(), method.decode(), int(concurrency), float(rate)


def _queue_key(seq: int) -> bytes:
    return keys.LIMIT_QUEUE + keys.u64(seq)


def enqueue(batch: Batch, seq: int, invocation_id: str) -> None:
    """Queues a new invocation behind a limit."""
    batch.put(_queue_key(seq), invocation_id.encode())


def dequeue(batch: Batch, seq: int) -> None:
    """Takes an invocation off the queue (it started or ended)."""
    batch.delete(_queue_key(seq))


def scan_queue(kv: KV) -> Iterator[tuple[int, str]]:
    """(seq, invocation id) of every queued invocation, in arrival order."""
    for raw_key, value in kv.scan(keys.LIMIT_QUEUE):
        yield keys.read_u64(raw_key, 2), value.decode()
