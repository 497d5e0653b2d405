"""What an endpoint did in an attempt, as the invoker reports it to the partition."""

from __future__ import annotations

import dataclasses

from durable.v1 import journal_pb2


@dataclasses.dataclass(frozen=True, slots=True)
class Proposed:
    """The handler proposed its next journal entry."""

    index: int
    entry: journal_pb2.JournalEntry


@dataclasses.dataclass(frozen=True, slots=True)
class RanResult:
    """A side effect's outcome, for a run entry already journaled."""

    index: int
    result: journal_pb2.Result


@dataclasses.dataclass(frozen=True, slots=True)
class Suspended:
    """The handler waits on entries not completed yet; its attempt is over."""

    waiting_on: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Ended:
    """The handler ended its attempt (after its output)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Failed:
    """The attempt failed: transiently (a handler error, a crash, a broken stream)
    unless `terminal_code` says otherwise."""

    message: str
    retry_after: float | None = None
    pause: bool = False
    # The SDK's replay diverged from the journal.
    non_determinism: bool = False
    # Not transient: no attempt can ever be made (the journal outgrew what one message
    # can carry); the invocation fails with this status code.
    terminal_code: int = 0


AttemptEvent = Proposed | RanResult | Suspended | Ended | Failed
