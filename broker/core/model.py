"""In-memory view of invocations that have not completed yet."""

from __future__ import annotations

import base64
import dataclasses
import secrets
import time
from typing import TYPE_CHECKING

from durable.v1 import invocation_pb2, journal_pb2, protocol_pb2

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from ..invoker import Attempt

Invocation = invocation_pb2.Invocation
Entry = journal_pb2.JournalEntry
Result = journal_pb2.Result
Status = invocation_pb2.InvocationStatus
RetryPolicy = protocol_pb2.RetryPolicy


def new_invocation_id() -> str:
    """`inv_` and 22 URL-safe characters (128 random bits)."""
    return "inv_" + base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch."""
    return int(time.time() * 1000)


def failure(code: int, message: str) -> Result:
    """A failed result."""
    return Result(failure=journal_pb2.Failure(code=code, message=message))


@dataclasses.dataclass(eq=False)
class Live:
    """An invocation the broker is still driving: its record, journal and attempt."""

    record: Invocation
    journal: list[Entry]
    attempt: Attempt | None = None
    # Where the invocation sits in its key's inbox, while it waits there.
    inbox_seq: int | None = None
    # Open tracing spans (only when tracing is on; lost, not reopened, on restart).
    span: Span | None = None
    attempt_span: Span | None = None
    # The traceparent of the step being journaled: a callee's parent span.
    step_traceparent: str = ""

    @property
    def id(self) -> str:
        """The invocation id."""
        return self.record.id

    @property
    def lock_key(self) -> tuple[str, str]:
        """The (service, key) an exclusive invocation serializes on."""
        return (self.record.service, self.record.key)
