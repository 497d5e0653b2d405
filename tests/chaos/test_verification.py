"""The verification runner, bounded for CI: random programs while the broker and the
service are SIGKILLed and the streams between them broken; every program answers once,
every counter equals the model. `make chaos` runs the same thing for longer.

Two runs: a fixed seed, and a fresh random seed each time (in the test id and the report:
replay a failure with the `replay:` command it prints), then the same over two worker
processes and over a cluster of three nodes on three NATS servers. Another run breaks
things on purpose after the programs finished, to show the checks catch what they claim to.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
from pathlib import Path

import pytest
from chaos import chaos_pb2_grpc
from durable.v1 import admin_pb2

from broker.replication.engine import LEASE_TTL_S
from tests.chaos.runner import Options, parse_args, run
from tests.chaos.runner_cluster import ChaosCluster
from tests.chaos.runner_faults import (
    CLUSTER_KINDS,
    KINDS,
    MAX_DOWNTIME_S,
    NATS,
    NODE,
    PAUSE,
    WORKER,
    schedule,
)
from tests.chaos.runner_model import Model, generate

FIXED_SEED = 20_241_126


def _fresh_seed() -> int:
    """A new seed every test run, the same in every pytest-xdist worker of one run
    (their collections, whose ids name the seed, must agree)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run:
        return int(hashlib.sha256(run.encode()).hexdigest(), 16) % (2**31 - 1) + 1
    return random.SystemRandom().randrange(1, 2**31)


RANDOM_SEED = _fresh_seed()


@pytest.mark.parametrize(
    "seed",
    [FIXED_SEED, RANDOM_SEED],
    ids=[f"fixed-seed-{FIXED_SEED}", f"random-seed-{RANDOM_SEED}"],
)
def test_programs_survive_crashes(
    seed: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 40 programs over 12 s with a fault every ~2.5 s: about 15-20 s on 2 cores.
    options = Options(seed=seed, programs=40, duration=12.0, fault_interval=2.5, settle=60.0)
    report = run(options, tmp_path)
    print(report.text)
    # One line in the test output, passed or not: the seed, to replay the run.
    with capsys.disabled():
        verdict = "passed" if report.passed else "FAILED"
        print(
            f"\nchaos run {verdict}: seed {seed}, {sum(report.faults.values())} faults, "
            f"{report.invocations} invocations, {report.elapsed:.0f} s "
            f"(replay: {options.command()})"
        )
    assert report.passed, report.text
    assert sum(report.faults.values()) >= 2, report.text


def test_programs_survive_crashes_over_two_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same programs over two worker processes: counters and program keys hash to both
    # partitions, so calls, sends and their answers cross processes through the outbox,
    # while workers (restarted by the supervisor) and the whole broker are SIGKILLed.
    kinds = (*KINDS, WORKER)
    # A fresh seed each run, but one whose schedule kills a worker and the broker: a
    # random schedule of six faults over four kinds may have neither.
    seed = next(
        s
        for s in itertools.count(RANDOM_SEED)
        if {WORKER, "broker"} <= {f.kind for f in schedule(s, kinds, 12.0, 2.0)}
    )
    options = Options(
        seed=seed,
        programs=40,
        duration=12.0,
        fault_interval=2.0,
        settle=60.0,
        workers=2,
        faults=kinds,
    )
    report = run(options, tmp_path)
    print(report.text)
    with capsys.disabled():
        verdict = "passed" if report.passed else "FAILED"
        print(f"\nchaos run over workers {verdict} (replay: {options.command()})")
    assert report.passed, report.text
    assert report.faults["worker"] + report.faults["broker"] >= 1, report.text


@pytest.mark.timeout(180)
def test_programs_survive_node_and_nats_crashes_in_a_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same programs over three broker nodes (four partitions) on three NATS servers:
    # single nodes and single NATS servers are SIGKILLed and restarted (leases expire,
    # followers take over, JetStream elects new stream leaders), a leader is SIGSTOPped
    # and SIGCONTed (past its lease it must be fenced), the service is killed and the
    # streams broken, while each client's tries go to the nodes in turn.
    duration, interval = 40.0, 5.0
    # A fresh seed each run, but one whose schedule kills a node and a NATS server and
    # pauses a node within the first half of the run: faults run one after another and
    # take seconds each (a node or a server stays down up to 4 s, a node paused up to
    # 5 s), so a late one may find every program done.
    seed = next(
        s
        for s in itertools.count(RANDOM_SEED)
        if {NODE, NATS, PAUSE}
        <= {f.kind for f in schedule(s, CLUSTER_KINDS, duration / 2, interval)}
    )
    options = Options(
        seed=seed,
        programs=60,
        duration=duration,
        fault_interval=interval,
        settle=60.0,
        faults=CLUSTER_KINDS,
        cluster=True,
    )
    report = run(options, tmp_path)
    print(report.text)
    with capsys.disabled():
        verdict = "passed" if report.passed else "FAILED"
        print(
            f"\nchaos run over a cluster {verdict} in {report.elapsed:.0f} s "
            f"(replay: {options.command()})"
        )
    assert report.passed, report.text
    assert all(report.faults[kind] >= 1 for kind in (NODE, NATS, PAUSE)), report.text


def test_checks_catch_a_program_applied_twice_and_a_lost_increment(tmp_path: Path) -> None:
    tampered: list[str] = []

    def tamper(cluster: ChaosCluster, model: Model) -> None:
        # Take 1 off a counter (an increment lost), then run the first program again under
        # a new idempotency key (applied twice).
        counter = sorted(model.adds)[0]
        state = cluster.state("chaos.Counters", counter)
        request = admin_pb2.SetStateRequest(
            service="chaos.Counters",
            key=counter,
            name="value",
            value=str(state["value"] - 1).encode(),
        )
        cluster.admin.SetState(request, timeout=10)
        tampered.append(counter)
        counters = chaos_pb2_grpc.CountersStub(cluster.ingress_channel)
        counters.Execute(model.roots[0], metadata=(("idempotency-key", "again"),), timeout=30)

    options = Options(seed=FIXED_SEED, programs=6, duration=1.0, faults=(), settle=30.0)
    report = run(options, tmp_path, tamper=tamper)
    assert not report.passed, report.text
    root = f"p{FIXED_SEED}-0"
    assert f"{root} (root): 2 Execute invocations" in report.text, report.text
    assert f"{root}: state 'executions' is 2" in report.text, report.text
    assert f"counter {tampered[0]}: value" in report.text, report.text
    assert f"replay: python -m tests.chaos.runner --seed {FIXED_SEED}" in report.text
    assert "stuck or wrong invocations:" in report.text, report.text


def test_the_fault_schedule_and_programs_replay_from_the_seed() -> None:
    assert generate(7, 20, 5).roots == generate(7, 20, 5).roots
    assert generate(7, 20, 5).roots != generate(8, 20, 5).roots
    kinds = ("broker", "service", "stream")
    assert schedule(7, kinds, 30, 3) == schedule(7, kinds, 30, 3)
    assert schedule(7, (), 30, 3) == []


def test_cluster_options_and_fault_kinds() -> None:
    options, _, _ = parse_args(["--cluster", "--seed", "7"])
    assert options.cluster and options.faults == CLUSTER_KINDS
    assert options.command().endswith(" --cluster")
    assert parse_args(["--cluster", "--faults", "broker,nats"])[0].faults == ("broker", "nats")
    assert PAUSE in CLUSTER_KINDS and PAUSE not in KINDS
    overlapping = parse_args(["--cluster", "--seed", "7", "--overlap"])[0]
    assert overlapping.overlap and overlapping.command().endswith(" --cluster --overlap")
    assert not options.overlap
    assert parse_args(["--cluster", "--faults", "pause"])[0].faults == (PAUSE,)
    for wrong in (
        ["--faults", "node"],
        ["--faults", "nats"],
        ["--faults", "pause"],
        ["--cluster", "--workers", "2"],
    ):
        with pytest.raises(SystemExit):
            parse_args(wrong)
    # A node or a NATS server is picked by the schedule, and may stay down past a lease.
    faults = schedule(7, (NODE, NATS), 200, 2)
    assert {f.kind for f in faults} == {NODE, NATS}
    assert all(f.variant.isdigit() for f in faults)
    assert max(f.downtime for f in faults) > 2.0
    # A node is paused sometimes within its lease (it goes on leading) and sometimes well
    # past it (a follower takes over; the node that wakes must be fenced).
    pauses = [f.downtime for f in schedule(7, CLUSTER_KINDS, 400, 2) if f.kind == PAUSE]
    assert pauses and all(f.variant.isdigit() for f in schedule(7, (PAUSE,), 50, 2))
    assert min(pauses) < LEASE_TTL_S < 2 * LEASE_TTL_S < max(pauses) <= MAX_DOWNTIME_S[PAUSE]
    # Same seed, same plan, pauses included.
    assert schedule(7, CLUSTER_KINDS, 60, 2) == schedule(7, CLUSTER_KINDS, 60, 2)
