"""The gRPC status codes the broker itself gives results and callers, by number.

Journaled failures carry a numeric code (`durable.v1.Failure.code`) so that storage does
not depend on grpc's enum; these names keep the numbers in one place.

  CANCELLED            an invocation cancelled by an operator (its handler sees it)
  UNKNOWN              an invocation that gave up after its retry policy's attempts
  INVALID_ARGUMENT     a call the broker refuses before journaling (bad body, key)
  NOT_FOUND            attaching to, or reading, an invocation that does not exist
  RESOURCE_EXHAUSTED   a journal or state limit reached: retrying cannot help
  FAILED_PRECONDITION  a durable promise completed twice
  ABORTED              an invocation killed by an operator; a rejected promise
  UNIMPLEMENTED        an unknown service or method
  INTERNAL             a replay that diverged, where divergence is terminal (tests)
"""

from __future__ import annotations

import grpc

CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
NOT_FOUND = 5
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
ABORTED = 10
UNIMPLEMENTED = 12
INTERNAL = 13


def grpc_status(code: int) -> grpc.StatusCode:
    """The status a failure with numeric `code` is answered with: UNKNOWN for no such
    code, and for OK, which is no failure (aborting a call with OK ends it with no
    response and no error, so the caller waits until its deadline)."""
    if not is_failure(code):
        return grpc.StatusCode.UNKNOWN
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status
    return grpc.StatusCode.UNKNOWN


def is_failure(code: int) -> bool:
    """Whether `code` is a gRPC status code other than OK (1-16)."""
    return 1 <= code <= 16
