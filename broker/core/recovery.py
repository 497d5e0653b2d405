"""Start-up recovery and retention: rebuilding the partition's view from storage, and
purging completed invocations once their retention ends."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..storage import Batch, idempotency, inbox, invocations, journal, promises, state, timers
from . import commands
from .model import Live, Status, now_ms

if TYPE_CHECKING:
    from .partition import Partition

log = logging.getLogger("broker.core")


def recover(p: Partition) -> None:
    """Rebuilds the in-memory view from storage and restarts what was in flight."""
    for record in invocations.scan(p.kv):
        if record.status == Status.COMPLETED:
            continue
        live = Live(record, journal.load(p.kv, record.id), p.journal_loader)
        p.live[record.id] = live
        if record.exclusive and record.status != Status.PENDING:
            p._locks[live.lock_key] = record.id
    batch = Batch()
    for live in list(p.live.values()):
        p.waits.index(batch, live)
    for service, key, seq, invocation_id in inbox.scan(p.kv):
        p._inboxes[(service, key)].append((seq, invocation_id))
        p._inbox_seq = max(p._inbox_seq, seq)
        if invocation_id in p.live:
            p.live[invocation_id].inbox_seq = seq
    for due, timer in timers.scan(p.kv):
        p.timers.add(due, timer.invocation_id, timer.entry_index)
    for live in list(p.live.values()):
        status = live.record.status
        if status in (Status.RUNNING, Status.BACKING_OFF):
            batch.then(lambda live=live: p._start_attempt(live))  # type: ignore[misc]
        elif status == Status.SUSPENDED and any(
            live.journal[i].HasField("result") for i in live.record.waiting_on
        ):
            batch.then(lambda live=live: p._start_attempt(live))  # type: ignore[misc]
        elif status == Status.SUSPENDED:
            # Still waiting: its journal need not stay in memory.
            batch.then(lambda live=live, v=live.version: p._evict(live, v))  # type: ignore[misc]
    for lock in list(p._inboxes):
        if lock not in p._locks:
            p._release(batch, lock)
    log.info("recovered %d in-flight invocation(s)", len(p.live))
    p.committer.submit(batch)


def purge_expired(p: Partition) -> int:
    """Deletes completed invocations whose retention ended; returns how many."""
    batch = Batch()
    count = 0
    for at, invocation_id in list(invocations.expired(p.kv, now_ms())):
        record = invocations.get(p.kv, invocation_id)
        invocations.unschedule_expiry(batch, at, invocation_id)
        if record is None or record.status != Status.COMPLETED:
            continue
        journal.delete(batch, invocation_id, record.journal_length)
        invocations.delete(batch, invocation_id)
        ident = p._ident(record)
        if ident is not None:
            idempotency.delete(batch, *ident)
        if commands.is_workflow_run(p.registry, record.service, record.method):
            promises.delete_all(p.kv, batch, record.service, record.key)
            for name in state.load(p.kv, record.service, record.key):
                state.delete(batch, record.service, record.key, name)
        count += 1
    if batch.puts:
        p.committer.submit(batch)
    return count
