"""The SDK's one error taxonomy.

* `TerminalError` ends an invocation for good: it is journaled as the handler's result,
  reaches the caller as a gRPC status, and is never retried. Sagas catch it to compensate.
* Any other `Exception` is transient: the attempt fails and the broker retries it with
  exponential backoff, replaying the journal.
* Control flow (`Suspended`, `NonDeterminismError`, `RunFailed`, `PauseInvocation`)
  derives from `BaseException`, so a handler's `except Exception:` cannot swallow it by
  accident.
"""

from __future__ import annotations

import datetime
import math

import grpc


class TerminalError(Exception):
    """A failure that must not be retried.

    Args:
        message: What went wrong, for the caller.
        code: The gRPC status code the caller receives (default `UNKNOWN`). `OK` and
            numbers that are no status code (outside 1-16) become `UNKNOWN`: a failure
            cannot be OK, and the wire has no room for a negative code.
    """

    def __init__(self, message: str, code: grpc.StatusCode | int = grpc.StatusCode.UNKNOWN) -> None:
        super().__init__(message)
        self.message = message
        self.code: int = _status_number(code)

    @property
    def status_code(self) -> grpc.StatusCode:
        """The code as a `grpc.StatusCode`."""
        for status in grpc.StatusCode:
            if status.value[0] == self.code:
                return status
        return grpc.StatusCode.UNKNOWN


def _status_number(code: object) -> int:
    """A gRPC status code's number, UNKNOWN for anything that is not a failure code:
    OK, numbers outside 1-16, and what is no code at all (a name as a string, None)."""
    if isinstance(code, grpc.StatusCode):
        number: int = code.value[0]
    elif isinstance(code, int) and not isinstance(code, bool):
        number = code
    else:
        number = 0
    return number if 1 <= number <= 16 else grpc.StatusCode.UNKNOWN.value[0]


class RetryableError(Exception):
    """A transient failure that asks for its retry after a specific delay.

    Args:
        message: What went wrong.
        retry_after: Seconds (or a timedelta) before the broker retries the attempt.
    """

    def __init__(self, message: str, retry_after: datetime.timedelta | float) -> None:
        super().__init__(message)
        try:
            wait = (
                retry_after.total_seconds()
                if isinstance(retry_after, datetime.timedelta)
                else float(retry_after)
            )
        except (TypeError, ValueError, OverflowError):
            wait = math.nan
        # A reset time already past is "now"; what is no number, or beyond what the
        # protocol carries (ms in 32 bits, 49 days), is the longest wait it carries.
        self.retry_after = (
            MAX_RETRY_AFTER_S if math.isnan(wait) else min(max(wait, 0.0), MAX_RETRY_AFTER_S)
        )


# The longest delay a RetryableError can ask for: the protocol's 32-bit milliseconds.
MAX_RETRY_AFTER_S = (2**32 - 1) / 1000


class PauseInvocation(BaseException):
    """Raised by the SDK when a side effect exhausted a pausing retry policy.

    A BaseException, as `RunFailed` is: a handler's `except Exception` must not take it
    for an ordinary failure and go on (the run's entry has no result, so a replay would
    run the side effect again and diverge from a fallback journaled meanwhile)."""


class Suspended(BaseException):
    """Raised at an await when the invocation suspends; the broker resumes it later."""


class RunFailed(BaseException):
    """A `ctx.run` function raised (not a `TerminalError`) with no retry policy to retry
    it in place: the attempt fails and the broker retries it.

    A BaseException, as `Suspended` is: the run's entry is journaled without a result,
    so the next attempt runs the function again; a handler that caught this with
    `except Exception` and went on (to a fallback step) would run both paths and then
    diverge from its own journal at the next replay.
    """


class NonDeterminismError(BaseException):
    """The handler proposed a step that differs from the journal it is replaying.

    Replaying code must take the same steps in the same order; this attempt fails and
    the broker retries it, recording this message as the invocation's last error.
    """

    def __init__(self, index: int, journaled: str, proposed: str) -> None:
        super().__init__(
            f"non-determinism at journal entry {index}: the journal has {journaled}, "
            f"but the handler proposed {proposed}"
        )
        self.index = index
        self.journaled = journaled
        self.proposed = proposed


class ProtocolViolation(ValueError):
    """The broker sent something the service protocol does not allow (a journal that
    does not begin with its input, a completion past the journal's end, a second start).

    The endpoint answers it as the peer's mistake (INVALID_ARGUMENT, or an error for the
    one attempt it concerns) and logs one line, never a traceback: it is not a bug here.
    """
