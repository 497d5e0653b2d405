"""Cross-partition messages: the sender's outbox and the receiver's dedup marks.

A message is written in the same batch as the change that sends it, under its
destination and a sequence number of its own; it is deleted once the destination says
it applied it. The destination keeps, per source, the last sequence number it applied,
written in the batch that applies the message: a message delivered twice (the sender
crashed before hearing back) is recognised and skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

from durable.v1 import cluster_pb2

from . import keys
from .commit import Batch
from .kv import KV


def _row(destination: int, seq: int) -> bytes:
    return keys.OUTBOX + keys.u32(destination) + keys.u64(seq)


def put(batch: Batch, destination: int, seq: int, message: cluster_pb2.OutboxMessage) -> None:
    """Queues `message` for `destination` and records `seq` as used."""
    batch.put(_row(destination, seq), message.SerializeToString())
    batch.put(keys.OUTBOX_SEQ + keys.u32(destination), keys.u64(seq))


def delete(batch: Batch, destination: int, seq: int) -> None:
    """Drops a message its destination applied."""
    batch.delete(_row(destination, seq))


def scan(kv: KV) -> Iterator[tuple[int, int, cluster_pb2.OutboxMessage]]:
    """(destination, seq, message) for every message not yet acknowledged, in order."""
    for raw_key, value in kv.scan(keys.OUTBOX):
        message = cluster_pb2.OutboxMessage()
        message.ParseFromString(value)
        yield keys.read_u32(raw_key, 2), keys.read_u64(raw_key, 6), message


def last_sequences(kv: KV) -> dict[int, int]:
    """The last sequence number used towards each destination."""
    return {keys.read_u32(k, 2): keys.read_u64(v, 0) for k, v in kv.scan(keys.OUTBOX_SEQ)}


def mark_applied(batch: Batch, source: int, seq: int) -> None:
    """Records that every message from `source` up to `seq` is applied."""
    batch.put(keys.APPLIED + keys.u32(source), keys.u64(seq))


def applied(kv: KV) -> dict[int, int]:
    """The last sequence number applied from each source."""
    return {keys.read_u32(k, 2): keys.read_u64(v, 0) for k, v in kv.scan(keys.APPLIED)}


def _attacher(target: str, waiter: str, index: int) -> bytes:
    return keys.REMOTE_ATTACHERS + keys.part(target) + keys.part(waiter) + keys.u32(index)


def put_attacher(batch: Batch, target: str, waiter: str, index: int) -> None:
    """Remembers that another partition's invocation waits for `target` to end."""
    batch.put(_attacher(target, waiter, index), b"")


def delete_attacher(batch: Batch, target: str, waiter: str, index: int) -> None:
    """Forgets a remote waiter once it has been answered."""
    batch.delete(_attacher(target, waiter, index))


def attachers(kv: KV) -> Iterator[tuple[str, str, int]]:
    """(target, waiter, index) for every remote waiter."""
    for raw_key, _ in kv.scan(keys.REMOTE_ATTACHERS):
        target, offset = keys.read_part(raw_key, 2)
        waiter, offset = keys.read_part(raw_key, offset)
        yield target.decode(), waiter.decode(), keys.read_u32(raw_key, offset)
