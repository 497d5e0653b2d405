"""Retry policies for handlers (applied by the broker) and side effects (by the SDK)."""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Literal

import grpc

from durable.v1 import protocol_pb2

from ._errors import TerminalError

# The longest durable timer: a wake-up time past it would not fit the journal's field.
MAX_TIMER_SECONDS = 100 * 365 * 86400


def seconds(duration: datetime.timedelta | float) -> float:
    """Seconds in a timedelta or a number of seconds."""
    if isinstance(duration, datetime.timedelta):
        return duration.total_seconds()
    return float(duration)


def timer_seconds(duration: datetime.timedelta | float, what: str) -> float:
    """`seconds(duration)` for a durable timer (`what`: e.g. `ctx.sleep`).

    Raises:
        TerminalError: INVALID_ARGUMENT for NaN, an infinity or more than 100 years:
            the handler computes the same duration on every retry.
    """
    try:
        value = seconds(duration)
    except (OverflowError, TypeError, ValueError):
        value = math.inf  # 10**400 seconds, or no number at all
    if not math.isfinite(value) or value > MAX_TIMER_SECONDS:
        raise TerminalError(
            f"{what}: the duration must be a finite number of seconds up to 100 years, not {value}",
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    return value


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
