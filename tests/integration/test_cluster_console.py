"""The web console of a `--workers` broker: served by the supervisor over the admin
front, it lists every partition's invocations, decodes their protobuf payloads with the
deployments' types, and edits state in the partition that owns the key."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
from durable.v1 import admin_pb2
from playground import playground_pb2
from trips import trips_pb2

from tests.support import (
    PLAYGROUND,
    SERVICES,
    Cluster,
    free_port,
    invocation_id_of,
    running_cluster,
)

CONSOLE = f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    args = ["--workers", "2", "--partitions", "4", "--console", CONSOLE]
    tmp = tmp_path_factory.mktemp("console")
    with running_cluster(tmp, broker_args=args, services=(*SERVICES, PLAYGROUND)) as running:
        yield running


def _http(path: str, data: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with urllib.request.urlopen(f"http://{CONSOLE}{path}", data=body, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_invocations_of_every_partition_are_listed_and_decoded(cluster: Cluster) -> None:
    request = trips_pb2.ReserveTripRequest(to="Reykjavik", amount_cents=120)
    _, call = cluster.trips.Reserve.with_call(request, timeout=60)
    invocation_id = invocation_id_of(call)
    steps = cluster.invocations(service="flights.Flights")

    status, listing = _http("/invocations")
    assert status == 200
    for listed in (invocation_id, *(s.id for s in steps)):
        assert listed in listing

    def decoded() -> str | None:
        # The console learns the deployments' types within a refresh or two.
        status, page = _http(f"/invocations/{urllib.parse.quote(invocation_id)}")
        assert status == 200, page
        # The request as JSON with its field names, not as hex bytes.
        return page if "{&quot;to&quot;: &quot;Reykjavik&quot;" in page else None

    cluster.wait_for(decoded, message="the trip's request decoded on its page")


def test_state_is_edited_in_the_partition_of_its_key(cluster: Cluster) -> None:
    for n in range(4):
        key = f"console-{n}"
        cluster.counter.Add(playground_pb2.AddRequest(name=key, amount=1), timeout=30)
        form = {"service": "playground.Counter", "key": key, "name": "total", "value": "41"}
        status, body = _http("/state", {**form, "op": "set"})
        assert status in (200, 303), body
        assert cluster.state("playground.Counter", key)["total"] == 41
        assert cluster.counter.Get(playground_pb2.CounterRef(name=key), timeout=30).number == 41


def test_overview_and_awaiting_pages_answer(cluster: Cluster) -> None:
    for path in ("/", "/awaiting"):
        status, body = _http(path)
        assert status == 200, (path, body)


def test_a_hung_worker_leaves_pages_answering(cluster: Cluster) -> None:
    # A SIGSTOPped worker's partitions never answered: pages waited for good (brokerctl
    # got DEADLINE_EXCEEDED at 10 s), and every tab's refresh added a waiting request.
    status = cluster.admin.ClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=10)
    pid = status.nodes[1].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        code, body = _http("/invocations", timeout=60)
        assert time.monotonic() - started < 30
        assert code in (503, 504), body
    finally:
        os.kill(pid, signal.SIGCONT)
    cluster.wait_for(lambda: _http("/invocations")[0] == 200, message="the worker to answer again")
