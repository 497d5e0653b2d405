"""`brokerctl cluster status` against a real cluster: three `python -m broker --nats`
nodes over three nats-servers, with the demo services, asked through the real
`brokerctl` process.

- the text shows every node (alive, its ingress and admin addresses, the partitions it
  leads) and every partition (leader, serving, applied position, log end, each
  follower's lag), the same through every node;
- `--json` carries the cluster-mode fields: node addresses, `applied`, `log_last`,
  `followers` (node, applied, lag) and `preferred`;
- after a burst of calls over every partition, every follower catches up: each
  partition's lag goes back to 0 at the log's end (polled with a deadline).

One cluster for the module: a start costs several seconds.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from durable.v1 import admin_pb2, admin_pb2_grpc
from flights import flights_pb2

from broker.cluster import placement
from tests import support
from tests.cluster_nodes import PARTITIONS, NodesCluster

BROKERCTL = str(Path(support.PYTHON).parent / "brokerctl")
NODES = 3
BURST = 40
CATCH_UP_S = 20.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodesCluster]:
    tmp = tmp_path_factory.mktemp("status")
    with support.running_cluster(tmp, nodes=NODES, suspend_after="0") as started:
        assert isinstance(started, NodesCluster)
        yield started


def _brokerctl(admin: str, *args: str) -> str:
    run = subprocess.run(
        [BROKERCTL, "--admin", admin, "cluster", "status", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def _names() -> list[str]:
    return [f"node{i + 1}" for i in range(NODES)]


def _wait_settled(admin: str) -> None:
    """Until the node at `admin` sees every node alive and every partition served by the
    node it prefers with both others following: on a loaded machine a heartbeat can be
    late for a moment, and the exact shapes below are those of a settled cluster.

    Asked of the node the test then asks: each node reads the others' heartbeats on its
    own half-second beat, so one node can see the cluster settled while another still
    shows a new leader's last beat from before it led (CI saw "leads none" so)."""

    def settled() -> bool:
        with grpc.insecure_channel(admin) as channel:
            stub = admin_pb2_grpc.AdminStub(channel)
            status = stub.ClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=10)
        # A node's `leads` comes from its own heartbeat, half a second behind the leases
        # a partition's leader is read from: wait until the two agree.
        leads = {n.name: set(n.partitions) for n in status.nodes}
        return all(n.alive for n in status.nodes) and all(
            p.serving
            and p.owner == p.preferred
            and p.id in leads.get(p.owner, set())
            and len(p.followers) == NODES - 1
            for p in status.partitions
        )

    support.wait_for(settled, timeout=CATCH_UP_S, interval=0.2, message="a settled cluster")


@pytest.mark.parametrize("through", range(NODES))
def test_text_shows_nodes_and_partitions(cluster: NodesCluster, through: int) -> None:
    _wait_settled(cluster.node_admin[through])
    text = _brokerctl(cluster.node_admin[through])

    lines = text.splitlines()
    assert lines[:2] == ["mode: cluster", "nodes:"], text
    led: dict[int, str] = {}
    for i, name in enumerate(_names()):
        line = next(x for x in lines if x.startswith(f"  {name}: "))
        match = re.fullmatch(
            rf"  {name}: alive \(pid \d+\), ingress {re.escape(cluster.node_ingress[i])}, "
            rf"admin {re.escape(cluster.node_admin[i])}, leads ([\d, ]+|none)",
            line,
        )
        assert match, line
        if match.group(1) != "none":
            led.update((int(p), name) for p in match.group(1).split(", "))
    # Every partition is led by exactly one node, and its line agrees.
    assert sorted(led) == list(range(PARTITIONS)), text
    start = lines.index("partitions:")
    partition_lines = lines[start + 1 :]
    assert len(partition_lines) == PARTITIONS, text
    for p, line in enumerate(partition_lines):
        others = [n for n in _names() if n != led[p]]
        match = re.fullmatch(
            rf"  {p}: leader {led[p]}, serving, applied (\d+), log end (\d+), "
            rf"followers {others[0]} lag \d+, {others[1]} lag \d+",
            line,
        )
        assert match, line
        # Balanced and settled: no partition is about to move.
        assert "moving to" not in line


def test_json_carries_addresses_positions_and_followers(cluster: NodesCluster) -> None:
    _wait_settled(cluster.node_admin[0])
    printed = json.loads(_brokerctl(cluster.node_admin[0], "--json"))

    assert printed["mode"] == "cluster"
    assert [(n["name"], n["alive"], n["ingress"], n["admin"]) for n in printed["nodes"]] == [
        (name, True, cluster.node_ingress[i], cluster.node_admin[i])
        for i, name in enumerate(_names())
    ]
    assert [p["id"] for p in printed["partitions"]] == list(range(PARTITIONS))
    for p in printed["partitions"]:
        assert p["owner"] in _names() and p["preferred"] == p["owner"], p
        assert p["serving"] is True
        # proto3 JSON: uint64 is a string.
        assert int(p["applied"]) <= int(p["log_last"]), p
        assert sorted(f["node"] for f in p["followers"]) == sorted(
            n for n in _names() if n != p["owner"]
        )
        for f in p["followers"]:
            assert set(f) == {"node", "applied", "lag"}
            assert int(f["lag"]) == max(int(p["applied"]) - int(f["applied"]), 0), p
        owner = next(n for n in printed["nodes"] if n["name"] == p["owner"])
        assert p["id"] in owner["partitions"]


def _caught_up(status: admin_pb2.ClusterStatusResponse, past: dict[int, int]) -> bool:
    """Every partition's log moved past `past`, its leader applied the log's end, and
    every follower is there too."""
    return all(
        p.log_last > past[p.id]
        and p.applied == p.log_last
        and len(p.followers) == NODES - 1
        and all(f.lag == 0 and f.applied == p.applied for f in p.followers)
        for p in status.partitions
    )


def test_follower_lag_goes_to_zero_after_a_burst(cluster: NodesCluster) -> None:
    before = cluster.admin.ClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=10)
    past = {p.id: p.log_last for p in before.partitions}

    def reserve(i: int) -> Any:
        request = flights_pb2.ReserveRequest(trip_id=f"status-burst-{i}")
        return cluster.flights.Reserve(request, timeout=30)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(reserve, range(BURST)))

    last: list[admin_pb2.ClusterStatusResponse] = []

    def settled() -> bool:
        last[:] = [cluster.admin.ClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=10)]
        return _caught_up(last[0], past)

    support.wait_for(
        settled, timeout=CATCH_UP_S, interval=0.2, message=lambda: f"followers caught up: {last}"
    )
    # And brokerctl says so too, through another node. A node learns the others'
    # positions from their heartbeats (every 0.5 s), so its view may trail the first
    # node's by one: it must come to the same answer, not at the same instant.
    shown: list[Any] = []

    def printed_caught_up() -> bool:
        shown[:] = json.loads(_brokerctl(cluster.node_admin[2], "--json"))["partitions"]
        return all(
            int(p["log_last"]) > past[p["id"]] and all(f["lag"] == "0" for f in p["followers"])
            for p in shown
        )

    support.wait_for(
        printed_caught_up,
        timeout=CATCH_UP_S,
        interval=0.2,
        message=lambda: f"brokerctl to show the followers caught up: {shown}",
    )


def _metrics(address: str) -> dict[str, float]:
    """`GET /metrics` of a node: sample (name and labels) -> value."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_every_node_reports_leadership_positions_and_append_latency(
    cluster: NodesCluster,
) -> None:
    keys = {placement.of_key(f"metrics-{i}", PARTITIONS): f"metrics-{i}" for i in range(64)}
    assert sorted(keys) == list(range(PARTITIONS))
    for key in keys.values():  # a call on every partition: each leader appended
        cluster.flights.Get(flights_pb2.TripRef(trip_id=key), timeout=30)
    scraped = [_metrics(address) for address in cluster.node_metrics]
    for p in range(PARTITIONS):
        label = f'{{partition="{p}"}}'
        leaders = [m[f"durable_partition_leader{label}"] for m in scraped]
        assert sorted(leaders) == [0.0] * (NODES - 1) + [1.0], (p, leaders)
        for m in scraped:
            assert m[f"durable_log_last{label}"] >= m[f"durable_log_applied{label}"] > 0
            assert m[f"durable_log_lag_entries{label}"] >= 0
        leader = scraped[leaders.index(1.0)]
        assert leader[f"durable_log_append_seconds_count{label}"] > 0, p
        # The leader's own metrics, labelled with their partition.
        completed = f'durable_invocations_completed_total{{partition="{p}",'
        assert any(k.startswith(completed) for k in leader), (p, sorted(leader))
