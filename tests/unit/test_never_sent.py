"""Which failed forwarded calls a cluster node may send again to a partition's new
leader: only those that never left (no address to connect to). A call cut mid-way may
have been taken and run by the old leader, and must not run twice."""

from __future__ import annotations

import grpc
import pytest

from broker.cluster.directory import never_sent


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


def test_a_refused_connection_never_sent_the_call() -> None:
    refused = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:40345: "
        "Failed to connect to remote host: Connection refused"
    )
    assert never_sent(_error(grpc.StatusCode.UNAVAILABLE, refused))


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.UNAVAILABLE, "Socket closed"),
        (grpc.StatusCode.UNAVAILABLE, "recvmsg:Connection reset by peer"),
        (grpc.StatusCode.UNAVAILABLE, "partition 2 is led by another node now"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
        (grpc.StatusCode.INTERNAL, "failed to connect to all addresses"),
    ],
)
def test_a_call_that_may_have_arrived_is_never_resent(code: grpc.StatusCode, details: str) -> None:
    assert not never_sent(_error(code, details))
