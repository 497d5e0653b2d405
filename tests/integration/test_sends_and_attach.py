"""Delayed one-way sends, and attaching to another invocation from inside a handler."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from durable.v1 import invocation_pb2
from playground import playground_pb2

from tests.support import PLAYGROUND, Cluster, invocation_id_of, wait_for

Status = invocation_pb2.InvocationStatus


@pytest.fixture(scope="module", params=["1s", "0"], ids=["stream", "suspend-always"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    tmp = Path(tmp_path_factory.mktemp("sends"))
    with Cluster(tmp, suspend_after=request.param, services=(PLAYGROUND,)) as running:
        yield running


def test_a_delayed_send_starts_after_its_delay(cluster: Cluster) -> None:
    sent_at = time.time()
    reply, call = cluster.waiter.Later.with_call(
        playground_pb2.SleepRequest(millis=1500), timeout=30
    )
    assert reply.text == "sent"
    (send,) = cluster.journal_entries(invocation_id_of(call), "send")
    child_id = send.send.invocation_id
    assert child_id.startswith("inv_")
    assert send.send.invoke_at_ms >= int(sent_at * 1000) + 1500
    assert cluster.invocation(child_id).status == Status.PENDING
    done = wait_for(
        lambda: cluster.invocation(child_id).status == Status.COMPLETED,
        timeout=30,
        message="the delayed send to run",
    )
    assert done
    child = cluster.invocation(child_id)
    assert child.modified_at_ms >= send.send.invoke_at_ms


def test_a_handler_attaches_to_another_invocation(cluster: Cluster) -> None:
    slow = cluster.waiter.Sleep.future(playground_pb2.SleepRequest(millis=800), timeout=30)
    target = wait_for(
        lambda: next(
            (
                i.id
                for i in cluster.invocations(service="playground.Waiter")
                if i.method == "Sleep" and i.status != Status.COMPLETED
            ),
            None,
        ),
        message="the sleep to start",
    )
    followed = cluster.waiter.Follow(playground_pb2.FollowRequest(invocation_id=target), timeout=30)
    assert followed.text == "slept"
    assert list(followed.items) == ["running"]
    assert slow.result(timeout=30).text == "slept"
    again = cluster.waiter.Follow(playground_pb2.FollowRequest(invocation_id=target), timeout=30)
    assert (again.text, list(again.items)) == ("slept", ["ready"])


def test_attaching_to_an_unknown_invocation_fails_terminally(cluster: Cluster) -> None:
    with pytest.raises(grpc.RpcError) as missing:
        cluster.waiter.Follow(playground_pb2.FollowRequest(invocation_id="inv_nope"), timeout=30)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
