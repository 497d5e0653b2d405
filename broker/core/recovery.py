"""Start-up recovery and retention: rebuilding the partition's view from storage, and
purging completed invocations once their retention ends."""

from __future__ import annotations

import logging

from ..storage import Batch, inbox, invocations, journal, promises, state, timers
from ..storage import limits as limit_table
from ..storage import outbox as outbox_table
from . import actions
from .dedup import is_workflow_run
from .model import Invocation, Status
from .ports import PartitionOps

log = logging.getLogger("broker.core")


def recover(p: PartitionOps) -> None:
    """Rebuilds the in-memory view from storage and restarts what was in flight, in one
    batch: its actions re-arm the timers and resume the attempts."""
    for record in invocations.scan(p.kv):
        if record.status != Status.COMPLETED:
            p.adopt(record, journal.load(p.kv, record.id))
    p.load_limits()
    batch = Batch()
    for live in list(p.live.values()):
        p.waits.index(batch, live)
    for target, waiter, index in outbox_table.attachers(p.kv):
        p.waits.restore_remote_attacher(target, (waiter, index))
    p.outbox.recover(batch)
    for service, key, seq, invocation_id in inbox.scan(p.kv):
        p.locks.restore_waiter((service, key), seq, invocation_id)
        if invocation_id in p.live:
            p.live[invocation_id].inbox_seq = seq
    for due, timer in timers.scan(p.kv):
        batch.then(actions.ArmTimer(due, timer.invocation_id, timer.entry_index))
    for live in list(p.live.values()):
        status = live.record.status
        if status in (Status.RUNNING, Status.BACKING_OFF) or (
            status == Status.SUSPENDED
            and any(live.journal[i].HasField("result") for i in live.record.waiting_on)
        ):
            p.start_attempt(batch, live)
        elif status == Status.SUSPENDED:
            # Still waiting: its journal need not stay in memory.
            batch.then(actions.Evict(live.id, live.version))
    # Queued new invocations, in arrival order, behind the resumed ones queued above.
    for seq, invocation_id in limit_table.scan_queue(p.kv):
        queued = p.live.get(invocation_id)
        if queued is None or queued.record.status != Status.QUEUED:
            limit_table.dequeue(batch, seq)
            continue
        p.limiter.restore(invocation_id, queued.record.service, queued.record.method, seq)
    for lock in p.locks.unheld_with_waiters():
        p.release(batch, lock)
    for service in p.limiter.services_waiting():
        p.admit(batch, service)
    log.info("recovered %d in-flight invocation(s)", len(p.live))
    p.submit(batch)


def purge_expired(p: PartitionOps) -> int:
    """Deletes completed invocations whose retention ended; returns how many."""
    batch = Batch()
    count = 0
    for at, invocation_id in list(invocations.expired(p.kv, p.now_ms())):
        record = invocations.get(p.kv, invocation_id)
        invocations.unschedule_expiry(batch, at, invocation_id)
        if record is None or record.status != Status.COMPLETED:
            continue
        forget(p, batch, record)
        count += 1
    if batch.puts:
        p.submit(batch)
    return count


def forget(p: PartitionOps, batch: Batch, record: Invocation) -> None:
    """Deletes a completed invocation: its record and journal, its idempotency key's
    binding (the key starts a new invocation again), and, for a workflow's run, the
    workflow's promises and state (its key can run again). Not its expiry entry."""
    journal.delete(batch, record.id, record.journal_length)
    invocations.delete(batch, record.id)
    ident = p.dedup.of(record)
    if ident is not None:
        p.dedup.unbind(batch, ident)
    if record.idempotency_key and (ident is None or ident[3] != record.idempotency_key):
        # A workflow's run stored before its identity ignored the idempotency key was
        # bound under both: that row goes too (deleting a missing row is harmless).
        p.dedup.unbind(batch, (record.service, record.method, record.key, record.idempotency_key))
    if is_workflow_run(p.registry, record.service, record.method):
        promises.delete_all(p.kv, batch, record.service, record.key)
        for name in state.load(p.kv, record.service, record.key):
            state.delete(batch, record.service, record.key, name)
