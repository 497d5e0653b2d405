"""The public admin API of `python -m broker --workers 2 --partitions 4`: each RPC reaches
the partition that owns its data, listings and counts merge every partition, and
registration reaches every partition under one id.

The partitions are stand-ins (`tests.cluster_standin`: ordinary brokers behind the
supervisor), so each invocation is started through the private ingress of the
partition chosen for it; what lives where is then known, and the front is checked
against it.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from durable.v1 import admin_pb2, admin_pb2_grpc, invocation_pb2
from playground import playground_pb2, playground_pb2_grpc

from broker.cluster import placement
from broker.cluster.supervisor import WORKER_MODULE_ENV
from tests.support import CHANNEL_OPTIONS, PLAYGROUND, PYTHON, Cluster, free_port, running_cluster

PARTITIONS = 4
COUNTER = "playground.Counter"
METRICS = f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two stand-in workers with four partitions, the playground registered."""
    args = ["--workers", "2", "--partitions", str(PARTITIONS), "--metrics", METRICS]
    with pytest.MonkeyPatch.context() as env:
        env.setenv(WORKER_MODULE_ENV, "tests.cluster_standin")
        tmp = tmp_path_factory.mktemp("front")
        with running_cluster(tmp, broker_args=args, services=(PLAYGROUND,)) as cluster:
            yield cluster
    for channel in _channels.values():
        channel.close()
    _channels.clear()


def _status(cluster: Cluster) -> admin_pb2.ClusterStatusResponse:
    status: admin_pb2.ClusterStatusResponse = cluster.admin.ClusterStatus(
        admin_pb2.ClusterStatusRequest(), timeout=10
    )
    return status


# One channel per private address for the whole module (the stand-ins never move).
_channels: dict[str, grpc.Channel] = {}


def _channel(address: str) -> grpc.Channel:
    if address not in _channels:
        _channels[address] = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return _channels[address]


def _private_admin(cluster: Cluster, partition: int) -> admin_pb2_grpc.AdminStub:
    address = _status(cluster).partitions[partition].admin
    return admin_pb2_grpc.AdminStub(_channel(address))


def _counter(cluster: Cluster, partition: int) -> playground_pb2_grpc.CounterStub:
    address = _status(cluster).partitions[partition].ingress
    return playground_pb2_grpc.CounterStub(_channel(address))


def _key_of(partition: int, prefix: str) -> str:
    """A key that `placement.of_key` puts in `partition`."""
    for i in range(10_000):
        if placement.of_key(f"{prefix}-{i}", PARTITIONS) == partition:
            return f"{prefix}-{i}"
    raise AssertionError("no key found")


def _add(cluster: Cluster, key: str, amount: int = 1) -> str:
    """Counter/Add on the key's own partition; returns the invocation id."""
    stub = _counter(cluster, placement.of_key(key, PARTITIONS))
    _, call = stub.Add.with_call(playground_pb2.AddRequest(name=key, amount=amount), timeout=30)
    return str(dict(call.initial_metadata())["invocation-id"])


def test_registration_gives_every_partition_one_deployment_id(front: Cluster) -> None:
    listed = front.admin.ListDeployments(admin_pb2.ListDeploymentsRequest(), timeout=10)
    ids = [d.id for d in listed.deployments]
    assert len(ids) == 1, listed

    for p in range(PARTITIONS):
        mine = _private_admin(front, p).ListDeployments(admin_pb2.ListDeploymentsRequest())
        assert [d.id for d in mine.deployments] == ids, f"partition {p}: {mine}"
    # Again (idempotent), through the front: still one id everywhere.
    again = front.register(listed.deployments[0].uri)
    assert again.id == ids[0]


def test_keyed_calls_reach_the_partition_of_their_key(front: Cluster) -> None:
    for p in range(PARTITIONS):
        key = _key_of(p, "route")
        _add(front, key, amount=p + 10)

        assert front.state(COUNTER, key)["total"] == p + 10
        described = front.admin.DescribeKey(
            admin_pb2.DescribeKeyRequest(service=COUNTER, key=key), timeout=10
        )
        assert described.state["total"] == str(p + 10).encode()
        front.admin.SetState(
            admin_pb2.SetStateRequest(service=COUNTER, key=key, name="note", value=b'"hi"'),
            timeout=10,
        )
        there = _private_admin(front, p).GetState(
            admin_pb2.GetStateRequest(service=COUNTER, key=key), timeout=10
        )
        assert there.state["note"] == b'"hi"', f"partition {p}: {there}"


def test_listing_merges_every_partition_newest_first_with_paging(front: Cluster) -> None:
    made = {_add(front, _key_of(p, f"list{i}")) for i in range(2) for p in range(PARTITIONS)}
    request = admin_pb2.ListInvocationsRequest(service=COUNTER, method="Add")
    whole = front.admin.ListInvocations(request, timeout=10)
    ids = [i.id for i in whole.invocations]

    assert made <= set(ids)
    assert whole.total == len(ids)
    assert sum(
        _private_admin(front, p).ListInvocations(request, timeout=10).total
        for p in range(PARTITIONS)
    ) == len(ids)
    order = [(i.created_at_ms, i.id) for i in whole.invocations]
    assert order == sorted(order, reverse=True)
    pages: list[str] = []
    for offset in range(0, len(ids), 3):
        page = admin_pb2.ListInvocationsRequest(
            service=COUNTER, method="Add", offset=offset, limit=3
        )
        answer = front.admin.ListInvocations(page, timeout=10)
        assert answer.total == len(ids)
        pages += [i.id for i in answer.invocations]
    assert pages == ids
    one_key = front.invocations(key=_key_of(1, "list0"))
    assert [i.key for i in one_key] == [_key_of(1, "list0")]


def test_a_walk_with_page_tokens_crosses_every_partition_once_in_order(front: Cluster) -> None:
    made = {_add(front, _key_of(p, f"walk{i}")) for i in range(2) for p in range(PARTITIONS)}
    request = admin_pb2.ListInvocationsRequest(service=COUNTER, method="Add", limit=3)
    walked: list[invocation_pb2.Invocation] = []
    while True:
        page = front.admin.ListInvocations(request, timeout=10)
        assert len(page.invocations) <= 3
        walked += page.invocations
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    ids = [i.id for i in walked]

    assert made <= set(ids) and len(ids) == len(set(ids)) == page.total
    order = [(i.created_at_ms, i.id) for i in walked]
    assert order == sorted(order, reverse=True)
    for offset in (0, 2, 5, len(ids) - 1):
        sliced = admin_pb2.ListInvocationsRequest(
            service=COUNTER, method="Add", offset=offset, limit=4
        )
        answer = front.admin.ListInvocations(sliced, timeout=10)
        assert [i.id for i in answer.invocations] == ids[offset : offset + 4], offset
        assert bool(answer.next_page_token) == (offset + 4 < len(ids)), offset


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"page_token": "not-a-token"}, "pass next_page_token from the previous page unchanged"),
        ({"offset": 9999, "limit": 10}, "first 10,000 matches"),
    ],
)
def test_the_front_refuses_a_page_it_cannot_serve(
    front: Cluster, fields: dict[str, object], says: str
) -> None:
    request = admin_pb2.ListInvocationsRequest(**fields)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as refused:
        front.admin.ListInvocations(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in (refused.value.details() or "")
    huge = front.admin.ListInvocations(
        admin_pb2.ListInvocationsRequest(limit=4_000_000_000), timeout=10
    )
    assert len(huge.invocations) == min(huge.total, 1000)


def _awaiting(admin: admin_pb2_grpc.AdminStub, limit: int = 0) -> admin_pb2.ListAwaitingResponse:
    response: admin_pb2.ListAwaitingResponse = admin.ListAwaiting(
        admin_pb2.ListAwaitingRequest(limit=limit), timeout=10
    )
    return response


def test_what_awaits_merges_every_partition_oldest_first_within_the_limit(front: Cluster) -> None:
    # Started one at a time on partitions 3, 0 and 2: by age, not partition order.
    order = [3, 0, 2]
    calls = []
    for n, p in enumerate(order):
        stub = playground_pb2_grpc.WaiterStub(_channel(_status(front).partitions[p].ingress))
        calls.append(stub.Await.future(playground_pb2.AwaitRequest(), timeout=120))
        front.wait_for(
            lambda: len(_awaiting(front.admin).awakeables) == n + 1 or None,  # noqa: B023
            message=f"awakeable {n + 1}",
        )
    merged = _awaiting(front.admin)
    home = {
        a.awakeable_id: p
        for p in range(PARTITIONS)
        for a in _awaiting(_private_admin(front, p)).awakeables
    }
    assert [home[a.awakeable_id] for a in merged.awakeables] == order
    assert merged.total_awakeables == 3

    for limit, listed in ((1, 1), (2, 2), (4_000_000_000, 3)):
        cut = _awaiting(front.admin, limit)
        assert list(cut.awakeables) == list(merged.awakeables)[:listed], limit
        assert cut.total_awakeables == 3, limit

    # A stand-in's invocation id need not name its partition: resolved where it lives.
    for n, awakeable in enumerate(merged.awakeables):
        _private_admin(front, home[awakeable.awakeable_id]).ResolveAwakeable(
            admin_pb2.ResolveAwakeableRequest(awakeable_id=awakeable.awakeable_id, value=b"%d" % n),
            timeout=10,
        )
    assert sorted(c.result(timeout=60).text for c in calls) == ["0", "1", "2"]


def test_schedules_page_through_the_front(front: Cluster) -> None:
    names = [f"front-{n}" for n in range(3)]
    for name in names:
        front.admin.CreateSchedule(
            admin_pb2.CreateScheduleRequest(
                name=name, service=COUNTER, method="Add", key=name, cron="0 0 1 1 *"
            ),
            timeout=10,
        )
    first = front.admin.ListSchedules(admin_pb2.ListSchedulesRequest(limit=2), timeout=10)
    rest = front.admin.ListSchedules(
        admin_pb2.ListSchedulesRequest(limit=2, page_token=first.next_page_token), timeout=10
    )
    assert [i.schedule.name for i in [*first.schedules, *rest.schedules]] == names
    assert (first.total, rest.next_page_token) == (3, "")
    with pytest.raises(grpc.RpcError) as refused:
        front.admin.ListSchedules(admin_pb2.ListSchedulesRequest(page_token="nope"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for name in names:
        front.admin.DeleteSchedule(admin_pb2.ScheduleRequest(name=name), timeout=10)


def test_stats_are_summed_over_partitions(front: Cluster) -> None:
    _add(front, _key_of(2, "stats"))
    merged = front.admin.GetStats(admin_pb2.GetStatsRequest(), timeout=10)
    parts = [
        _private_admin(front, p).GetStats(admin_pb2.GetStatsRequest(), timeout=10)
        for p in range(PARTITIONS)
    ]

    assert merged.succeeded == sum(s.succeeded for s in parts) > 0
    assert merged.by_status["COMPLETED"] == sum(s.by_status["COMPLETED"] for s in parts)
    started = {c.service: c.events["started"] for c in merged.counters}
    assert started[COUNTER] == sum(
        c.events["started"] for s in parts for c in s.counters if c.service == COUNTER
    )


def test_invocation_ids_route_by_placement(front: Cluster) -> None:
    """A stand-in partition draws ids at random: the front finds exactly those whose id
    names the partition they live in, and passes the other partition's NOT_FOUND on."""
    home = {_add(front, _key_of(p, f"ids{i}")): p for i in range(3) for p in range(PARTITIONS)}
    for invocation_id, p in home.items():
        if placement.of_id(invocation_id, PARTITIONS) == p:
            assert front.invocation(invocation_id).id == invocation_id
        else:
            with pytest.raises(grpc.RpcError) as info:
                front.describe(invocation_id)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert invocation_id in (info.value.details() or "")


def test_a_partitions_error_passes_through(front: Cluster) -> None:
    with pytest.raises(grpc.RpcError) as info:
        front.admin.GetState(admin_pb2.GetStateRequest(service="no.Such", key="k"), timeout=10)

    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'no.Such' is not a registered virtual object or workflow" in (
        info.value.details() or ""
    )


def test_services_and_limits(front: Cluster) -> None:
    services = front.admin.ListServices(admin_pb2.ListServicesRequest(), timeout=10)
    assert COUNTER in {s.name for s in services.services}
    front.admin.SetLimits(admin_pb2.SetLimitsRequest(service=COUNTER, concurrency=3), timeout=10)
    for p in range(PARTITIONS):
        limits = _private_admin(front, p).GetLimits(admin_pb2.GetLimitsRequest(service=COUNTER))
        assert [(s.service, s.concurrency) for s in limits.limits] == [(COUNTER, 3)], p
    merged = front.admin.GetLimits(admin_pb2.GetLimitsRequest(service=COUNTER), timeout=10)
    assert [(s.service, s.concurrency) for s in merged.limits] == [(COUNTER, 3)]
    front.admin.SetLimits(admin_pb2.SetLimitsRequest(service=COUNTER, clear=True), timeout=10)


def test_cluster_status_lists_workers_and_owners(front: Cluster) -> None:
    status = _status(front)

    assert status.mode == "workers"
    assert [(n.name, list(n.partitions), n.alive) for n in status.nodes] == [
        ("worker-0", [0, 2], True),
        ("worker-1", [1, 3], True),
    ]
    assert [(p.id, p.owner, p.serving) for p in status.partitions] == [
        (0, "worker-0", True),
        (1, "worker-1", True),
        (2, "worker-0", True),
        (3, "worker-1", True),
    ]
    brokerctl = str(Path(PYTHON).parent / "brokerctl")
    run = subprocess.run(
        [brokerctl, "--admin", front.admin_address, "cluster", "status", "--json"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    assert [p["owner"] for p in printed["partitions"]] == [f"worker-{p % 2}" for p in range(4)]
    human = subprocess.run(
        [brokerctl, "--admin", front.admin_address, "cluster", "status"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "worker-1: pid " in human.stdout and "3: worker-1, serving" in human.stdout


def test_metrics_label_each_partition(front: Cluster) -> None:
    _add(front, _key_of(3, "metrics"))
    with urllib.request.urlopen(f"http://{METRICS}/metrics", timeout=10) as response:
        text = response.read().decode()

    assert f'durable_invocations_started_total{{partition="3",service="{COUNTER}"}}' in text
    assert text.count("# TYPE durable_invocations_started_total counter") == 1
    for p in range(PARTITIONS):
        assert f'durable_partition_up{{partition="{p}"}} 1' in text


def test_single_process_broker_reports_itself_embedded(front: Cluster) -> None:
    # Any partition's own admin API is a single broker's.
    status = _private_admin(front, 1).ClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=10)

    assert status.mode == "embedded"
    assert [(n.name, n.alive, n.pid > 0) for n in status.nodes] == [("embedded", True, True)]
    assert [(p.id, p.owner) for p in status.partitions] == [(0, "embedded")]
    assert os.getpid() not in {n.pid for n in status.nodes}


def test_the_front_chooses_deployment_ids_itself(front: Cluster) -> None:
    uri = f"http://{front.service_addresses[PLAYGROUND]}"
    with pytest.raises(grpc.RpcError) as info:
        front.admin.RegisterDeployment(
            admin_pb2.RegisterDeploymentRequest(uri=uri, deployment_id="dp_0123"), timeout=30
        )

    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "deployment_id is set by the broker's front itself" in (info.value.details() or "")


@pytest.mark.parametrize(
    ("wanted", "code", "phrase"),
    [
        ("dp_0123", grpc.StatusCode.FAILED_PRECONDITION, "in this partition, not dp_0123"),
        ("nope", grpc.StatusCode.INVALID_ARGUMENT, "is not dp_ and hex digits"),
    ],
    ids=["another-id-for-the-uri", "malformed"],
)
def test_a_partition_refuses_an_id_that_disagrees(
    front: Cluster, wanted: str, code: grpc.StatusCode, phrase: str
) -> None:
    uri = f"http://{front.service_addresses[PLAYGROUND]}"
    with pytest.raises(grpc.RpcError) as info:
        _private_admin(front, 3).RegisterDeployment(
            admin_pb2.RegisterDeploymentRequest(uri=uri, deployment_id=wanted), timeout=30
        )

    assert info.value.code() == code
    assert phrase in (info.value.details() or "")
    listed = _private_admin(front, 3).ListDeployments(admin_pb2.ListDeploymentsRequest())
    assert wanted not in {d.id for d in listed.deployments}


def test_removing_a_deployment_reaches_every_partition(front: Cluster) -> None:
    """Last: the module's cluster has no deployment afterwards."""
    listed = front.admin.ListDeployments(admin_pb2.ListDeploymentsRequest(), timeout=10)
    (deployment,) = listed.deployments

    front.admin.RemoveDeployment(
        admin_pb2.RemoveDeploymentRequest(deployment_id=deployment.id), timeout=10
    )

    for p in range(PARTITIONS):
        mine = _private_admin(front, p).ListDeployments(admin_pb2.ListDeploymentsRequest())
        assert list(mine.deployments) == [], f"partition {p}: {mine}"
    with pytest.raises(grpc.RpcError) as info:
        front.admin.RemoveDeployment(
            admin_pb2.RemoveDeploymentRequest(deployment_id=deployment.id), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_front_serves_health_and_reflection(front: Cluster) -> None:
    listed = front.grpcurl("-plaintext", front.admin_address, "list")
    assert listed.returncode == 0, listed.stderr
    assert {"durable.v1.Admin", "grpc.health.v1.Health"} <= set(listed.stdout.split())
    stats = front.grpcurl("-plaintext", front.admin_address, "durable.v1.Admin/GetStats")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["complete"] is True
