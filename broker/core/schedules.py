"""Durable schedules as a state machine: creating, pausing, firing and deleting them.

Each firing starts an ordinary invocation with the idempotency key
`schedule:NAME:FIRE_MS`, in the same batch that moves the schedule's `next_fire_ms`
past the slot. After a crash the record names the first slot not fired; a slot whose
batch did become durable is found again by its idempotency key, never started twice.
The driver arms a clock for each `ArmSchedule` and calls `on_due`.
"""

from __future__ import annotations

import logging
import re
from typing import Protocol

from ..storage import Batch, schedules
from ..storage.kv import KV
from . import actions
from . import schedule_times as times
from .model import IdempotencyConflict, Live

log = logging.getLogger("broker.core")

Schedule = schedules.Schedule

KEY_PREFIX = "schedule:"
# Names go into idempotency keys and CLI arguments: keep them plain.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# Firings kept in the record for `describe`.
RECENT = 10


class Exists(Exception):
    """A schedule of that name exists already."""


class Unknown(Exception):
    """No schedule of that name."""


class Host(Protocol):
    """What schedules use of the partition."""

    kv: KV
    live: dict[str, Live]

    def submit(self, batch: Batch) -> None: ...

    def invoke_in(
        self,
        batch: Batch,
        service: str,
        method: str,
        key: str,
        request: bytes,
        idempotency_key: str,
    ) -> str: ...


def spec(record: Schedule) -> times.Spec:
    """A record's timing."""
    return times.Spec(cron=record.cron, timezone=record.timezone, every_ms=record.every_ms)


def name_of(idempotency_key: str) -> str | None:
    """The schedule that started an invocation, from its idempotency key."""
    if not idempotency_key.startswith(KEY_PREFIX):
        return None
    return idempotency_key[len(KEY_PREFIX) :].rpartition(":")[0] or None


class Schedules:
    """Every schedule, in memory and in its table.

    Args:
        host: The partition whose invocations the firings are.
    """

    def __init__(self, host: Host) -> None:
        self.host = host
        self.records: dict[str, Schedule] = {}

    def recover(self) -> None:
        """Loads the schedules and arms each (an overdue one fires at once)."""
        batch = Batch()
        for record in schedules.scan(self.host.kv):
            self.records[record.name] = record
            if not record.paused:
                batch.then(actions.ArmSchedule(record.next_fire_ms, record.name))
        self.host.submit(batch)

    def create(self, record: Schedule, now: int) -> Schedule:
        """Stores a new (already validated) schedule; its first slot is after `now`.

        Raises:
            Exists: the name is taken.
        """
        if record.name in self.records:
            raise Exists(record.name)
        record.created_at_ms = now
        record.next_fire_ms = times.next_after(spec(record), now)
        self.records[record.name] = record
        self._write(record)
        log.info("schedule %s created, first slot at %d", record.name, record.next_fire_ms)
        return record

    def get(self, name: str) -> Schedule:
        """A schedule's record.

        Raises:
            Unknown: no such schedule.
        """
        record = self.records.get(name)
        if record is None:
            raise Unknown(name)
        return record

    def pause(self, name: str) -> Schedule:
        """Stops firing until `resume`."""
        record = self.get(name)
        record.paused = True
        self._write(record, arm=False)
        return record

    def resume(self, name: str, now: int) -> Schedule:
        """Fires again from the next slot after `now` (paused slots are not caught up)."""
        record = self.get(name)
        if record.paused:
            record.paused = False
            record.next_fire_ms = times.next_after(spec(record), now)
            self._write(record)
        return record

    def trigger(self, name: str, now: int) -> Schedule:
        """Fires once now, whatever the overlap policy."""
        record = self.get(name)
        batch = Batch()
        self._fire(batch, record, now)
        schedules.put(batch, record)
        self.host.submit(batch)
        return record

    def delete(self, name: str) -> None:
        """Removes a schedule (firings already started go on)."""
        self.get(name)
        del self.records[name]
        batch = Batch()
        schedules.delete(batch, name)
        self.host.submit(batch)

    def running(self, record: Schedule) -> bool:
        """Whether the schedule's last firing still runs."""
        return bool(record.last_invocation_id) and record.last_invocation_id in self.host.live

    def on_due(self, name: str, now: int) -> None:
        """The schedule's clock rang (or its last firing ended): fires what is due."""
        record = self.records.get(name)
        if record is None or record.paused:
            return
        batch = Batch()
        changed = False
        if record.queued_fire_ms and not self.running(record):
            self._fire(batch, record, record.queued_fire_ms)
            record.queued_fire_ms = 0
            changed = True
        slots, nxt = times.due(spec(record), record.next_fire_ms, now, record.catch_up)
        for slot in slots:
            self._slot(batch, record, slot)
        if slots:
            record.next_fire_ms = nxt
            batch.then(actions.ArmSchedule(nxt, name))
            changed = True
        if changed:
            schedules.put(batch, record)
            self.host.submit(batch)

    def _slot(self, batch: Batch, record: Schedule, slot: int) -> None:
        if self.running(record) and record.overlap != "allow":
            if record.overlap == "queue-one":
                if record.queued_fire_ms:
                    record.skipped += 1  # only one waits: the newer slot replaces it
                record.queued_fire_ms = slot
            else:
                record.skipped += 1
                log.info("schedule %s: slot %d skipped, its last firing runs", record.name, slot)
            return
        self._fire(batch, record, slot)

    def _fire(self, batch: Batch, record: Schedule, slot: int) -> None:
        idempotency_key = f"{KEY_PREFIX}{record.name}:{slot}"
        try:
            invocation_id = self.host.invoke_in(
                batch, record.service, record.method, record.key, record.request, idempotency_key
            )
        except IdempotencyConflict as e:
            # The slot's key names another request's invocation (the ingress refuses the
            # prefix; a store written before it did not). Raised on, it dropped the batch
            # of every slot fired with it and the timer retried it for ever: skip it.
            record.skipped += 1
            log.error(
                "schedule %s: slot %d skipped: its idempotency key %r already names "
                "invocation %s, of another request",
                record.name,
                slot,
                idempotency_key,
                e.invocation_id,
            )
            return
        record.last_fire_ms = slot
        record.last_invocation_id = invocation_id
        record.fired += 1
        record.recent.add(fire_ms=slot, invocation_id=invocation_id)
        if len(record.recent) > RECENT:
            del record.recent[: len(record.recent) - RECENT]
        log.info("schedule %s fired slot %d: %s", record.name, slot, invocation_id)

    def _write(self, record: Schedule, arm: bool = True) -> None:
        batch = Batch()
        schedules.put(batch, record)
        if arm:
            batch.then(actions.ArmSchedule(record.next_fire_ms, record.name))
        self.host.submit(batch)
