"""What an endpoint did in an attempt, applied to the partition.

Each function takes one event of the running attempt (`events.py`): a proposed entry, a
side effect's result, a suspension, the end, a failure. It answers why the event fails
the attempt when it does (a protocol violation), or None.
"""

from __future__ import annotations

import logging

from .. import codes, tracing
from ..storage import Batch, invocations, journal, keys
from . import actions, commands, control, retries
from .events import AttemptEvent, Proposed, RanResult, Suspended
from .model import Entry, Live, Result, Status, failure
from .ports import PartitionOps

# Room in an entry for its names and framing around a payload at --max-payload-bytes.
ENTRY_HEADROOM = 64 * 1024

log = logging.getLogger("broker.core")


def _after_output(invocation_id: str, attempt: int, what: str) -> str:
    """Anything an attempt sends after its output would change a result that callers
    may already hold (and rerun effects of a finished invocation): refused, unapplied,
    and logged here, where it is refused. The failure the attempt reports next may find
    the invocation already out of memory (its completion durable), so it cannot be
    left to `on_failed` to say."""
    message = f"protocol violation: {what} after the invocation's output; ignored"
    log.warning("invocation %s: attempt %d after its output: %s", invocation_id, attempt, message)
    return message


def after_completion(
    p: PartitionOps, invocation_id: str, attempt: int, event: AttemptEvent
) -> str | None:
    """An event of an invocation no longer in memory: its completion became durable
    (which can happen before the attempt's next message is read). From its last attempt
    anything but the end or a failure is still a violation; from another attempt it is
    stale."""
    match event:
        case Proposed(index, _):
            what = f"entry {index} proposed"
        case RanResult(index, _):
            what = f"run result for entry {index} sent"
        case Suspended():
            what = "suspension sent"
        case _:
            return None
    record = invocations.get(p.kv, invocation_id)
    if record is None or record.status != Status.COMPLETED or record.attempts != attempt:
        return None
    return _after_output(invocation_id, attempt, what)


def on_entry(p: PartitionOps, live: Live, index: int, entry: Entry) -> str | None:
    if live.record.status == Status.COMPLETED:
        return _after_output(live.id, live.attempt, f"entry {index} proposed")
    if index != len(live.journal):
        return (
            f"protocol violation: entry {index} proposed, but the journal has "
            f"{len(live.journal)} {'entry' if len(live.journal) == 1 else 'entries'}"
        )
    kind = entry.WhichOneof("command")
    log.debug("invocation %s step %d: %s", live.id, index, kind)
    if index >= p.settings.max_journal_entries and kind != "output":
        fail_terminally(
            p,
            live,
            f"journal limit reached: {live.record.service}/{live.record.method} proposed "
            f"entry {index}, the limit is {p.settings.max_journal_entries} entries "
            "(--max-journal-entries)",
        )
        return None
    over = _over_payload_limit(p, live, entry.ByteSize(), f"entry {index} ({kind})")
    if over is None and kind == "output" and entry.result.HasField("value"):
        # The value is the caller's response message itself: no headroom for framing.
        over = _over_payload_limit(p, live, len(entry.result.value), "its output", headroom=0)
    if over is not None:
        fail_terminally(p, live, over)
        return None
    stored = Entry()
    stored.CopyFrom(entry)
    stored.appended_at_ms = p.now_ms()  # for operators' timelines; not the SDK's to set
    stored.ClearField("completed_at_ms")
    if kind == "output" and stored.result.HasField("failure"):
        failed = stored.result.failure
        if not codes.is_failure(failed.code):
            # An endpoint's failure "OK" (or no status code at all): the record and the
            # caller say UNKNOWN, as gRPC does for a code it does not know.
            failed.code = codes.UNKNOWN
    # A side effect that finished before its entry left arrives with its outcome:
    # journaled together, and acknowledged like a separate run result would be.
    ran: Result | None = None
    if kind == "run" and stored.HasField("result"):
        ran = Result()
        ran.CopyFrom(stored.result)
    if kind not in commands.SDK_COMPLETED:
        stored.ClearField("result")
    batch = Batch()
    live.step_traceparent = tracing.step(live, index, stored)
    try:
        result = commands.apply(p, batch, live, index, stored) or ran
    except commands.ProtocolViolation as e:
        return f"protocol violation: {e}"
    except commands.LimitExceeded as e:
        fail_terminally(p, live, str(e))
        return None
    except keys.KeyTooLong as e:
        # The handler named something storage cannot key: retrying changes nothing.
        fail_terminally(p, live, f"entry {index} ({kind}): {e}", codes.INVALID_ARGUMENT)
        return None
    live.journal.append(stored)
    if stored.HasField("result") or result is not None:
        stored.completed_at_ms = stored.appended_at_ms
    if result is not None:
        stored.result.CopyFrom(result)
        p.deliver(batch, live, index, result)
    journal.put(batch, live.id, index, stored)
    if kind == "output":
        p.complete(batch, live, stored.result)
    p.save(batch, live)
    p.submit(batch)
    return None


def on_run_result(p: PartitionOps, live: Live, index: int, result: Result) -> str | None:
    """A side effect's outcome: journal it, then let the handler see it."""
    if live.record.status == Status.COMPLETED:
        return _after_output(live.id, live.attempt, f"run result for entry {index} sent")
    if index >= len(live.journal) or live.journal[index].WhichOneof("command") != "run":
        return f"protocol violation: run result for entry {index}, which is not a run"
    if live.journal[index].HasField("result"):
        return None  # a duplicate (it came with its entry): nothing to write
    over = _over_payload_limit(p, live, result.ByteSize(), f"the result of run entry {index}")
    if over is not None:
        fail_terminally(p, live, over)
        return None
    batch = Batch()
    p.complete_entry(batch, live, index, result)
    p.submit(batch)
    return None


def on_suspension(p: PartitionOps, live: Live, waiting_on: list[int]) -> str | None:
    """The handler waits on entries not completed yet; its stream closes."""
    if live.record.status == Status.COMPLETED:
        return _after_output(live.id, live.attempt, "suspension sent")
    for i in waiting_on:
        if i >= len(live.journal) or live.journal[i].WhichOneof("command") not in (
            *commands.AWAITABLE,
            "run",
            "peek_promise",
            "complete_promise",
            "get_output",
        ):
            return f"protocol violation: suspended on entry {i}, which cannot complete"
    if not waiting_on:
        return "protocol violation: suspended waiting on nothing"
    live.attempt = 0
    tracing.end_attempt(live, suspended_on=sorted(waiting_on))
    batch = Batch()
    if any(live.journal[i].HasField("result") for i in waiting_on):
        # Completed while the suspension was in flight: go on at once.
        p.start_attempt(batch, live)
    else:
        live.record.status = Status.SUSPENDED
        live.record.waiting_on[:] = sorted(waiting_on)
        p.free_slot(batch, live)  # a suspended invocation holds no slot (core/limits.py)
        p.metrics.count("suspended", live.record.service)
        log.debug("invocation %s suspended, waiting on %s", live.id, live.record.waiting_on)
    p.save(batch, live)
    if live.record.status == Status.SUSPENDED:
        batch.then(actions.Evict(live.id, live.version))
    p.submit(batch)
    return None


def on_end(p: PartitionOps, live: Live) -> str | None:
    """The handler ended its attempt; it must have proposed its output first."""
    if live.record.status != Status.COMPLETED:
        return "protocol violation: the attempt ended without an output entry"
    live.attempt = 0
    tracing.end_attempt(live)
    return None


def on_failed(
    p: PartitionOps,
    live: Live,
    message: str,
    retry_after: float | None,
    pause: bool,
    non_determinism: bool,
    terminal_code: int = 0,
) -> None:
    """The attempt failed transiently: retry, or park the invocation when the
    handler asked to pause. A replay that diverged from the journal is retried too
    (a fixed deployment can recover it), unless `non_determinism_terminal` is set:
    then the invocation fails with INTERNAL. With `terminal_code`, no attempt can
    ever succeed: the invocation fails with it."""
    live.attempt = 0
    tracing.end_attempt(live, error=message)
    if live.record.status == Status.COMPLETED:
        # Its output stands; what the attempt did after it was refused (and logged) as
        # it arrived. A stream that broke after the output is no one's fault.
        log.info("invocation %s: attempt ended after its output: %s", live.id, message)
        return
    batch = Batch()
    code = terminal_code or (
        codes.INTERNAL if non_determinism and p.settings.non_determinism_terminal else 0
    )
    if code:
        log.warning("invocation %s failed: %s", live.id, message)
        live.record.last_error = message
        p.complete(batch, live, failure(code, message))
        p.save(batch, live)
    elif pause:
        live.record.status = Status.PAUSED
        live.record.last_error = message
        live.record.next_retry_at_ms = 0
        log.warning("invocation %s paused: %s", live.id, message)
        p.save(batch, live)
    else:
        retries.backoff(p, batch, live, message, retry_after)
        if control.cancel_pending_runs(p, batch, live):
            # The cancellation now waits in the journal: run it at once, to hear it.
            retries.resume_in(p, batch, live)
    p.submit(batch)


def _over_payload_limit(
    p: PartitionOps, live: Live, size: int, what: str, headroom: int = ENTRY_HEADROOM
) -> str | None:
    """Why `what` (`size` bytes, from the endpoint) is refused, if it is: the broker
    takes payloads up to --max-payload-bytes from endpoints as from callers. A larger
    one would reach the caller only if its client took more than gRPC's default, and
    every retry would journal it again."""
    limit = p.settings.max_payload_bytes
    if size <= limit + headroom:
        return None
    return (
        f"payload limit reached: {live.record.service}/{live.record.method} sent {what} "
        f"of {size} bytes, over the {limit}-byte limit (--max-payload-bytes)"
    )


def fail_terminally(
    p: PartitionOps, live: Live, message: str, code: int = codes.RESOURCE_EXHAUSTED
) -> None:
    """Ends the invocation with `code` (by default RESOURCE_EXHAUSTED: retrying would
    hit the same limit)."""
    log.warning("invocation %s: %s", live.id, message)
    batch = Batch()
    p.abandon_attempt(batch, live, message)
    p.complete(batch, live, failure(code, message))
    p.save(batch, live)
    p.submit(batch)
