"""A full disk: new work backs off until space returns, and nothing is lost.

The broker's data dir lives on a small tmpfs the test fills up. Mounting needs the
privilege to mount (root in a container that allows it, as here and in CI).
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from trips import trips_pb2

from tests.support import Cluster, wait_for


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


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

        os.remove(filler)
        after_space = during.result(timeout=90)
        assert after_space.status == "success"
        assert cluster.trips.Reserve(trips_pb2.ReserveTripRequest(), timeout=30).status == (
            "success"
        )

        # Nothing was lost: after a hard restart every trip is there, completed.
        cluster.restart_broker(kill=True)
        trips = cluster.invocations(service="trips.Trips")
        assert len(trips) == 3
        assert all(t.status == 5 and t.result.HasField("value") for t in trips)
