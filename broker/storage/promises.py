"""Workflows' durable promises: (service, key, name) -> result, once completed."""

from __future__ import annotations

from durable.v1 import journal_pb2, storage_pb2

from . import keys
from .commit import Batch
from .kv import KV


def _prefix(service: str, key: str) -> bytes:
    return keys.PROMISES + keys.part(service) + keys.part(key)


def put(batch: Batch, service: str, key: str, name: str, result: journal_pb2.Result) -> None:
    """Completes a promise."""
    record = storage_pb2.PromiseRecord(result=result)
    batch.put(_prefix(service, key) + name.encode(), record.SerializeToString())


def get(kv: KV, service: str, key: str, name: str) -> journal_pb2.Result | None:
    """A completed promise's result, or None."""
    raw = kv.get(_prefix(service, key) + name.encode())
    return None if raw is None else storage_pb2.PromiseRecord.FromString(raw).result


def scan(kv: KV, service: str, key: str) -> list[tuple[str, journal_pb2.Result]]:
    """(name, result) of every completed promise of one workflow key, by name."""
    prefix = _prefix(service, key)
    return [
        (k[len(prefix) :].decode(), storage_pb2.PromiseRecord.FromString(v).result)
        for k, v in kv.scan(prefix)
    ]


def delete_all(kv: KV, batch: Batch, service: str, key: str) -> None:
    """Forgets every promise of one workflow (when it is purged)."""
    for k, _ in kv.scan(_prefix(service, key)):
        batch.delete(k)
