"""Which failures of a forwarded call say nothing about its invocation (`undelivered`):
those the front follows to the partition's next leader instead of relaying."""

from __future__ import annotations

import grpc
import pytest

from broker.cluster.ingress import InDoubt, failed_forward
from broker.cluster.peers import Answered, Unanswered, undelivered
from broker.ingress.router import OUTCOME, Moved


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


def _stream_removed() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        "Stream removed (recvmsg:Connection reset by peer)",
        "",
    )


def test_a_call_without_a_key_cut_in_flight_is_in_doubt_not_unavailable() -> None:
    # An attack SIGKILLed a leader under a burst of keyless calls: 7 callers got
    # UNAVAILABLE "Stream removed", which gRPC clients retry, and one of those calls had
    # run. Without an id or a key nobody can tell: UNKNOWN, saying so.
    failed = failed_forward(3, _stream_removed(), "", resendable=False, acknowledged=False)
    assert isinstance(failed, InDoubt)
    assert str(failed).startswith("partition 3: the process serving it went away")
    assert "the call may have run: send calls with an idempotency-key header" in str(failed)


def test_a_cut_call_is_followed_or_sent_again_when_it_can_be() -> None:
    moved = failed_forward(1, _stream_removed(), "inv_x", resendable=False, acknowledged=True)
    assert isinstance(moved, Moved) and moved.invocation_id == "inv_x"
    again = failed_forward(1, _stream_removed(), "", resendable=True, acknowledged=False)
    assert isinstance(again, Unanswered)
    own = _error(grpc.StatusCode.UNAVAILABLE, outcome=True)
    answered = failed_forward(1, own, "", resendable=False, acknowledged=False)
    assert isinstance(answered, Answered)
