"""A failure is never OK: what a handler or an endpoint says with code OK, a negative
code or a number that is no status code reaches the caller as UNKNOWN (an attack found
OK hanging the caller until its deadline and -1 retried for ever)."""

from __future__ import annotations

import grpc
import pytest
from durable import TerminalError

from broker import codes


@pytest.mark.parametrize(
    "given", [grpc.StatusCode.OK, 0, -1, 17, 99, 2**40, "NOT_FOUND", None, True]
)
def test_a_terminal_error_without_a_failure_code_is_unknown(given: object) -> None:
    # A name as a string, None or True raised AttributeError or TypeError, retried for ever.
    error = TerminalError("no such thing", given)  # type: ignore[arg-type]
    assert error.code == grpc.StatusCode.UNKNOWN.value[0]
    assert error.status_code == grpc.StatusCode.UNKNOWN
    assert error.message == "no such thing"


def test_a_terminal_error_keeps_a_real_code() -> None:
    assert TerminalError("gone", grpc.StatusCode.NOT_FOUND).code == 5
    assert TerminalError("gone", 16).status_code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("code", [0, -1, 17, 2**32 - 1])
def test_the_broker_answers_no_failure_code_with_unknown(code: int) -> None:
    assert codes.grpc_status(code) == grpc.StatusCode.UNKNOWN


def test_the_broker_answers_each_failure_code_with_its_status() -> None:
    statuses = [s for s in grpc.StatusCode if s != grpc.StatusCode.OK]
    assert [codes.grpc_status(s.value[0]) for s in statuses] == statuses
