"""Applying what other partitions sent (see `outbox.py` for the sending side).

Each message is applied in the batch that moves the sender's dedup mark, so a message
is applied exactly once however often it is delivered.
"""

from __future__ import annotations

import logging

from durable.v1 import cluster_pb2, journal_pb2

from ..codes import NOT_FOUND
from ..storage import Batch
from . import control
from .model import Result, Status, failure
from .ports import PartitionOps

log = logging.getLogger("broker.core")


def deliver(p: PartitionOps, source: int, envelopes: list[cluster_pb2.Envelope]) -> int:
    """Applies the messages from `source` not applied yet, in one batch that also moves
    the dedup mark; returns the mark."""
    batch = Batch()
    for envelope in envelopes:
        if not p.outbox.fresh(source, envelope.seq):
            continue
        try:
            _apply(p, batch, envelope.message)
        except Exception:  # a message that cannot apply must not block those after it
            log.exception("message %d from partition %d could not be applied", envelope.seq, source)
        p.outbox.applied(batch, source, envelope.seq)
    if batch.puts:
        p.submit(batch)
    return p.outbox.applied_mark(source)


def _apply(p: PartitionOps, batch: Batch, message: cluster_pb2.OutboxMessage) -> None:
    kind = message.WhichOneof("kind")
    if kind == "invoke":
        p.start_delivered(batch, message.invoke)
    elif kind == "complete":
        m = message.complete
        p.complete_waiter(batch, m.invocation_id, m.entry_index, m.result)
    elif kind == "attach":
        w = message.attach
        result = p.waits.attach(batch, (w.waiter_id, w.waiter_index), w.target_id)
        if result is not None:
            p.complete_waiter(batch, w.waiter_id, w.waiter_index, result)
    elif kind == "get_output":
        w = message.get_output
        p.complete_waiter(batch, w.waiter_id, w.waiter_index, _output(p, w.target_id))
    elif kind in ("cancel", "kill"):
        target = p.live.get(getattr(message, kind).invocation_id)
        if target is not None and target.record.status != Status.COMPLETED:
            (control.cancel_in if kind == "cancel" else control.kill_in)(p, batch, target)
    elif kind == "awakeable":
        a = message.awakeable
        problem = p.waits.complete_awakeable(batch, a.awakeable_id, a.result)
        if problem is not None:
            log.warning("awakeable from another partition not completed: %s", problem)


def _output(p: PartitionOps, target: str) -> Result:
    """What `ctx.get_output` sees of `target`: empty while it runs."""
    if target in p.live:
        return Result(empty=journal_pb2.Empty())
    done = p.completed(target)
    return done or failure(NOT_FOUND, f"no invocation {target!r}")
