"""Retries: backing off after a failed attempt, and resuming or parking an invocation."""

from __future__ import annotations

import logging

from .. import codes
from ..storage import Batch
from . import actions
from .model import Live, RetryPolicy, Status, failure
from .ports import PartitionOps

log = logging.getLogger("broker.core")


def backoff(
    p: PartitionOps, batch: Batch, live: Live, message: str, retry_after: float | None = None
) -> None:
    record = live.record
    policy = p.registry.retry_policy(record.service, record.method, record.deployment_id)
    if policy is not None and policy.max_attempts and record.attempts >= policy.max_attempts:
        record.last_error = message
        if policy.on_max_attempts == policy.PAUSE:
            record.status = Status.PAUSED
            record.next_retry_at_ms = 0
            log.warning("invocation %s paused after %d attempts", live.id, record.attempts)
        else:
            p.complete(
                batch,
                live,
                failure(codes.UNKNOWN, f"gave up after {record.attempts} attempts: {message}"),
            )
        p.save(batch, live)
        return
    delay = retry_after if retry_after is not None else backoff_delay(p, policy, record.attempts)
    p.metrics.count("retried", record.service)
    record.status = Status.BACKING_OFF
    record.last_error = message
    record.next_retry_at_ms = p.now_ms() + int(delay * 1000)
    log.warning(
        "invocation %s attempt %d failed, retrying in %.2fs: %s",
        live.id,
        record.attempts,
        delay,
        message,
    )
    p.save(batch, live)
    batch.now(actions.ScheduleRetry(live.id, delay))


def backoff_delay(p: PartitionOps, policy: RetryPolicy | None, attempts: int) -> float:
    if policy is None:
        return p.settings.backoff(attempts)
    delay = (policy.initial_interval_ms / 1000) * (policy.factor or 2.0) ** max(attempts - 1, 0)
    cap = policy.max_interval_ms / 1000 if policy.max_interval_ms else p.settings.retry_max
    return float(min(delay, cap))


def on_retry_due(p: PartitionOps, invocation_id: str) -> None:
    """A backing-off invocation's delay is over: its next attempt starts."""
    live = p.live.get(invocation_id)
    if live is not None and live.record.status == Status.BACKING_OFF:
        batch = Batch()
        p.start_attempt(batch, live)
        p.submit(batch)


def resume(p: PartitionOps, live: Live) -> None:
    """Retries a paused or backing-off invocation now."""
    batch = Batch()
    resume_in(p, batch, live)
    p.submit(batch)


def resume_in(p: PartitionOps, batch: Batch, live: Live) -> None:
    """`resume` in `batch` (a cancellation uses it too, so the handler hears it now)."""
    batch.now(actions.CancelRetry(live.id))
    if live.record.status in (Status.PAUSED, Status.BACKING_OFF):
        live.record.status = Status.BACKING_OFF
        p.start_attempt(batch, live)


def pause(p: PartitionOps, live: Live) -> None:
    """Parks an invocation: its attempt (if any) is abandoned, nothing resumes it
    until `resume`. Its journal is kept, so it goes on where it stopped."""
    batch = Batch()
    batch.now(actions.CancelRetry(live.id))
    p.abandon_attempt(batch, live, "paused")
    live.record.status = Status.PAUSED
    live.record.next_retry_at_ms = 0
    p.save(batch, live)
    p.submit(batch)
