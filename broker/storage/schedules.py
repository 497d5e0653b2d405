"""Durable schedules, by name: the spec and where the schedule stands (next slot, last
firing), rewritten in the batch of each firing."""

from __future__ import annotations

from collections.abc import Iterator

from durable.v1 import storage_pb2

from . import keys
from .commit import Batch
from .kv import KV

Schedule = storage_pb2.ScheduleRecord


def _key(name: str) -> bytes:
    return keys.SCHEDULES + keys.part(name)


def put(batch: Batch, record: Schedule) -> None:
    """Writes a schedule's record."""
    batch.put(_key(record.name), record.SerializeToString())


def delete(batch: Batch, name: str) -> None:
    """Removes a schedule."""
    batch.delete(_key(name))


def get(kv: KV, name: str) -> Schedule | None:
    """A schedule's record, if it exists."""
    raw = kv.get(_key(name))
    return None if raw is None else Schedule.FromString(raw)


def scan(kv: KV) -> Iterator[Schedule]:
    """Every schedule, by name."""
    for _, raw in kv.scan(keys.SCHEDULES):
        yield Schedule.FromString(raw)
