"""Retry policies for handlers (applied by the broker) and side effects (by the SDK)."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Literal

from durable.v1 import protocol_pb2


def seconds(duration: datetime.timedelta | float) -> float:
    """Seconds in a timedelta or a number of seconds."""
    if isinstance(duration, datetime.timedelta):
        return duration.total_seconds()
    return float(duration)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How failed attempts are retried: exponential backoff, optionally bounded.

    Args:
        initial_interval: Delay before the first retry, in seconds.
        factor: Each delay is the previous one times this.
        max_interval: Delays never exceed this, in seconds.
        max_attempts: Give up after this many attempts (None: never).
        on_max_attempts: When giving up, "fail" ends with a terminal error; "pause"
            parks the invocation as PAUSED until an operator resumes it
            (`brokerctl invocations resume ID`).
    """

    initial_interval: float = 0.1
    factor: float = 2.0
    max_interval: float = 30.0
    max_attempts: int | None = None
    on_max_attempts: Literal["fail", "pause"] = "fail"

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (from 1)."""
        return float(
            min(self.initial_interval * self.factor ** max(attempt - 1, 0), self.max_interval)
        )

    def to_proto(self) -> protocol_pb2.RetryPolicy:
        """The policy as the broker reads it."""
        return protocol_pb2.RetryPolicy(
            initial_interval_ms=int(self.initial_interval * 1000),
            factor=self.factor,
            max_interval_ms=int(self.max_interval * 1000),
            max_attempts=self.max_attempts or 0,
            on_max_attempts=(
                protocol_pb2.RetryPolicy.PAUSE
                if self.on_max_attempts == "pause"
                else protocol_pb2.RetryPolicy.FAIL
            ),
        )
