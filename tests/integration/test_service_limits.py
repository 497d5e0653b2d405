"""Per-service and per-handler limits with real processes: a concurrency limit holds
under 200 submissions (measured by the handler itself), a start rate holds within 10%
over 10 s, and both the limits and the queue survive a SIGKILL of the broker."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from durable.v1 import admin_pb2, invocation_pb2
from playground import playground_pb2 as pg

from tests.support import PLAYGROUND, Cluster

BROKERCTL = Path(sys.executable).parent / "brokerctl"
BUSY = "playground.Busy"
Status = invocation_pb2.InvocationStatus


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("limits"), services=(PLAYGROUND,)) as running:
        yield running


def brokerctl(cluster: Cluster, *args: str) -> str:
    done = subprocess.run(
        [str(BROKERCTL), "--admin", cluster.admin_address, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def limits_of(cluster: Cluster, method: str = "") -> admin_pb2.ScopeLimits:
    response = cluster.admin.GetLimits(admin_pb2.GetLimitsRequest(service=BUSY), timeout=10)
    return next(s for s in response.limits if s.method == method)


def test_a_concurrency_limit_of_5_holds_for_200_submissions(cluster: Cluster) -> None:
    out = brokerctl(cluster, "services", "limit", BUSY, "--concurrency", "5")
    assert "concurrency 5" in out
    calls = [
        cluster.busy.Work.future(pg.WorkRequest(millis=40, group="c"), timeout=60)
        for _ in range(200)
    ]
    # Some wait, shown as queued, while five run.
    cluster.wait_for(lambda: limits_of(cluster).queued > 0, message="invocations queued")
    assert cluster.invocations("QUEUED", service=BUSY)
    assert "queued" in brokerctl(cluster, "invocations", "list", "--status", "queued")
    assert all(call.result().text == "ok" for call in calls)
    stats = cluster.busy.Stats(pg.WorkRequest(group="c"), timeout=30)
    assert stats.items == ["200"]
    # Never more than five side effects at once (and, with 195 waiting, more than a few).
    assert 3 <= stats.number <= 5, stats.number
    brokerctl(cluster, "services", "limit", BUSY, "--clear")
    assert "no limits set" in brokerctl(cluster, "services", "limits", BUSY)


def test_a_rate_of_10_per_second_holds_within_10_percent_over_10_s(cluster: Cluster) -> None:
    brokerctl(cluster, "services", "limit", f"{BUSY}/Work", "--rate", "10")
    calls = [
        cluster.busy.Work.future(pg.WorkRequest(millis=0, group="r"), timeout=60)
        for _ in range(110)
    ]
    began = sorted(call.result().number for call in calls)
    # The first second's burst (10), then 100 starts at the refill rate.
    steady = (len(began) - 11) / ((began[-1] - began[10]) / 1000)
    assert 9.0 <= steady <= 11.0, steady
    overall = (len(began) - 1) / ((began[-1] - began[0]) / 1000)
    assert overall <= 11.0 * 1.1, overall
    brokerctl(cluster, "services", "limit", f"{BUSY}/Work", "--clear")


def test_limits_and_queued_invocations_survive_a_broker_sigkill(cluster: Cluster) -> None:
    brokerctl(cluster, "services", "limit", f"{BUSY}/Work", "--concurrency", "1")
    calls = [
        cluster.busy.Work.future(pg.WorkRequest(millis=300, group="k"), timeout=60)
        for _ in range(5)
    ]

    def four_queued() -> list[invocation_pb2.Invocation] | None:
        found = cluster.invocations("QUEUED", service=BUSY)
        return found if len(found) == 4 else None

    queued = cluster.wait_for(four_queued, message="four invocations queued")
    ids = {i.id for i in queued} | {i.id for i in cluster.invocations("RUNNING", service=BUSY)}
    assert len(ids) == 5
    cluster.restart_broker(kill=True)
    for call in calls:  # their callers lost the broker; the invocations go on
        try:
            call.result()
        except grpc.RpcError:
            pass
    limit = limits_of(cluster, "Work")
    assert (limit.concurrency, limit.source) == (1, "runtime")

    def all_done() -> bool:
        # One listing is one consistent snapshot; reading the records one call at a time
        # could see one invocation still running and, a moment later, its successor.
        records = [r for r in cluster.invocations(service=BUSY) if r.id in ids]
        assert len(records) == len(ids)
        running = [r for r in records if r.status in (Status.RUNNING, Status.BACKING_OFF)]
        assert len(running) <= 1, [r.id for r in running]
        return all(r.status == Status.COMPLETED for r in records)

    cluster.wait_for(all_done, timeout=30, message="the queued invocations complete")
    assert all(not cluster.invocation(i).result.HasField("failure") for i in ids)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("nosuch.Service", "--concurrency", "1"), "NOT_FOUND: no service 'nosuch.Service'"),
        ((f"{BUSY}/Nope", "--rate", "1"), "NOT_FOUND: service playground.Busy has no handler"),
        ((BUSY,), "INVALID_ARGUMENT: give --concurrency N and/or --rate R"),
        ((BUSY, "--clear", "--concurrency", "2"), "INVALID_ARGUMENT: --clear takes no"),
        (
            (BUSY, "--rate", "1e-310"),
            "INVALID_ARGUMENT: rate 1e-310 per second is below the slowest rate a limit takes",
        ),
    ],
)
def test_bad_limits_are_refused_saying_why(
    cluster: Cluster, args: tuple[str, ...], expected: str
) -> None:
    done = subprocess.run(
        [str(BROKERCTL), "--admin", cluster.admin_address, "services", "limit", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert expected in done.stderr


def test_a_flag_not_given_keeps_the_limit_in_force(cluster: Cluster) -> None:
    # `--rate` after `--concurrency` silently removed the concurrency limit (the admin
    # API sets both; the CLI sent 0 for the flag not given).
    target = f"{BUSY}/Fill"
    try:
        brokerctl(cluster, "services", "limit", target, "--concurrency", "3")
        out = brokerctl(cluster, "services", "limit", target, "--rate", "50")
        assert "concurrency 3, rate 50/s (runtime)" in out, out
        limit = limits_of(cluster, "Fill")
        assert (limit.concurrency, limit.rate) == (3, 50)
        # 0 removes one of them; the other stays.
        out = brokerctl(cluster, "services", "limit", target, "--concurrency", "0")
        assert "concurrency unlimited, rate 50/s (runtime)" in out, out
        brokerctl(cluster, "services", "limit", target, "--concurrency", "2")
        out = brokerctl(cluster, "services", "limit", target, "--rate", "0")
        assert "concurrency 2, rate unlimited (runtime)" in out, out
    finally:
        brokerctl(cluster, "services", "limit", target, "--clear")
