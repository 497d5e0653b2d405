"""A full disk: new work backs off until space returns, and nothing is lost.

The broker's data dir lives on a small tmpfs the test fills up. Mounting needs the
privilege to mount (root in a container that allows it, as here and in CI).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from playground import playground_pb2 as pb
from trips import trips_pb2

from tests.support import PLAYGROUND, Cluster, wait_for


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with _tmpfs(tmp_path / "disk", "size=24m") as disk:
        yield disk


@pytest.fixture
def few_files_disk(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs that also holds few files: once they are used up, RocksDB cannot
    reopen the store (every open creates a new log and MANIFEST)."""
    with _tmpfs(tmp_path / "disk", "size=24m,nr_inodes=400") as disk:
        yield disk


def _fill(disk: Path) -> Path:
    """Writes a file until not even one more byte fits."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 64, 1):
            chunk = b"\0" * size
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_backs_off_new_work_and_loses_nothing(small_disk: Path, tmp_path: Path) -> None:
    data = small_disk / "broker"
    args = ["--data-dir", str(data), "--retry-initial", "100ms", "--retry-max", "500ms"]
    with Cluster(tmp_path / "cluster", broker_args=args) as cluster:
        before = cluster.trips.Reserve(trips_pb2.ReserveTripRequest(), timeout=30)
        assert before.status == "success"

        filler = _fill(small_disk)
        during = cluster.trips.Reserve.future(
            trips_pb2.ReserveTripRequest(),
            metadata=(("idempotency-key", "during-full-disk"),),
            timeout=120,
        )

        def refused() -> str | None:
            try:
                cluster.flights.Get(trips_pb2.ReserveTripRequest(), timeout=5)  # type: ignore[arg-type]
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    return e.details() or ""
            return None

        message = wait_for(refused, timeout=30, message="new work to be turned away")
        assert "cannot write its journal" in message
        assert not during.done()
        # A load balancer's or an orchestrator's probe sees it too.
        health = health_pb2_grpc.HealthStub(cluster.ingress_channel)
        request = health_pb2.HealthCheckRequest()
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert health.Check(request, timeout=10).status == not_serving

        os.remove(filler)
        after_space = during.result(timeout=90)
        assert after_space.status == "success"
        assert health.Check(request, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        assert cluster.trips.Reserve(trips_pb2.ReserveTripRequest(), timeout=30).status == (
            "success"
        )

        # Nothing was lost: after a hard restart every trip is there, completed.
        cluster.restart_broker(kill=True)
        trips = cluster.invocations(service="trips.Trips")
        assert len(trips) == 3
        assert all(t.status == 5 and t.result.HasField("value") for t in trips)


def test_a_broker_told_to_stop_on_a_full_disk_stops_and_loses_nothing_acknowledged(
    small_disk: Path, tmp_path: Path
) -> None:
    # It waited for the disk to have room: SIGTERM was ignored until a SIGKILL.
    data = small_disk / "broker"
    args = ["--data-dir", str(data), "--retry-initial", "100ms", "--retry-max", "500ms"]
    with Cluster(tmp_path / "cluster", broker_args=args) as cluster:
        before, call = cluster.trips.Reserve.with_call(trips_pb2.ReserveTripRequest(), timeout=30)
        assert before.status == "success"
        before_id = str(dict(call.initial_metadata())["invocation-id"])
        filler = _fill(small_disk)
        stranded = cluster.trips.Reserve.future(trips_pb2.ReserveTripRequest(), timeout=60)
        health = health_pb2_grpc.HealthStub(cluster.ingress_channel)
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        wait_for(
            lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == not_serving,
            timeout=30,
            message="the journal's writes to fail",
        )
        started = time.monotonic()
        assert cluster.broker.terminate() == 0  # AssertionError if it had to be killed
        assert time.monotonic() - started < 10
        assert "stopping with journal writes still failing" in cluster.broker.log_tail(200)
        # Its caller hears that the broker went away (if its id went out, the
        # invocation goes on after the restart, below).
        with pytest.raises(grpc.RpcError) as failed:
            stranded.result(timeout=30)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE

        os.remove(filler)
        cluster.start_broker()
        # The acknowledged trip is there as it ended; the rest runs to its end.
        trips = {t.id: t for t in cluster.invocations(service="trips.Trips")}
        assert trips[before_id].status == 5 and trips[before_id].result.HasField("value")
        assert cluster.trips.Reserve(trips_pb2.ReserveTripRequest(), timeout=30).status == (
            "success"
        )
        cluster.wait_for(
            lambda: all(t.status == 5 for t in cluster.invocations(service="trips.Trips")),
            message="every trip to complete",
        )


def test_a_broker_whose_disk_filled_while_idle_stops_cleanly(
    small_disk: Path, tmp_path: Path
) -> None:
    # Closing flushes the memtable to a table file: on a full disk that failed and the
    # broker exited 1, "broker failed: IO error: No space left on device".
    data = small_disk / "broker"
    with Cluster(tmp_path / "cluster", broker_args=["--data-dir", str(data)]) as cluster:
        before = cluster.trips.Reserve(trips_pb2.ReserveTripRequest(), timeout=30)
        assert before.status == "success"
        filler = _fill(small_disk)
        assert cluster.broker.terminate() == 0
        os.remove(filler)
        cluster.start_broker()
        trips = cluster.invocations(service="trips.Trips")
        assert [t.status for t in trips] == [5]


def _use_up_files(disk: Path) -> list[Path]:
    """Creates empty files until no more fit; returns them."""
    made: list[Path] = []
    while True:
        path = disk / f"inode-{len(made)}"
        try:
            path.touch()
        except OSError as e:
            assert e.errno == errno.ENOSPC
            return made
        made.append(path)


def test_purging_resumes_after_the_store_could_not_be_reopened(
    few_files_disk: Path, tmp_path: Path
) -> None:
    data = few_files_disk / "broker"
    args = ["--data-dir", str(data), "--retention", "4s"]
    args += ["--retry-initial", "100ms", "--retry-max", "500ms"]
    with Cluster(tmp_path / "cluster", broker_args=args, services=(PLAYGROUND,)) as cluster:
        add = cluster.counter.Add
        for _ in range(20):
            add(pb.AddRequest(name="n", amount=1), timeout=30)

        def log() -> str:
            return cluster.broker.log_path.read_text(errors="replace")

        filler = _fill(few_files_disk)
        files = _use_up_files(few_files_disk)
        # More calls, and the purge of the first ones, fill what space is left; then a
        # write fails, and so does every reopen: the store stays closed.
        more = [add.future(pb.AddRequest(name="n", amount=1), timeout=120) for _ in range(50)]
        cluster.wait_for(lambda: "reopening the journal store failed" in log(), timeout=60)
        # Reads fail cleanly meanwhile: UNAVAILABLE, saying why.
        with pytest.raises(grpc.RpcError) as refused:
            cluster.invocations(status="COMPLETED", service="playground.Counter")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
        assert "closed after a failed reopen" in (refused.value.details() or "")
        # The outage lasts a few rounds of the purger (every second with a 4 s
        # retention), which used to die on the closed store and never come back.
        closed_at = time.monotonic()
        wait_for(lambda: time.monotonic() - closed_at > 3.0, message="three purge rounds")

        os.remove(filler)
        for path in files:
            path.unlink()
        for future in more:
            try:
                future.result(timeout=90)
            except grpc.RpcError as e:  # turned away while the disk was full
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
        # Completed after the outage: only a purger that still runs removes these.
        for _ in range(5):
            add(pb.AddRequest(name="n", amount=1), timeout=30)
        cluster.wait_for(
            lambda: not cluster.invocations(service="playground.Counter"),
            timeout=60,
            message=lambda: f"the expired invocations to be purged: {cluster.invocations()}",
        )
        text = log()
        # Said once per outage, not once per retry.
        assert text.count("reopening the journal store failed") == 1
        assert text.count("purging expired invocations failed") <= 1
        # The failed reopens left nothing that a later start mistakes for damage.
        cluster.restart_broker(kill=True)
        assert "damaged" not in log() and "missing acknowledged" not in log()
