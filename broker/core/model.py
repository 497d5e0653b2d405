"""In-memory view of invocations that have not completed yet."""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from durable.v1 import invocation_pb2, journal_pb2, protocol_pb2

from . import entropy

if TYPE_CHECKING:
    from opentelemetry.trace import Span

Invocation = invocation_pb2.Invocation
Entry = journal_pb2.JournalEntry
Result = journal_pb2.Result
RetryPolicy = protocol_pb2.RetryPolicy


class Status:
    """`InvocationStatus` values as plain class attributes.

    The protobuf enum wrapper answers each `InvocationStatus.X` through a Python
    `__getattr__`, and the partition reads statuses several times per event.
    """

    _enum = invocation_pb2.InvocationStatus
    Name = _enum.Name
    PENDING = invocation_pb2.PENDING
    RUNNING = invocation_pb2.RUNNING
    SUSPENDED = invocation_pb2.SUSPENDED
    BACKING_OFF = invocation_pb2.BACKING_OFF
    COMPLETED = invocation_pb2.COMPLETED
    PAUSED = invocation_pb2.PAUSED
    QUEUED = invocation_pb2.QUEUED


def new_invocation_id() -> str:
    """`inv_` and 22 URL-safe characters (128 random bits)."""
    return "inv_" + base64.urlsafe_b64encode(entropy.token_bytes(16)).rstrip(b"=").decode()


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch."""
    return int(time.time() * 1000)


def failure(code: int, message: str) -> Result:
    """A failed result."""
    return Result(failure=journal_pb2.Failure(code=code, message=message))


class UnknownInvocation(LookupError):
    """No invocation with that id (or it was purged)."""


class IdempotencyConflict(ValueError):
    """An idempotency key already used with a different request body.

    Args:
        invocation_id: The invocation the key is bound to.
    """

    def __init__(self, invocation_id: str) -> None:
        super().__init__(invocation_id)
        self.invocation_id = invocation_id


class Listed(Protocol):
    """What the admin API filters live invocations by (`Live.listed`)."""

    @property
    def status(self) -> invocation_pb2.InvocationStatus.ValueType: ...
    @property
    def service(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def idempotency_key(self) -> str: ...
    @property
    def deployment_id(self) -> str: ...


class _Packed:
    """A packed record's `Listed` fields: a plain object, since a protobuf message of
    its own costs kilobytes of arena per waiting invocation."""

    __slots__ = ("deployment_id", "idempotency_key", "key", "method", "service", "status")

    def __init__(self, record: Invocation) -> None:
        self.status = record.status
        # Names repeat over thousands of invocations: shared, not copied.
        self.service = sys.intern(record.service)
        self.method = sys.intern(record.method)
        self.key = record.key
        self.idempotency_key = record.idempotency_key
        self.deployment_id = sys.intern(record.deployment_id)


class Live:
    """An invocation the broker is still driving: its record, journal and attempt.

    A suspended invocation's journal can be dropped from memory (`evict`) and is read
    back from storage on first use, so that waiting costs the broker little.
    """

    __slots__ = (
        "_journal",
        "_listed",
        "_loader",
        "_record",
        "_record_bytes",
        "attempt",
        "attempt_span",
        "id",
        "inbox_seq",
        "order",
        "span",
        "state_sizes",
        "step_traceparent",
        "version",
    )

    def __init__(
        self,
        record: Invocation,
        journal: list[Entry],
        loader: Callable[[str], list[Entry]] | None = None,
    ) -> None:
        self._record: Invocation | None = record
        self._record_bytes = b""
        # While evicted: the fields the admin API lists and filters by (`listed`).
        self._listed: _Packed | None = None
        # The invocation id, read on every event: kept apart from the record, which is
        # packed while evicted.
        self.id: str = record.id
        # Newest first by this in the admin API's listings (the creation time never
        # changes): read from a slot, it sorts 50,000 in milliseconds.
        self.order: tuple[int, str] = (record.created_at_ms, self.id)
        self._journal: list[Entry] | None = journal
        self._loader = loader
        # The number of the attempt running now; 0 while none is.
        self.attempt = 0
        # Where the invocation sits in its key's inbox, while it waits there.
        self.inbox_seq: int | None = None
        # Open tracing spans (only when tracing is on; lost, not reopened, on restart).
        self.span: Span | None = None
        self.attempt_span: Span | None = None
        # The traceparent of the step being journaled: a callee's parent span.
        self.step_traceparent = ""
        # Bumped on every write of this invocation: eviction checks nothing is pending.
        self.version = 0
        # An exclusive handler's view of its object's state, each value's name and size
        # (`commands.state_sizes`); None until a state command first needs it.
        self.state_sizes: dict[str, int] | None = None

    @property
    def record(self) -> Invocation:
        """The invocation's record (kept serialized while evicted: a few hundred bytes)."""
        if self._record is None:
            self._record = Invocation.FromString(self._record_bytes)
            self._record_bytes = b""
            self._listed = None
        return self._record

    @property
    def listed(self) -> Listed:
        """For reading only: the record's status, service, method, key, idempotency key
        and deployment, which the admin API filters by (with `order` and `id`). The record itself,
        or while it is packed a copy of just those fields made when it was: a listing
        of many waiting invocations unpacks none of them."""
        if self._record is not None:
            return self._record
        assert self._listed is not None
        return self._listed

    def snapshot(self) -> Invocation:
        """The record, for reading only: an evicted one stays packed."""
        if self._record is None:
            return Invocation.FromString(self._record_bytes)
        return self._record

    @property
    def journal(self) -> list[Entry]:
        """The journal, read back from storage if it was evicted."""
        if self._journal is None:
            assert self._loader is not None, "evicted without a loader"
            self._journal = self._loader(self.id)
        return self._journal

    def evict(self) -> None:
        """Drops the journal from memory (storage has all of it) and packs the record."""
        if self._loader is not None:
            self._journal = None
            if self._record is not None:
                r = self._record
                self._record_bytes = r.SerializeToString()
                self._listed = _Packed(r)
                self._record = None

    @property
    def evicted(self) -> bool:
        """Whether the journal is out of memory right now."""
        return self._journal is None

    @property
    def lock_key(self) -> tuple[str, str]:
        """The (service, key) an exclusive invocation serializes on."""
        return (self.record.service, self.record.key)
