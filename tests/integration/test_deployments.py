"""Versioning: new invocations go to the newest deployment; started ones finish (and
resume) where they began; a deployment in use is not removed without force."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from durable.v1 import admin_pb2
from playground import playground_pb2

from tests.support import (
    PLAYGROUND,
    PYTHON,
    Cluster,
    Process,
    free_port,
    invocation_id_of,
    wait_for,
    wait_healthy,
)


def test_in_flight_invocations_stay_on_their_deployment(tmp_path: Path) -> None:
    with Cluster(tmp_path, suspend_after="200ms", services=(PLAYGROUND,)) as cluster:
        (a,) = cluster.admin.ListDeployments(admin_pb2.ListDeploymentsRequest()).deployments
        replies: list[playground_pb2.Reply] = []
        slow = threading.Thread(
            target=lambda: replies.append(
                cluster.waiter.Sleep(
                    playground_pb2.SleepRequest(millis=2500),
                    metadata=(("idempotency-key", "slow"),),
                    timeout=60,
                )
            )
        )
        slow.start()
        old = wait_for(
            lambda: next(
                (i for i in cluster.invocations(service="playground.Waiter") if i.status == 3),
                None,
            ),
            message="the slow sleep to suspend",
        )
        assert old.deployment_id == a.id

        b_address = f"127.0.0.1:{free_port()}"
        b_process = Process(
            "playground-b",
            [PYTHON, "-m", "services.playground", "--listen", b_address],
            tmp_path / "logs" / "playground-b.log",
        ).start()
        try:
            wait_healthy(b_address, time.monotonic() + 30, b_process)
            b = cluster.register(f"http://{b_address}")
            assert b.id != a.id
            # Registering again is idempotent.
            assert cluster.register(f"http://{b_address}").id == b.id

            _, call = cluster.waiter.Sleep.with_call(
                playground_pb2.SleepRequest(millis=10), timeout=30
            )
            new_id = invocation_id_of(call)
            assert cluster.invocation(new_id).deployment_id == b.id

            with pytest.raises(grpc.RpcError) as refused:
                cluster.admin.RemoveDeployment(
                    admin_pb2.RemoveDeploymentRequest(deployment_id=a.id), timeout=10
                )
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "in flight" in (refused.value.details() or "")
            listed = {
                d.id: d
                for d in cluster.admin.ListDeployments(
                    admin_pb2.ListDeploymentsRequest()
                ).deployments
            }
            assert listed[a.id].in_flight == 1

            slow.join(timeout=60)
            assert replies and replies[0].text == "slept"
            finished = cluster.invocation(old.id)
            assert finished.deployment_id == a.id  # resumed and finished on A
            assert finished.attempts >= 2

            cluster.admin.RemoveDeployment(
                admin_pb2.RemoveDeploymentRequest(deployment_id=a.id), timeout=10
            )
            remaining = cluster.admin.ListDeployments(admin_pb2.ListDeploymentsRequest())
            assert [d.id for d in remaining.deployments] == [b.id]

            # Survives a restart: the routing table is durable.
            cluster.restart_broker()
            after = cluster.admin.ListDeployments(admin_pb2.ListDeploymentsRequest())
            assert [d.id for d in after.deployments] == [b.id]
            assert (
                cluster.waiter.Sleep(playground_pb2.SleepRequest(millis=1), timeout=30).text
                == "slept"
            )
        finally:
            b_process.terminate()


def test_unknown_deployment_cannot_be_removed(tmp_path: Path) -> None:
    with Cluster(tmp_path, services=(PLAYGROUND,)) as cluster:
        with pytest.raises(grpc.RpcError) as missing:
            cluster.admin.RemoveDeployment(
                admin_pb2.RemoveDeploymentRequest(deployment_id="dp_nope"), timeout=10
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_listing_is_bounded_and_reports_the_total(tmp_path: Path) -> None:
    with Cluster(tmp_path, services=(PLAYGROUND,)) as cluster:
        for _ in range(3):
            cluster.waiter.Sleep(playground_pb2.SleepRequest(millis=1), timeout=30)
        listed = cluster.admin.ListInvocations(
            admin_pb2.ListInvocationsRequest(service="playground.Waiter", limit=2), timeout=10
        )
        assert len(listed.invocations) == 2
        assert listed.total == 3
        newest_first = [i.created_at_ms for i in listed.invocations]
        assert newest_first == sorted(newest_first, reverse=True)
