"""`python -m bench --failover N`: how long a partition is unavailable when the node
leading it dies.

With a steady trickle of calls on every partition (a `benchsvc.Counter` key that lives
there, through the live nodes in turn), each round SIGKILLs the node leading one
partition (partition `round % partitions`), then, for every partition that node led,
starts a probe call on that partition's key through a surviving node every
`PROBE_EVERY_S`: the partition's failover time is from the kill to the completion of the
first probe that succeeds (only probes started after the kill count; several are in
flight at once, so a probe stuck on the dead leader does not hide a later success).
Then the killed node starts again and the round ends when the cluster settled (every
partition served by the node it prefers), so every kill hits a cluster in the same shape.

At the end each counter must hold at least the number of increments acknowledged to the
trickle (fewer would be an acknowledged call lost) and at most that plus the failed ones
(a failed call may still have been applied).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import itertools
import math
import statistics
import sys
import time
from typing import Any

import grpc
from benchsvc import benchsvc_pb2, benchsvc_pb2_grpc
from durable.v1 import admin_pb2, admin_pb2_grpc

from bench.cluster import Nodes, settled
from bench.procs import BenchError, Cluster
from broker.cluster.placement import of_key

PROBE_EVERY_S = 0.05
PROBE_TIMEOUT_S = 10.0
# A partition not back within this is reported as failed over in `inf` (and the run goes on).
GIVE_UP_S = 30.0
TRICKLE_EVERY_S = 0.1
TRICKLE_TIMEOUT_S = 10.0
SETTLE_TIMEOUT_S = 60.0
_POLL_S = 0.1
# Targets of issue 14.
TARGET_P50_S = 3.0
TARGET_MAX_S = 5.0
# Reconnect soon to a node that comes back (gRPC's default backoff grows to minutes).
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


@dataclasses.dataclass
class Kill:
    """One round.

    Attributes:
        node: The node killed.
        target: The partition whose leader was chosen.
        back_s: Per partition the node led: seconds from the kill to the first success
            (`inf` when none within `GIVE_UP_S`).
        settle_s: Seconds from the kill until the cluster settled again, the node restarted.
        errors: Failed trickle calls during the round, by status code.
        at: The kill's wall-clock time (to find it in the nodes' logs).
    """

    node: str
    target: int
    back_s: dict[int, float]
    settle_s: float
    errors: collections.Counter[str]
    at: float = 0.0


@dataclasses.dataclass
class Trickle:
    """Per partition: the trickle's key and the probes' (another, so that the trickle's
    counter and its invocations in the logs are the trickle's alone), and the increments
    acknowledged or failed so far."""

    keys: list[str]
    probe_keys: list[str]
    ok: list[int]
    failed: list[int]
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    samples: dict[str, str] = dataclasses.field(default_factory=dict)


def keys_for(partitions: int, prefix: str = "failover") -> list[str]:
    """One key per partition, `keys[p]` living in partition `p`."""
    keys: dict[int, str] = {}
    for n in itertools.count():
        key = f"{prefix}-{n}"
        keys.setdefault(of_key(key, partitions), key)
        if len(keys) == partitions:
            return [keys[p] for p in range(partitions)]
    raise AssertionError("unreachable")


class _Round:
    """The channels to the nodes and which of them are up."""

    def __init__(self, nodes: Nodes) -> None:
        self.nodes = nodes
        self.channels = [
            grpc.aio.insecure_channel(a, options=_CHANNEL_OPTIONS) for a in nodes.ingress
        ]
        self.admins = [grpc.aio.insecure_channel(a) for a in nodes.admin]
        self.up = set(range(len(nodes.ingress)))
        self._turn = itertools.count()

    def next_up(self) -> int:
        """A live node's index, in turn."""
        live = sorted(self.up)
        return live[next(self._turn) % len(live)]

    async def add(self, key: str, delta: int, timeout: float, node: int | None = None) -> int:
        """`Counter.Add` on `key` through node `node` (default: the next live one); the
        counter's new value."""
        stub = benchsvc_pb2_grpc.CounterStub(
            self.channels[self.next_up() if node is None else node]
        )
        response = await stub.Add(benchsvc_pb2.AddRequest(key=key, delta=delta), timeout=timeout)
        return int(response.value)

    async def status(self, node: int | None = None) -> admin_pb2.ClusterStatusResponse:
        """ClusterStatus from node `node` (default: the next live one)."""
        stub = admin_pb2_grpc.AdminStub(self.admins[self.next_up() if node is None else node])
        return await stub.ClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=5)

    async def close(self) -> None:
        """Closes every channel."""
        for channel in (*self.channels, *self.admins):
            await channel.close(None)


async def _trickle(run: _Round, trickle: Trickle, p: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        node, sent = run.next_up(), time.time()
        try:
            await run.add(trickle.keys[p], 1, TRICKLE_TIMEOUT_S, node)
            trickle.ok[p] += 1
        except grpc.aio.AioRpcError as e:
            trickle.failed[p] += 1
            trickle.errors[e.code().name] += 1
            # Where and when, to find the call in the nodes' logs.
            at = datetime.datetime.fromtimestamp(sent, datetime.UTC).strftime("%H:%M:%S.%f")
            trickle.samples.setdefault(
                e.code().name,
                f"{trickle.keys[p]} via {Nodes.name(node)} sent at {at[:-3]} UTC: {e.details()}",
            )
        with_timeout = asyncio.create_task(stop.wait())
        await asyncio.wait([with_timeout], timeout=TRICKLE_EVERY_S)
        with_timeout.cancel()


async def _back_after(run: _Round, key: str, killed_at: float) -> float:
    """Seconds from `killed_at` to the first successful probe on `key` (probes start every
    `PROBE_EVERY_S`, each through the next live node), or `inf` after `GIVE_UP_S`."""
    done = asyncio.Event()
    first: list[float] = []

    async def probe() -> None:
        try:
            await run.add(key, 0, PROBE_TIMEOUT_S)
        except grpc.aio.AioRpcError:
            return
        first.append(time.monotonic() - killed_at)
        done.set()

    probes: list[asyncio.Task[None]] = []
    try:
        while not done.is_set() and time.monotonic() - killed_at < GIVE_UP_S:
            probes.append(asyncio.create_task(probe()))
            waiter = asyncio.create_task(done.wait())
            await asyncio.wait([waiter], timeout=PROBE_EVERY_S)
            waiter.cancel()
    finally:
        for task in probes:
            task.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
    return min(first) if first else math.inf


async def _wait_settled(run: _Round, cluster: Cluster, timeout: float) -> None:
    """Polls every live node's ClusterStatus until each says `settled` and all name the same
    leaders: the nodes learn of a handover each in its own time, and a kill chosen from one
    node's stale view would hit a node that no longer leads what it is thought to."""
    names = [Nodes.name(i) for i in range(len(run.nodes.procs))]
    deadline = time.monotonic() + timeout
    why = "no answer yet"
    while time.monotonic() < deadline:
        cluster.check_alive()
        reason: str | None = None
        try:
            views = [await run.status(i) for i in sorted(run.up)]
        except grpc.aio.AioRpcError as e:
            reason = f"ClusterStatus: {e.code().name}: {e.details()}"
        else:
            reason = next((r for r in (settled(v, names) for v in views) if r), None)
            owners = {tuple(p.owner for p in v.partitions) for v in views}
            if reason is None and len(owners) > 1:
                reason = f"the nodes disagree on the leaders: {sorted(owners)}"
        if reason is None:
            return
        why = reason
        await asyncio.sleep(_POLL_S)  # polling interval; the deadline decides
    raise BenchError(f"the cluster did not settle within {timeout:.0f} s: {why}")


async def _one(run: _Round, cluster: Cluster, trickle: Trickle, target: int) -> Kill:
    nodes = run.nodes
    status = await run.status()
    victim = status.partitions[target].owner
    led = [p.id for p in status.partitions if p.owner == victim]
    i = nodes.index(victim)
    errors_before = collections.Counter(trickle.errors)
    run.up.discard(i)
    killed_at, wall = time.monotonic(), time.time()
    cluster.kill(nodes.procs[i])
    backs = await asyncio.gather(*(_back_after(run, trickle.probe_keys[p], killed_at) for p in led))
    # Back: start it again (its log appended to) and wait until it serves and settled.
    nodes.procs[i] = cluster.spawn(
        victim, "broker", nodes.ingress[i], nodes.argv[i], append=True, tether=True
    )
    await asyncio.to_thread(cluster.wait_ready, nodes.procs[i], nodes.ingress[i])
    await asyncio.to_thread(cluster.wait_ready, nodes.procs[i], nodes.admin[i])
    run.up.add(i)
    await _wait_settled(run, cluster, SETTLE_TIMEOUT_S)
    errors = collections.Counter(trickle.errors)
    errors.subtract(errors_before)
    return Kill(
        node=victim,
        target=target,
        back_s=dict(zip(led, backs, strict=True)),
        settle_s=time.monotonic() - killed_at,
        errors=+errors,
        at=wall,
    )


async def run_failover(
    cluster: Cluster, nodes: Nodes, rounds: int, partitions: int, kills: list[Kill]
) -> dict[str, Any]:
    """Runs `rounds` kills, appending each to `kills` as it ends (a failed run keeps the
    rounds before); returns the trickle's totals and the counters' check."""
    run = _Round(nodes)
    keys = keys_for(partitions)
    probe_keys = keys_for(partitions, "probe")
    trickle = Trickle(keys, probe_keys, [0] * partitions, [0] * partitions)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_trickle(run, trickle, p, stop)) for p in range(partitions)]
    try:
        await _wait_settled(run, cluster, SETTLE_TIMEOUT_S)  # as every node sees it
        for n in range(rounds):
            kill = await _one(run, cluster, trickle, n % partitions)
            kills.append(kill)
            print(progress_line(n, kill), file=sys.stderr, flush=True)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    try:
        values = [await run.add(key, 0, TRICKLE_TIMEOUT_S) for key in keys]
    finally:
        await run.close()
    return {
        "keys": keys,
        "acknowledged": trickle.ok,
        "failed": trickle.failed,
        "counter": values,
        "lost": [max(0, ok - v) for ok, v in zip(trickle.ok, values, strict=True)],
        # Applied more often than called: a call the broker ran twice.
        "extra": [
            max(0, v - ok - failed)
            for ok, failed, v in zip(trickle.ok, trickle.failed, values, strict=True)
        ],
        "errors": dict(trickle.errors),
        "error_samples": trickle.samples,
    }


def _s(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.2f} s"


def progress_line(n: int, kill: Kill) -> str:
    """One line per kill, printed as it ends."""
    backs = ", ".join(f"p{p} {_s(s)}" for p, s in sorted(kill.back_s.items()))
    errors = ", ".join(f"{c} {k}" for k, c in kill.errors.most_common()) or "none"
    at = datetime.datetime.fromtimestamp(kill.at, datetime.UTC).strftime("%H:%M:%S.%f")[:-3]
    return (
        f"  kill {n + 1} at {at} UTC: {kill.node} (leader of p{kill.target}): back after {backs}; "
        f"settled after {kill.settle_s:.1f} s; trickle errors: {errors}"
    )


def _quantiles(values: list[float]) -> tuple[float, float]:
    return (statistics.median(values), max(values)) if values else (math.nan, math.nan)


def render(kills: list[Kill], check: dict[str, Any], nodes: int, partitions: int) -> str:
    """The failover section of the report."""
    if not kills:
        return ""
    per_partition = [s for k in kills for s in k.back_s.values()]
    per_kill = [max(k.back_s.values()) for k in kills]
    p50, worst = _quantiles(per_partition)
    kp50, kworst = _quantiles(per_kill)
    met = p50 <= TARGET_P50_S and worst <= TARGET_MAX_S
    lost = sum(check.get("lost", []))
    return "\n".join(
        [
            f"Failover ({len(kills)} SIGKILLs of a partition's leader; {nodes} nodes, "
            f"{partitions} partitions, 3 NATS servers; a trickle of calls on every partition)",
            f"  kill to first success, per partition it led ({len(per_partition)}): "
            f"p50 {_s(p50)}, max {_s(worst)} (issue 14: p50 <= {TARGET_P50_S:g} s, "
            f"max <= {TARGET_MAX_S:g} s: {'met' if met else 'MISSED'})",
            f"  kill to all its partitions back, per kill: p50 {_s(kp50)}, max {_s(kworst)}",
            f"  kill to settled again (node restarted, partitions handed back): p50 "
            f"{_s(statistics.median(k.settle_s for k in kills))}",
            _trickle_line(check, lost),
        ]
    )


def _trickle_line(check: dict[str, Any], lost: int) -> str:
    if not check:
        return "  trickle: not checked (the run stopped early)"
    errors = ", ".join(f"{c} {k}" for k, c in collections.Counter(check["errors"]).most_common())
    extra = sum(check.get("extra", []))
    counters = []
    if lost:
        counters.append(f"LOST {lost} acknowledged increments")
    if extra:
        counters.append(
            f"{extra} increments MORE than calls made (acknowledged + failed): run twice"
        )
    return (
        f"  trickle: {sum(check['acknowledged'])} acknowledged, {sum(check['failed'])} failed"
        + (f" ({errors})" if errors else "")
        + "; "
        + ("; ".join(counters) or "every counter = acknowledged + some of the failed")
        + "".join(
            f"\n    first {kind}: {sample[:200]}"
            for kind, sample in check.get("error_samples", {}).items()
        )
    )


def to_json(kills: list[Kill], check: dict[str, Any]) -> dict[str, Any]:
    """The failover results as a JSON-ready dict (`null` for a partition never back)."""
    return {
        "kills": [
            {
                "node": k.node,
                "target_partition": k.target,
                "back_s": {
                    str(p): None if math.isinf(s) else s for p, s in sorted(k.back_s.items())
                },
                "settle_s": k.settle_s,
                "at_unix_s": k.at,
                "errors": dict(k.errors),
            }
            for k in kills
        ],
        "trickle": check,
    }
