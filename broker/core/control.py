"""Operator actions on invocations: cancel, kill, pause, resume, purge, and object state
edits."""

from __future__ import annotations

from durable.v1 import cluster_pb2

from ..codes import ABORTED, CANCELLED
from ..storage import Batch, invocations, state
from . import commands, recovery, retries
from .model import Invocation, Live, Result, Status, UnknownInvocation, failure
from .ports import PartitionOps


class NotAllowed(Exception):
    """The action does not apply to the invocation in its current state."""


def _live(p: PartitionOps, invocation_id: str) -> Live:
    live = p.live.get(invocation_id)
    # A completed invocation stays live until its completion is durable; acting on it
    # then would overwrite a result its callers may already hold (kill), or store a
    # finished invocation as paused, which recovery would take back as in flight.
    if live is not None and live.record.status != Status.COMPLETED:
        return live
    if live is None and p.completed(invocation_id) is None:
        raise UnknownInvocation(invocation_id)
    raise NotAllowed(f"invocation {invocation_id} already completed")


def purge(p: PartitionOps, invocation_id: str) -> Invocation:
    """Deletes a completed invocation now instead of at the end of its retention (see
    `recovery.forget` for what goes); returns its record as it was.

    Raises:
        UnknownInvocation: no such invocation is retained.
        NotAllowed: it has not completed (or its completion is still being written).
    """
    if invocation_id in p.live:
        raise NotAllowed(
            f"invocation {invocation_id} has not completed: only a completed invocation "
            "can be purged (cancel or kill it first)"
        )
    record = invocations.get(p.kv, invocation_id)
    if record is None:
        raise UnknownInvocation(invocation_id)
    if record.status != Status.COMPLETED:  # a record without its live invocation: damage
        raise NotAllowed(f"invocation {invocation_id} is {Status.Name(record.status)}")
    batch = Batch()
    recovery.forget(p, batch, record)
    invocations.unschedule_expiry(batch, record.expires_at_ms, invocation_id)
    p.submit(batch)
    return record


def cancel(p: PartitionOps, invocation_id: str) -> Invocation:
    """Cancels an invocation and, through it, the calls it is waiting on.

    The handler sees a terminal CANCELLED error at its next await: every entry it waits
    on is completed with that failure now (so a suspended handler resumes), or, when it
    waits on nothing, the next one it awaits is.
    """
    live = _live(p, invocation_id)
    batch = Batch()
    cancel_in(p, batch, live)
    p.submit(batch)
    return live.record


def _to_child(
    p: PartitionOps, batch: Batch, parent: Live, index: int, child_id: str, kind: str
) -> Live | None:
    """The invocation that `parent`'s call at `index` started, if it lives here; else
    the cancel or kill goes to its partition.

    None for an invocation the call only joined (a workflow's run that another caller
    started, found by its key): cancelling or killing the caller ends its own wait, not
    the run that others started and wait on. (In another partition, a call that joined
    a run there journaled an id that names no invocation, so the message is ignored.)"""
    if p.placement.local(child_id):
        child = p.live.get(child_id)
        if child is None:
            return None
        caller = child.record.caller
        return child if (caller.invocation_id, caller.entry_index) == (parent.id, index) else None
    message = cluster_pb2.OutboxMessage()
    getattr(message, kind).invocation_id = child_id
    p.outbox.to_owner(batch, child_id, message)
    return None


def cancel_in(p: PartitionOps, batch: Batch, live: Live) -> None:
    """Cancels `live` (see `cancel`) in `batch`; once: a second cancellation would fail
    what the handler awaits after the first, its compensations (Temporal, too, takes a
    cancellation request as a flag)."""
    if live.record.cancelled:
        return
    live.record.cancelled = True
    cancelled = failure(CANCELLED, "invocation cancelled")
    if live.record.status in (Status.PENDING, Status.QUEUED):
        # Never started: nothing to compensate.
        p.complete(batch, live, cancelled)
        p.save(batch, live)
        return
    delivered = False
    for index, entry in enumerate(live.journal):
        kind = entry.WhichOneof("command")
        if kind not in commands.AWAITABLE or entry.HasField("result"):
            continue
        if kind == "call":
            child = _to_child(p, batch, live, index, entry.call.invocation_id, "cancel")
            if child is not None:
                cancel_in(p, batch, child)
        p.complete_entry(batch, live, index, cancelled)
        delivered = True
    if not delivered:
        live.record.cancel_pending = True
        cancel_pending_runs(p, batch, live)
    if live.record.status in (Status.PAUSED, Status.BACKING_OFF):
        # Nothing would run it to hear the cancellation, at its next await or in what
        # it awaits now, until its retry is due (or an operator resumes it): it runs now
        # instead, as a resume would.
        retries.resume_in(p, batch, live)
    p.save(batch, live)


def cancel_pending_runs(p: PartitionOps, batch: Batch, live: Live) -> bool:
    """Delivers a pending cancellation to the side effects journaled without a result
    (their function failed, or was cut off) while no attempt runs; True if there were.

    The next attempt's replay then raises CANCELLED at the first of them instead of
    running its function again: a side effect that keeps failing (an attack's charge
    that always raised) otherwise kept the cancellation from ever reaching an await,
    retried for ever with no compensation run.
    """
    if live.attempt or not live.record.cancel_pending:
        return False
    if live.record.status not in (Status.BACKING_OFF, Status.PAUSED):
        return False
    pending = [
        index
        for index, entry in enumerate(live.journal)
        if entry.WhichOneof("command") == "run" and not entry.HasField("result")
    ]
    if not pending:
        return False
    live.record.cancel_pending = False
    for index in pending:
        p.complete_entry(batch, live, index, failure(CANCELLED, "invocation cancelled"))
    return True


def kill(p: PartitionOps, invocation_id: str) -> Invocation:
    """Stops an invocation now, and the calls it waits on; no compensation runs."""
    live = _live(p, invocation_id)
    batch = Batch()
    kill_in(p, batch, live)
    p.submit(batch)
    return live.record


def kill_in(p: PartitionOps, batch: Batch, live: Live) -> None:
    """Kills `live` (see `kill`) in `batch`."""
    for index, entry in enumerate(live.journal):
        if entry.HasField("call") and not entry.HasField("result"):
            child = _to_child(p, batch, live, index, entry.call.invocation_id, "kill")
            if child is not None:
                kill_in(p, batch, child)
    p.abandon_attempt(batch, live, "killed")
    p.complete(batch, live, failure(ABORTED, "invocation killed"))
    p.save(batch, live)


def pause(p: PartitionOps, invocation_id: str) -> Invocation:
    """Parks a started invocation until an operator resumes it."""
    live = _live(p, invocation_id)
    if live.record.status in (Status.PENDING, Status.QUEUED):
        raise NotAllowed(f"invocation {invocation_id} has not started; cancel it instead")
    if live.record.status != Status.PAUSED:
        p.pause(live)
    return live.record


def resume(p: PartitionOps, invocation_id: str) -> Invocation:
    """Retries a paused (or backing-off) invocation now."""
    live = _live(p, invocation_id)
    if live.record.status not in (Status.PAUSED, Status.BACKING_OFF):
        raise NotAllowed(
            f"invocation {invocation_id} is {commands.status_name(live.record.status)}; "
            "only paused or backing-off invocations can be resumed"
        )
    p.resume(live)
    return live.record


class TooLarge(Exception):
    """The edit would take the object's state over --max-state-bytes."""


def set_state(
    p: PartitionOps, service: str, key: str, name: str, value: bytes | None
) -> dict[str, bytes]:
    """Edits one state value of an object no exclusive handler holds right now, within
    the same limit handlers have; returns the state after the edit.

    Raises:
        NotAllowed: an exclusive handler holds the key.
        TooLarge: the edit would take the state over --max-state-bytes.
    """
    holder = p.lock_holder(service, key)
    if holder is not None:
        held = p.live.get(holder)
        if held is not None and held.record.status == Status.PAUSED:
            # Waiting would not help: nothing runs a paused invocation but an operator.
            raise NotAllowed(
                f"{service} key {key!r} is held by invocation {holder}, which is paused: "
                "resume it (it releases the key when it ends) or kill it, then edit"
            )
        raise NotAllowed(f"{service} key {key!r} is held by invocation {holder}; try again later")
    values = state.load(p.kv, service, key)
    batch = Batch()
    if value is None:
        values.pop(name, None)
        state.delete(batch, service, key, name)
    else:
        values[name] = value
        too_big = commands.state_over_limit(p, service, key, values)
        if too_big is not None:
            raise TooLarge(too_big)
        state.put(batch, service, key, name, value)
    p.submit(batch)
    return values


def complete_awakeable(p: PartitionOps, awakeable_id: str, result: Result) -> str | None:
    """Completes an awakeable (from outside any handler); returns why not if it cannot."""
    batch = Batch()
    problem = p.waits.complete_awakeable(batch, awakeable_id, result)
    if problem is None:
        p.submit(batch)
    return problem


def complete_promise(p: PartitionOps, service: str, key: str, name: str, result: Result) -> bool:
    """Completes a workflow's durable promise once; False if it was already completed."""
    batch = Batch()
    done = p.waits.complete_promise(batch, service, key, name, result)
    if done:
        p.submit(batch)
    return done
