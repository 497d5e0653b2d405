"""Limits end invocations with RESOURCE_EXHAUSTED and say which limit; the
per-deployment concurrency limit queues attempts instead of failing them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from durable.v1 import admin_pb2, ingress_pb2
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


def test_an_output_over_the_payload_limit_fails_terminally(tmp_path: Path) -> None:
    # The limit callers' requests are held to holds for what a handler sends back: a
    # larger output would reach no client with gRPC's default receive limit.
    limit = 100_000
    args = ["--max-payload-bytes", str(limit)]
    with Cluster(tmp_path, broker_args=args, services=(PLAYGROUND,)) as cluster:

        def reply_bytes(size: int) -> int:
            return playground_pb2.Reply(text="x" * size, number=size).ByteSize()

        # The response message at the limit.
        size = next(n for n in range(limit, limit - 16, -1) if reply_bytes(n) <= limit)
        fits = playground_pb2.FillRequest(size=size)
        assert len(cluster.busy.Fill(fits, timeout=30).text) == size
        # Just over it: it was accepted (an entry's 64 KiB headroom for names and framing
        # let it through) and a client holding gRPC to the same limit got no result.
        for size, says in [
            (limit + 1_000, f"sent its output of {reply_bytes(limit + 1_000)} bytes"),
            (4 * limit, "sent entry 1 (output)"),
        ]:
            with pytest.raises(grpc.RpcError) as failed:
                cluster.busy.Fill(playground_pb2.FillRequest(size=size), timeout=30)
            assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = failed.value.details() or ""
            assert f"payload limit reached: playground.Busy/Fill {says}" in details, details
            assert f"over the {limit}-byte limit (--max-payload-bytes)" in details
        failed_fill = [
            i for i in cluster.invocations(service="playground.Busy") if i.result.failure.code
        ]
        assert len(failed_fill) == 2, failed_fill
        # Terminal: one attempt, and the output it refused was never journaled.
        assert all(f.attempts == 1 and f.journal_length == 1 for f in failed_fill), failed_fill
        assert "Traceback" not in cluster.broker.log_path.read_text()


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


def test_admin_state_writes_obey_the_state_limit(tmp_path: Path) -> None:
    args = ["--max-state-bytes", "64"]
    with Cluster(tmp_path, broker_args=args, services=(PLAYGROUND,)) as cluster:

        def set_state(name: str, value: bytes) -> admin_pb2.SetStateResponse:
            request = admin_pb2.SetStateRequest(
                service="playground.Counter", key="c", name=name, value=value
            )
            return cluster.admin.SetState(request, timeout=10)

        first = set_state("a", b'"' + b"x" * 40 + b'"')
        assert (first.values, first.bytes) == (1, 1 + 42)
        with pytest.raises(grpc.RpcError) as refused:
            set_state("b", b'"' + b"y" * 40 + b'"')
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over the 64-byte limit (--max-state-bytes)" in (refused.value.details() or "")
        assert set(cluster.state("playground.Counter", "c")) == {"a"}  # unchanged
        # Handlers on the key keep working.
        add = playground_pb2.AddRequest(name="c", amount=1)
        assert cluster.counter.Add(add, timeout=30).number == 1


KEY_LIMIT = 65535


def test_keys_over_the_storage_limit_are_refused_up_front(tmp_path: Path) -> None:
    with Cluster(tmp_path, services=(PLAYGROUND,)) as cluster:
        over = "k" * (KEY_LIMIT + 1)
        calls: dict[str, Callable[[], object]] = {
            "object": lambda: cluster.counter.Add(
                playground_pb2.AddRequest(name=over, amount=1), timeout=30
            ),
            "workflow": lambda: cluster.signup.Run(
                playground_pb2.SignupRequest(user="u" * 70_000), timeout=30
            ),
            "get state": lambda: cluster.admin.GetState(
                admin_pb2.GetStateRequest(service="playground.Counter", key=over), timeout=10
            ),
            "set state": lambda: cluster.admin.SetState(
                admin_pb2.SetStateRequest(
                    service="playground.Counter", key=over, name="n", value=b"1"
                ),
                timeout=10,
            ),
            "attach": lambda: cluster.ingress_api.Attach(
                ingress_pb2.AttachRequest(
                    idempotent=ingress_pb2.IdempotentTarget(
                        service="playground.Counter", method="Add", key=over, idempotency_key="i"
                    )
                ),
                timeout=10,
            ),
        }
        for what, call in calls.items():
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
            assert f"over the {KEY_LIMIT}-byte limit" in (refused.value.details() or ""), what
        assert cluster.invocations() == []  # nothing was journaled

        # A key at the limit works end to end.
        at_limit = "k" * KEY_LIMIT
        added = cluster.counter.Add(playground_pb2.AddRequest(name=at_limit, amount=3), timeout=30)
        assert added.number == 3
        assert cluster.state("playground.Counter", at_limit)["total"] == 3
