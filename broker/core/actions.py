"""What the partition asks to happen outside itself, as data.

The partition applies an event to its in-memory view and to one `Batch` of writes, and
attaches actions to the batch; one driver (`driver.py`) carries them out. `Now` actions
run as soon as the batch is queued (they order themselves behind it, or must not wait
for it); every other action runs once the batch is durable, in commit order.

A follower of a replicated partition would apply the same batches and drop the actions.
"""

from __future__ import annotations

import dataclasses

from durable.v1 import journal_pb2, protocol_pb2

Result = journal_pb2.Result


# ---- For the invoker


@dataclasses.dataclass(frozen=True, slots=True)
class StartAttempt:
    """Open attempt `attempt` of an invocation on its deployment. The invoker sends
    `start` once everything queued before it is durable (a `Now` action), its own batch
    included, unless `early`: the first attempt of a new invocation, whose journal is only
    its input. That one goes while its own batch is still being made durable: at once
    without state, or once every batch before its own is durable when it reads state
    (its own batch writes none of it). Nothing it carries is then a step to acknowledge,
    no value it reads can be lost, and whatever it does is written after its invocation,
    so it cannot become durable first or reach a caller before it."""

    invocation_id: str
    attempt: int
    deployment_id: str
    start: protocol_pb2.StartMessage
    early: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class SendCompletion:
    """Hand a durable entry result to the running attempt (dropped if it has ended)."""

    invocation_id: str
    attempt: int
    index: int
    result: Result


@dataclasses.dataclass(frozen=True, slots=True)
class AbandonAttempt:
    """Stop an attempt now: its stream is cancelled, what it still sends is ignored."""

    invocation_id: str
    attempt: int
    reason: str


# ---- For the clocks


@dataclasses.dataclass(frozen=True, slots=True)
class ArmTimer:
    """A durable timer was written: fire it at `due_ms` (entry -1: a delayed start)."""

    due_ms: int
    invocation_id: str
    entry_index: int


@dataclasses.dataclass(frozen=True, slots=True)
class ArmSchedule:
    """A schedule's next slot was written: look at the schedule at `due_ms`."""

    due_ms: int
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduleRetry:
    """Retry the invocation after `delay` seconds unless cancelled first (a `Now`
    action: the backoff counts from the failure, not from its commit)."""

    invocation_id: str
    delay: float


@dataclasses.dataclass(frozen=True, slots=True)
class CancelRetry:
    """Forget a scheduled retry (a `Now` action)."""

    invocation_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class WakeLimits:
    """Invocations wait for rate-limit tokens: call the partition's `on_limits_due` at
    `at_ms` (a `Now` action; not durable: recovery looks at the queues again)."""

    at_ms: int


# ---- Back to the partition, once the writes they depend on are durable


@dataclasses.dataclass(frozen=True, slots=True)
class AnswerCallers:
    """The invocation's result is durable: answer whoever waits for it, drop it from
    memory."""

    invocation_id: str
    result: Result


@dataclasses.dataclass(frozen=True, slots=True)
class IdentityWritten:
    """The idempotency row is durable: the in-memory copy can go."""

    identity: tuple[str, str, str, str]
    invocation_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class PromiseWritten:
    """A completed promise is durable: reads can go to storage."""

    service: str
    key: str
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class Evict:
    """The invocation suspended: drop its journal from memory if nothing changed since
    `version` was written."""

    invocation_id: str
    version: int


Action = (
    StartAttempt
    | SendCompletion
    | AbandonAttempt
    | ArmTimer
    | ArmSchedule
    | ScheduleRetry
    | CancelRetry
    | WakeLimits
    | AnswerCallers
    | IdentityWritten
    | PromiseWritten
    | Evict
)


# ---- For the outbox


@dataclasses.dataclass(frozen=True, slots=True)
class Ship:
    """Messages to `destination` up to `seq` are durable: deliver them."""

    destination: int
    seq: int
