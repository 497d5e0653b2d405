"""The opt-in Prometheus endpoint counts what the broker does."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from trips import trips_pb2

from tests.support import Cluster, free_port


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, str]]:
    address = f"127.0.0.1:{free_port()}"
    cluster = Cluster(Path(tmp_path_factory.mktemp("metrics")), broker_args=["--metrics", address])
    with cluster:
        yield cluster, f"http://{address}/metrics"


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_count_invocations_batches_and_latency(metered: tuple[Cluster, str]) -> None:
    cluster, url = metered
    assert cluster.trips.Reserve(trips_pb2.ReserveTripRequest(), timeout=30).status == "success"
    with pytest.raises(grpc.RpcError):
        cluster.trips.Reserve(trips_pb2.ReserveTripRequest(run_type="failPayment"), timeout=30)
    cluster.trips.Reserve(trips_pb2.ReserveTripRequest(run_type="flakyPayment"), timeout=30)

    m = _scrape(url)
    assert m['durable_invocations_started_total{service="trips.Trips"}'] == 3
    assert m['durable_invocations_completed_total{service="trips.Trips"}'] == 2
    assert m['durable_invocations_failed_total{service="trips.Trips"}'] == 1
    assert m['durable_invocations_retried_total{service="payments.Payments"}'] >= 2
    assert m['durable_invocation_duration_seconds_count{service="flights.Flights"}'] >= 3
    assert m["durable_journal_batch_steps_count"] > 0
    assert m["durable_journal_fsync_seconds_count"] > 0
    assert (
        m['durable_journal_fsync_seconds_bucket{le="+Inf"}']
        == m["durable_journal_fsync_seconds_count"]
    )
    # Buckets are cumulative.
    buckets = [v for k, v in m.items() if re.match(r"durable_journal_batch_steps_bucket", k)]
    assert buckets == sorted(buckets)


def test_other_paths_are_not_found(metered: tuple[Cluster, str]) -> None:
    _, url = metered
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url.replace("/metrics", "/nope"), timeout=10)
    assert e.value.code == 404
