"""The opt-in Prometheus endpoint counts what the broker does."""

from __future__ import annotations

import re
import socket
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


def test_an_oversized_request_is_answered_431_without_a_traceback(
    metered: tuple[Cluster, str],
) -> None:
    # Headers past 64 KiB got no answer and logged a traceback each: any local client
    # could flood the log.
    cluster, url = metered
    host, port = url.split("/")[2].split(":")
    before = cluster.broker.log_path.stat().st_size
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 "), answer
    assert _scrape(url)  # still serving
    with cluster.broker.log_path.open("rb") as log:
        log.seek(before)
        assert b"Traceback" not in log.read()
