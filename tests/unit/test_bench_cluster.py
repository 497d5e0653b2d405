"""`python -m bench --cluster/--failover`: when a cluster counts as settled, the keys the
failover probes, the ratios to the embedded broker and the failover summary."""

from __future__ import annotations

import collections
import dataclasses
import math

from durable.v1 import admin_pb2

from bench import failover, report
from bench.cluster import settled
from bench.load import Window
from bench.run import Point, scenarios
from broker.cluster.placement import of_key

TRIVIAL = scenarios(["trivial"], b"x", [])[0]


def status(
    *partitions: tuple[str, str, bool], alive: tuple[str, ...] = ("node1", "node2")
) -> admin_pb2.ClusterStatusResponse:
    out = admin_pb2.ClusterStatusResponse(mode="cluster")
    for name in ("node1", "node2"):
        out.nodes.add(name=name, alive=name in alive)
    for i, (owner, preferred, serving) in enumerate(partitions):
        out.partitions.add(id=i, owner=owner, preferred=preferred, serving=serving)
    return out


def test_settled_needs_every_node_alive_and_every_partition_on_its_preferred_node() -> None:
    names = ["node1", "node2"]
    good = status(("node1", "node1", True), ("node2", "node2", True))
    assert settled(good, names) is None
    # A restarted node not yet seen alive: its partitions are not handed back yet.
    early = status(("node1", "node1", True), ("node1", "node1", True), alive=("node1",))
    assert settled(early, names) == "nodes not seen alive yet: node2"
    moving = status(("node1", "node1", True), ("node1", "node2", True))
    assert settled(moving, names) == "partition 1 led by node1, to be handed to node2"
    down = status(("node1", "node1", True), ("node2", "node2", False))
    assert settled(down, names) == "partition 1 not served (leader node2)"
    vacant = status(("", "node1", False))
    assert settled(vacant, names) == "partition 0 not served (leader none)"


def test_failover_keys_live_in_their_partitions() -> None:
    for partitions in (1, 4, 7):
        keys = failover.keys_for(partitions)
        assert [of_key(k, partitions) for k in keys] == list(range(partitions))


def point(name: str, conc: int, latencies: list[float], cpu: dict[str, float]) -> Point:
    window = Window(
        latencies=latencies,
        errors=collections.Counter(),
        error_samples={},
        seconds=1.0,
        deltas=cpu,
        unfinished=0,
    )
    return Point(dataclasses.replace(TRIVIAL, name=name), conc, window)


def test_cluster_rows_are_ratios_to_the_embedded_broker_with_nats_cpu_included() -> None:
    embedded = point("trivial", 64, [0.010] * 100, {"broker": 0.5})
    nodes = point("trivial/n2", 64, [0.020] * 50, {"broker": 0.5, "nats": 0.25})
    text = report.cluster_section(
        [embedded, nodes],
        {"fsync": True, "cluster_partitions": 4, "connections": 4, "payload_bytes": 64,
         "duration_s": 5.0},
    )  # fmt: skip
    row = text.splitlines()[-1].split()
    # scenario, nodes, conc, calls/s, vs embedded, p50, vs embedded, CPU, NATS, vs embedded,
    # NATS cores, other cores
    assert row == [
        *("trivial", "2", "64", "50.0", "0.50x", "20.0", "2.00x"),
        *("15.00", "5.00", "3.00x", "0.25", "0.00/0.00"),
    ]


def test_failover_summary_reports_targets_and_lost_increments() -> None:
    kills = [
        failover.Kill("node1", 0, {0: 1.5, 3: 2.5}, 8.0, collections.Counter()),
        failover.Kill("node2", 1, {1: 6.0, 2: math.inf}, 9.0, collections.Counter(UNAVAILABLE=2)),
    ]
    check = {
        "acknowledged": [10, 10],
        "failed": [1, 1],
        "lost": [0, 1],
        "extra": [2, 0],
        "errors": {},
    }
    text = failover.render(kills, check, nodes=2, partitions=4)
    assert "p50 4.25 s, max never" in text
    assert "MISSED" in text
    assert "LOST 1 acknowledged increments" in text
    assert "2 increments MORE than calls made" in text
    assert failover.to_json(kills, check)["kills"][1]["back_s"] == {"1": 6.0, "2": None}


def test_failover_summary_of_a_run_stopped_before_the_check() -> None:
    kills = [failover.Kill("node1", 0, {0: 1.5}, 8.0, collections.Counter())]
    text = failover.render(kills, {}, nodes=2, partitions=4)
    assert "p50 1.50 s, max 1.50 s" in text
    assert "trickle: not checked" in text
