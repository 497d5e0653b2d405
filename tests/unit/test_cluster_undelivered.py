"""Which failures of a forwarded call say nothing about its invocation (`undelivered`):
those the front follows to the partition's next leader instead of relaying."""

from __future__ import annotations

import grpc
import pytest

from broker.cluster.peers import undelivered
from broker.ingress.router import OUTCOME


def _error(code: grpc.StatusCode, outcome: bool) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata((OUTCOME, "failure")) if outcome else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, "x", "")


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED])
def test_a_partition_that_went_away_or_cancelled_its_calls_is_followed(
    code: grpc.StatusCode,
) -> None:
    # CANCELLED without an outcome: a stepping-down partition's server cancelled the call.
    assert undelivered(_error(code, outcome=False))


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL],
)
def test_a_handlers_own_failure_is_relayed(code: grpc.StatusCode) -> None:
    # An invocation cancelled on purpose, or a handler's UNAVAILABLE, is its answer.
    assert not undelivered(_error(code, outcome=True))


def test_other_statuses_are_the_partitions_answer() -> None:
    for code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL):
        assert not undelivered(_error(code, outcome=False))
