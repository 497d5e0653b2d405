"""Registering an endpoint's URI again replaces its deployment in place. When the new
code serves other .proto files while invocations pinned to the deployment are in flight,
that is refused unless forced: an attack swapped in a contract whose field changed type
under two suspended invocations, which resumed on it and answered with the caller's value
silently gone. (The design has invocations finish on the deployment they began on.)"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from durable.v1 import admin_pb2
from playground import playground_pb2 as pg
from playground import playground_pb2_grpc as pg_grpc

from tests import support
from tests.integration.test_brokerctl import brokerctl
from tests.integration.test_brokerctl import ok_json as brokerctl_json
from tests.support import Cluster

PLAYGROUND = ["-m", "services.playground", "--listen"]
BENCH = ["-m", "bench.service", "--listen"]
# The same playground.proto, serving its Counter alone.
COUNTER_ONLY = ["-m", "tests.endpoints.counter_versions", "--variant", "compatible", "--listen"]


def _serve(what: list[str], address: str, log: Path) -> support.Process:
    process = support.Process(what[1], [support.PYTHON, *what, address], log)
    process.start()
    support.wait_healthy(address, time.monotonic() + support.STARTUP_TIMEOUT_S, process)
    return process


@contextlib.contextmanager
def _swapped_under_a_sleep(
    cluster: Cluster, tmp_path: Path, replacement: list[str]
) -> Iterator[tuple[str, support.Process]]:
    """The playground registered, its Waiter/Sleep sleeping on it for a minute, then its
    endpoint SIGKILLed and `replacement` started at the same address: yields its URI and
    process."""
    address = f"127.0.0.1:{support.free_port()}"
    old = _serve(PLAYGROUND, address, tmp_path / "playground.log")
    call = None
    try:
        cluster.register(f"http://{address}")
        waiter = pg_grpc.WaiterStub(cluster.ingress_channel)
        # Kept: a call's future that is dropped cancels the call.
        call = waiter.Sleep.future(pg.SleepRequest(millis=60_000), timeout=5)
        cluster.wait_for(
            lambda: [
                i
                for i in cluster.invocations(service="playground.Waiter")
                if i.deployment_id and cluster.journal_entries(i.id, "sleep")
            ],
            message="the sleep to start",
        )
    finally:
        old.kill()
        if call is not None:
            call.cancel()
    new = _serve(replacement, address, tmp_path / "replacement.log")
    try:
        yield f"http://{address}", new
    finally:
        new.terminate()


@pytest.fixture(params=[[], ["--workers", "2", "--partitions", "4"]], ids=["embedded", "workers"])
def swapped(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Cluster, str, support.Process]]:
    """A broker (embedded, or with workers: every partition is asked before any
    registers) whose playground endpoint was swapped for another contract (the bench
    service) under a sleeping invocation."""
    with Cluster(tmp_path / "cluster", broker_args=request.param, services=()) as cluster:
        with _swapped_under_a_sleep(cluster, tmp_path, BENCH) as (uri, new):
            yield cluster, uri, new


def test_a_changed_contract_under_invocations_in_flight_is_refused(
    swapped: tuple[Cluster, str, support.Process],
) -> None:
    cluster, uri, _ = swapped
    before = cluster.admin.ListDeployments(admin_pb2.ListDeploymentsRequest(), timeout=10)
    refused = brokerctl(cluster.admin_address, "deployments", "register", uri)
    assert refused.returncode != 0
    assert "FAILED_PRECONDITION" in refused.stderr
    assert f"the endpoint at {uri} changes the contract of handlers with invocations in " in (
        refused.stderr
    )
    assert "(playground.Waiter/Sleep is gone): 1 invocation(s) (inv_" in refused.stderr
    assert "register with --force to replace it in place" in refused.stderr
    after = cluster.admin.ListDeployments(admin_pb2.ListDeploymentsRequest(), timeout=10)
    assert after == before  # nothing changed

    forced = brokerctl_json(cluster.admin_address, "deployments", "register", uri, "--force")
    assert forced["services"] == ["benchsvc.Bench", "benchsvc.Counter"]


def test_the_same_contract_or_nothing_in_flight_replaces_in_place(tmp_path: Path) -> None:
    with Cluster(tmp_path / "cluster", services=()) as cluster:
        address = f"127.0.0.1:{support.free_port()}"
        uri = f"http://{address}"
        first = _serve(PLAYGROUND, address, tmp_path / "first.log")
        try:
            registered = cluster.register(uri)
            waiter = pg_grpc.WaiterStub(cluster.ingress_channel)
            call = waiter.Sleep.future(pg.SleepRequest(millis=60_000), timeout=5)
            cluster.wait_for(
                lambda: [
                    i for i in cluster.invocations(service="playground.Waiter") if i.status == 3
                ],
                message="the sleep to suspend",
            )
            call.cancel()
            # The same code restarted: its contract is the same, in flight or not.
            first.kill()
            first = _serve(PLAYGROUND, address, tmp_path / "first.log")
            again = brokerctl_json(cluster.admin_address, "deployments", "register", uri)
            assert again["id"] == registered.id
        finally:
            first.kill()
        # Nothing pinned to it in flight once its invocations ended: replaced in place.
        for invocation in cluster.invocations(service="playground.Waiter"):
            cluster.kill(invocation.id)
        other = _serve(BENCH, address, tmp_path / "other.log")
        try:
            replaced = brokerctl_json(cluster.admin_address, "deployments", "register", uri)
            assert replaced["id"] == registered.id
            assert replaced["services"] == ["benchsvc.Bench", "benchsvc.Counter"]
        finally:
            other.terminate()
        with pytest.raises(grpc.RpcError):
            waiter.Sleep(pg.SleepRequest(millis=1), timeout=5)


def test_an_invocation_queued_behind_a_limit_counts_too(tmp_path: Path) -> None:
    # Accepted under the old contract but not started (no deployment pinned yet): an
    # attack's queued call ran on the changed one and lost its value.
    with Cluster(tmp_path / "cluster", services=()) as cluster:
        address = f"127.0.0.1:{support.free_port()}"
        uri = f"http://{address}"
        old = _serve(PLAYGROUND, address, tmp_path / "playground.log")
        try:
            cluster.register(uri)
            brokerctl_json(
                cluster.admin_address, "services", "limit", "playground.Waiter", "--rate", "0.001"
            )
            waiter = pg_grpc.WaiterStub(cluster.ingress_channel)
            waiter.Sleep(pg.SleepRequest(millis=1), timeout=30)  # the bucket's one token
            call = waiter.Sleep.future(pg.SleepRequest(millis=1), timeout=5)
            (queued,) = cluster.wait_for(
                lambda: [
                    i for i in cluster.invocations(service="playground.Waiter") if i.status != 5
                ],
                message="the second call to queue",
            )
            assert not queued.deployment_id
        finally:
            old.kill()
        new = _serve(BENCH, address, tmp_path / "bench.log")
        try:
            refused = brokerctl(cluster.admin_address, "deployments", "register", uri)
            assert refused.returncode != 0
            assert f"(playground.Waiter/Sleep is gone): 1 invocation(s) ({queued.id})" in (
                refused.stderr
            )
        finally:
            call.cancel()
            new.terminate()


def test_a_handler_gone_from_the_same_proto_files_is_refused(tmp_path: Path) -> None:
    # The files compared equal, so the check passed: the Waiter's sleeping invocation
    # then backed off for ever, "this endpoint has no handler".
    with Cluster(tmp_path / "cluster", services=()) as cluster:
        with _swapped_under_a_sleep(cluster, tmp_path, COUNTER_ONLY) as (uri, _):
            refused = brokerctl(cluster.admin_address, "deployments", "register", uri)
            assert refused.returncode != 0
            assert "(playground.Waiter/Sleep is gone)" in refused.stderr
