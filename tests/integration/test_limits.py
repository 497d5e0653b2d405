"""Limits end invocations with RESOURCE_EXHAUSTED and say which limit; the
per-deployment concurrency limit queues attempts instead of failing them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from playground import playground_pb2
from trips import trips_pb2

from tests.support import PLAYGROUND, Cluster


def test_a_journal_over_its_limit_fails_terminally(tmp_path: Path) -> None:
    with Cluster(tmp_path, broker_args=["--max-journal-entries", "4"]) as cluster:
        with pytest.raises(grpc.RpcError) as failed:
            cluster.trips.Reserve(trips_pb2.ReserveTripRequest(), timeout=30)
        assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "journal limit reached" in (failed.value.details() or "")
        assert "--max-journal-entries" in (failed.value.details() or "")
        (trip,) = cluster.invocations(service="trips.Trips")
        assert trip.journal_length == 4  # nothing past the limit was journaled


def test_state_over_its_limit_fails_terminally(tmp_path: Path) -> None:
    args = ["--max-state-bytes", "20"]
    with Cluster(tmp_path, broker_args=args, services=(PLAYGROUND,)) as cluster:
        add = playground_pb2.AddRequest(name="c", amount=1)
        assert cluster.counter.Add(add, timeout=30).number == 1
        with pytest.raises(grpc.RpcError) as failed:
            cluster.counter.Add(playground_pb2.AddRequest(name="c", amount=2), timeout=30)
        assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "state limit reached" in (failed.value.details() or "")
        assert "by-2" not in cluster.state("playground.Counter", "c")
        # Another key is not affected.
        other = playground_pb2.AddRequest(name="d", amount=1)
        assert cluster.counter.Add(other, timeout=30).number == 1


def test_attempts_over_the_concurrency_limit_wait_in_line(tmp_path: Path) -> None:
    # Streams from the first attempt: each sleeping handler then holds its slot.
    args = ["--max-concurrency", "1", "--suspend-after", "30s", "--no-unary-first"]
    with Cluster(tmp_path, broker_args=args, services=(PLAYGROUND,)) as cluster:
        results: list[str] = []
        errors: list[BaseException] = []

        def sleep() -> None:
            try:
                reply = cluster.waiter.Sleep(playground_pb2.SleepRequest(millis=700), timeout=30)
                results.append(reply.text)
            except BaseException as e:
                errors.append(e)

        started = time.monotonic()
        threads = [threading.Thread(target=sleep) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not errors and results == ["slept", "slept"]
        # One attempt at a time: the second could not start before the first ended.
        assert time.monotonic() - started >= 1.4
