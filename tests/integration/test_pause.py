"""Pausing parks an invocation: nothing resumes it (not even its timer) until resume."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from durable.v1 import admin_pb2, invocation_pb2
from playground import playground_pb2

from tests.support import PLAYGROUND, Cluster, wait_for

Status = invocation_pb2.InvocationStatus


def test_pause_then_resume(tmp_path: Path) -> None:
    with Cluster(tmp_path, suspend_after="100ms", services=(PLAYGROUND,)) as cluster:
        replies: list[str] = []
        caller = threading.Thread(
            target=lambda: replies.append(
                cluster.waiter.Sleep(playground_pb2.SleepRequest(millis=600), timeout=60).text
            )
        )
        caller.start()
        sleeping = wait_for(
            lambda: next(
                (
                    i
                    for i in cluster.invocations(service="playground.Waiter")
                    if i.status == Status.SUSPENDED
                ),
                None,
            ),
            message="the sleep to suspend",
        )
        request = admin_pb2.InvocationRequest(invocation_id=sleeping.id)
        paused = cluster.admin.PauseInvocation(request, timeout=10).invocation
        assert paused.status == Status.PAUSED
        # The timer fires while paused; the invocation stays parked.
        timer_fired = wait_for(
            lambda: cluster.journal_entries(sleeping.id, "sleep")[0].HasField("result"),
            message="the timer to fire",
        )
        assert timer_fired
        assert cluster.invocation(sleeping.id).status == Status.PAUSED
        assert caller.is_alive()

        resumed = cluster.admin.ResumeInvocation(request, timeout=10).invocation
        assert resumed.status == Status.RUNNING
        caller.join(timeout=30)
        assert replies == ["slept"]

        with pytest.raises(grpc.RpcError) as done:
            cluster.admin.PauseInvocation(request, timeout=10)
        assert done.value.code() == grpc.StatusCode.FAILED_PRECONDITION
