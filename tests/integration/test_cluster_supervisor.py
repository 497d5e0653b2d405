"""`python -m broker --workers 2` with its real workers: the demo's saga through the public
ports, a SIGKILLed worker restarted by the supervisor and serving again, cluster status,
the admin token through the front, and no worker outliving its supervisor."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from durable.v1 import admin_pb2, admin_pb2_grpc, cluster_pb2, cluster_pb2_grpc
from playground import playground_pb2
from trips import trips_pb2

from broker.cluster.directory import Directory, PartitionAddress
from broker.cluster.forward import Failed, Partitions
from tests.support import (
    CHANNEL_OPTIONS,
    PLAYGROUND,
    PYTHON,
    SERVICES,
    Cluster,
    Process,
    Status,
    free_port,
    invocation_id_of,
    running_cluster,
    trip_id_of,
    wait_for,
    wait_healthy,
)

WORKERS = ["--workers", "2", "--partitions", "4"]
READY = re.compile(
    r"broker ready: ingress 127\.0\.0\.1:(?P<ingress>\d+), admin 127\.0\.0\.1:(?P<admin>\d+), "
    r"data (?P<data>\S+), 2 workers, 2 partitions"
)


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The demo on a broker of two workers and four partitions."""
    tmp = tmp_path_factory.mktemp("workers")
    services = (*SERVICES, PLAYGROUND)
    with running_cluster(tmp, broker_args=WORKERS, services=services) as cluster:
        yield cluster


def _status(cluster: Cluster) -> admin_pb2.ClusterStatusResponse:
    status: admin_pb2.ClusterStatusResponse = cluster.admin.ClusterStatus(
        admin_pb2.ClusterStatusRequest(), timeout=10
    )
    return status


def _gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie not yet reaped counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def _reserve(cluster: Cluster, name: str) -> str:
    """Runs the saga; returns the trip's invocation id."""
    request = trips_pb2.ReserveTripRequest(to=name, amount_cents=120)
    response, call = cluster.trips.Reserve.with_call(request, timeout=60)
    assert trip_id_of(response)
    return invocation_id_of(call)


def test_saga_through_the_public_ports(workers: Cluster) -> None:
    invocation_id = _reserve(workers, "ada")

    listed = workers.invocations(service="trips.Trips")
    assert [(i.id, i.status) for i in listed] == [(invocation_id, Status.COMPLETED)]
    # The steps are keyed by the trip: they live in the trip's partition.
    assert len(workers.invocations(service="flights.Flights")) == 2
    assert workers.describe(invocation_id).invocation.status == Status.COMPLETED
    deployments = workers.admin.ListDeployments(admin_pb2.ListDeploymentsRequest(), timeout=10)
    assert len(deployments.deployments) == 5  # the demo and the playground


def test_awakeables_are_listed_and_resolved_through_the_front(workers: Cluster) -> None:
    request = playground_pb2.AwaitRequest()
    calls = [workers.waiter.Await.future(request, timeout=60) for _ in range(4)]

    def awaited() -> list[admin_pb2.Awakeable] | None:
        listed = workers.admin.ListAwaiting(admin_pb2.ListAwaitingRequest(), timeout=10)
        mine = [a for a in listed.awakeables if a.service == "playground.Waiter"]
        return mine if len(mine) == len(calls) else None

    awakeables = workers.wait_for(awaited, message="four awakeables")
    for n, awakeable in enumerate(awakeables):
        workers.resolve_awakeable(awakeable.awakeable_id, n)
    assert sorted(int(c.result().text) for c in calls) == list(range(len(calls)))


def test_promises_and_state_are_reached_by_key(workers: Cluster) -> None:
    users = [f"user-{n}" for n in range(4)]
    runs = [
        workers.signup.Run.future(playground_pb2.SignupRequest(user=u, email=u), timeout=60)
        for u in users
    ]

    def waiting(user: str) -> bool:
        return bool(
            workers.state("playground.Signup", user).get("status") == "waiting for verification"
        )

    for user in users:
        workers.wait_for(lambda: waiting(user), message=f"{user} waiting")  # noqa: B023
        workers.complete_promise("playground.Signup", user, "verified", f"code-{user}")
    assert [list(r.result().items) for r in runs] == [[f"code-{u}"] for u in users]


def test_cluster_status_lists_partitions_and_owners(workers: Cluster) -> None:
    status = _status(workers)

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
    assert all(p.admin.startswith("127.0.0.1:") for p in status.partitions)


def test_a_delivery_without_the_clusters_secret_is_refused(workers: Cluster) -> None:
    # The private ports listen on loopback: another local process must not be able to
    # complete entries or start invocations by posing as a partition.
    target = _status(workers).partitions[1]
    envelope = cluster_pb2.Envelope(
        seq=1,
        message=cluster_pb2.OutboxMessage(
            invoke=cluster_pb2.InvokeMessage(
                invocation_id="inv_forged", service="playground.Counter", method="Get"
            )
        ),
    )
    request = cluster_pb2.DeliverRequest(source=0, destination=1, messages=[envelope])
    with grpc.insecure_channel(target.ingress) as channel:
        stub = cluster_pb2_grpc.PartitionsStub(channel)
        for metadata in ((), (("x-durable-cluster-secret", "guess"),)):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Deliver(request, metadata=metadata, timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as unknown:
        workers.describe("inv_forged")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_killed_worker_is_restarted_and_serves_again(workers: Cluster) -> None:
    # A saga of its own first (not one an earlier test ran): the stats read after the
    # restart must count what was completed before it, whatever ran before this test.
    wait_for(lambda: _reserve(workers, "before-kill"), timeout=60, message="a saga")
    before = _status(workers).nodes[1]
    os.kill(before.pid, signal.SIGKILL)

    def restarted() -> admin_pb2.ClusterStatusResponse | None:
        status = _status(workers)
        node = status.nodes[1]
        serving = all(p.serving for p in status.partitions)
        fresh = node.alive and node.pid != before.pid and node.restarts == before.restarts + 1
        return status if fresh and serving else None

    workers.wait_for(restarted, timeout=60, message="worker 1 to be restarted")
    assert _gone(before.pid)
    # Its partitions (1 and 3) answer again, and the saga runs across all of them.
    stats = workers.admin.GetStats(admin_pb2.GetStatsRequest(), timeout=10)
    assert stats.succeeded > 0
    invocation_id = wait_for(lambda: _reserve(workers, "grace"), timeout=60, message="a saga")
    assert workers.invocation(invocation_id).status == Status.COMPLETED


def _held(address: str) -> dict[str, str] | None:
    """The deployments a partition has (uri by id), asked on its private admin port."""
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        try:
            listed = admin_pb2_grpc.AdminStub(channel).ListDeployments(
                admin_pb2.ListDeploymentsRequest(), timeout=5
            )
        except grpc.RpcError:
            return None  # its worker is still starting
    return {d.id: d.uri for d in listed.deployments}


def test_a_deployment_registered_while_a_worker_was_down_reaches_it_when_it_is_back(
    tmp_path: Path,
) -> None:
    # A partition that was down when a deployment was registered kept answering
    # UNIMPLEMENTED for its services after its worker came back (7 of 10 calls in an
    # attack), until someone registered the URI again. The front now registers what a
    # partition missed; a deployment whose endpoint has gone since (registered first,
    # so met first) does not hold up the others.
    cluster = Cluster(tmp_path, broker_args=WORKERS, services=("flights", PLAYGROUND))
    try:
        cluster.start_service("flights")
        cluster.start_service(PLAYGROUND)
        cluster.start_broker()
        os.kill(_status(cluster).nodes[1].pid, signal.SIGKILL)
        for name in ("flights", PLAYGROUND):
            with pytest.raises(grpc.RpcError) as partial:
                cluster.register(f"http://{cluster.service_addresses[name]}")
            assert "is registered on partition 0 but not on every other partition" in (
                partial.value.details() or ""
            ), partial.value.details()
        cluster.kill_service("flights")
        partitions = _status(cluster).partitions
        playground = f"http://{cluster.service_addresses[PLAYGROUND]}"
        (kept,) = [i for i, uri in (_held(partitions[0].admin) or {}).items() if uri == playground]

        cluster.wait_for(
            lambda: all(kept in (_held(p.admin) or set()) for p in partitions),
            timeout=60,
            message="every partition to have the deployment whose endpoint is up",
        )
        for n in range(16):  # keys over every partition
            add = playground_pb2.AddRequest(name=f"key-{n}", amount=1)
            assert cluster.counter.Add(add, timeout=30).number == 1
    finally:
        cluster.close()


def test_limits_set_while_a_worker_was_down_reach_it_when_it_is_back(tmp_path: Path) -> None:
    # SetLimits answered UNAVAILABLE and applied on the partitions that were up: worker
    # 1's partitions enforced other limits than the rest until they were set again.
    cluster = Cluster(tmp_path, broker_args=WORKERS, services=(PLAYGROUND,))
    try:
        cluster.start()
        os.kill(_status(cluster).nodes[1].pid, signal.SIGKILL)
        request = admin_pb2.SetLimitsRequest(service="playground.Busy", concurrency=7)
        with pytest.raises(grpc.RpcError) as partial:
            cluster.admin.SetLimits(request, timeout=10)
        assert partial.value.code() == grpc.StatusCode.UNAVAILABLE
        partitions = _status(cluster).partitions

        def concurrency(address: str) -> int | None:
            with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
                try:
                    limits = admin_pb2_grpc.AdminStub(channel).GetLimits(
                        admin_pb2.GetLimitsRequest(service="playground.Busy"), timeout=5
                    )
                except grpc.RpcError:
                    return None  # its worker is still starting
            return next((s.concurrency for s in limits.limits if s.method == ""), 0)

        assert concurrency(partitions[0].admin) == 7
        cluster.wait_for(
            lambda: all(concurrency(p.admin) == 7 for p in partitions),
            timeout=60,
            message="every partition to enforce concurrency 7",
        )
    finally:
        cluster.close()


def test_an_unreachable_partition_is_unavailable_naming_it() -> None:
    dead = f"127.0.0.1:{free_port()}"
    directory = Directory(workers=1, partitions=[PartitionAddress(ingress=dead, admin=dead)])

    async def call() -> Failed:
        partitions = Partitions(directory)
        try:
            await partitions.call(0, "GetStats", b"", timeout=5)
        except Failed as e:
            return e
        finally:
            await partitions.close()
        raise AssertionError("the call succeeded")

    failed = asyncio.run(call())
    assert failed.code == grpc.StatusCode.UNAVAILABLE
    assert f"partition 0 (worker 0, {dead}) is unreachable" in failed.message


def test_the_admin_token_is_checked_and_forwarded(tmp_path: Path) -> None:
    args = [*WORKERS, "--admin-token", "s3cret"]
    cluster = Cluster(tmp_path, broker_args=args, services=())
    cluster.start()
    try:
        with pytest.raises(grpc.RpcError) as info:
            cluster.admin.GetStats(admin_pb2.GetStatsRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        token: tuple[tuple[str, str | bytes], ...] = (("authorization", "Bearer s3cret"),)
        # Fanned out to every partition, each of which checks the token too.
        stats = cluster.admin.GetStats(admin_pb2.GetStatsRequest(), metadata=token, timeout=10)
        assert stats.complete
        status = cluster.admin.ClusterStatus(
            admin_pb2.ClusterStatusRequest(), metadata=token, timeout=10
        )
        private = admin_pb2_grpc.AdminStub(
            grpc.insecure_channel(status.partitions[2].admin, options=CHANNEL_OPTIONS)
        )
        with pytest.raises(grpc.RpcError) as direct:
            private.GetStats(admin_pb2.GetStatsRequest(), timeout=10)
        assert direct.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        cluster.close()


def test_workers_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    admin = f"127.0.0.1:{free_port()}"
    args = ["--data-dir", str(tmp_path / "data"), "--admin", admin, *WORKERS]
    args += ["--ingress", f"127.0.0.1:{free_port()}"]
    broker = Process("broker", [PYTHON, "-m", "broker", *args], tmp_path / "broker.log")
    broker.start()
    try:
        wait_healthy(admin, time.monotonic() + 60, broker)
        stub = admin_pb2_grpc.AdminStub(grpc.insecure_channel(admin))
        pids = [n.pid for n in stub.ClusterStatus(admin_pb2.ClusterStatusRequest()).nodes]
        assert all(pids)
    finally:
        broker.kill()
    wait_for(lambda: all(_gone(p) for p in pids), timeout=30, message=f"workers {pids} to exit")


def test_sigterm_stops_every_worker_and_exits_0(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, broker_args=WORKERS, services=())
    cluster.start()
    pids = [n.pid for n in _status(cluster).nodes]

    assert cluster.broker.terminate() == 0
    cluster.close()
    assert all(_gone(p) for p in pids)


def test_port_0_gets_concrete_ports_in_the_ready_line(tmp_path: Path) -> None:
    args = ["--data-dir", str(tmp_path / "data"), "--ingress", "127.0.0.1:0"]
    args += ["--admin", "127.0.0.1:0", "--workers", "2"]
    broker = Process("broker", [PYTHON, "-m", "broker", *args], tmp_path / "broker.log")
    broker.start()
    try:

        def ready() -> re.Match[str] | None:
            broker.check_alive()
            text = broker.log_path.read_text(encoding="utf-8", errors="replace")
            return READY.search(text)

        line = wait_for(ready, timeout=60, message="the ready line")
        ingress, admin = f"127.0.0.1:{line['ingress']}", f"127.0.0.1:{line['admin']}"
        assert line["data"] == str(tmp_path / "data")
        # Every worker serves the one public ingress port; the front serves the admin.
        wait_healthy(ingress, time.monotonic() + 30, broker)
        wait_healthy(admin, time.monotonic() + 30, broker)
    finally:
        assert broker.terminate() == 0


def test_tls_and_the_token_on_the_public_admin(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    admin = f"127.0.0.1:{free_port()}"
    args = ["--data-dir", str(tmp_path / "data"), "--admin", admin, *WORKERS]
    args += ["--ingress", f"127.0.0.1:{free_port()}", "--admin-token", "s3cret"]
    args += ["--tls-cert", str(cert), "--tls-key", str(key)]
    broker = Process("broker", [PYTHON, "-m", "broker", *args], tmp_path / "broker.log")
    broker.start()
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=cert.read_bytes()),
        grpc.access_token_call_credentials("s3cret"),
    )
    try:
        with grpc.secure_channel(admin, creds, options=CHANNEL_OPTIONS) as channel:
            stub = admin_pb2_grpc.AdminStub(channel)

            def stats() -> admin_pb2.GetStatsResponse | None:
                broker.check_alive()
                answer: admin_pb2.GetStatsResponse = stub.GetStats(
                    admin_pb2.GetStatsRequest(), timeout=2, wait_for_ready=True
                )
                return answer

            # Served with TLS, the token checked by the front and the partitions.
            assert wait_for(stats, timeout=60, message="GetStats over TLS").complete
        with grpc.insecure_channel(admin) as plain:
            with pytest.raises(grpc.RpcError):
                admin_pb2_grpc.AdminStub(plain).GetStats(admin_pb2.GetStatsRequest(), timeout=2)
    finally:
        assert broker.terminate() == 0
