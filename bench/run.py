"""`python -m bench`: flags, the processes under test, the scenarios, the measured points."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from benchsvc import benchsvc_pb2, benchsvc_pb2_grpc
from durable import wire
from trips import trips_pb2, trips_pb2_grpc

from bench import cluster as nodes_cluster
from bench import failover, report
from bench.load import BadResponse, Call, Window, closed_loop
from bench.procs import (
    BenchError,
    Cluster,
    Interrupted,
    install_signal_handlers,
)
from bench.spawn import Addresses, start

DEFAULT_JSON = Path(".data/bench/results.json")
WORK_ROOT = Path(".data/bench")
ALL_SCENARIOS = ("direct", "trivial", "keyed", "saga", "journal")
# The keyed scenario spreads its calls over this many virtual-object keys, round robin: few
# enough that every key carries state after the warm-up, many enough that 64 clients rarely
# queue behind one another on a key.
KEYED_KEYS = 1024
CALL_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 30.0
# Large enough for any payload the flags allow; the broker enforces its own limit.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One kind of call to measure.

    Attributes:
        name: As printed, e.g. `saga` or `journal-100`.
        through_broker: False for the floor (a plain gRPC server, no broker).
        invocations: Durable invocations per call (the saga makes 6).
        steps: `ctx.run` steps per call (the journal scenario), else 0.
        make: Builds the call from the ingress and direct channels.
    """

    name: str
    through_broker: bool
    invocations: int
    steps: int
    make: Callable[[grpc.aio.Channel, grpc.aio.Channel], Call]


@dataclasses.dataclass
class Point:
    """One measured scenario at one concurrency."""

    scenario: Scenario
    concurrency: int
    window: Window


def _echo(payload: bytes, via_broker: bool) -> Callable[[grpc.aio.Channel, grpc.aio.Channel], Call]:
    request = benchsvc_pb2.EchoRequest(payload=payload)

    def make(ingress: grpc.aio.Channel, direct: grpc.aio.Channel) -> Call:
        stub = benchsvc_pb2_grpc.BenchStub(ingress if via_broker else direct)

        async def call(timeout: float) -> None:
            response = await stub.Echo(request, timeout=timeout)
            if len(response.payload) != len(payload):
                raise BadResponse(f"echoed {len(response.payload)} bytes of {len(payload)}")

        return call

    return make


def keyed_key(n: int) -> str:
    """The key of the `n`th call of the keyed scenario (shared with the peer benchmark)."""
    return f"k{n % KEYED_KEYS}"


# One sequence for every connection's calls: each key is in flight on one of them at a time.
_keyed_calls = itertools.count()


def _keyed(ingress: grpc.aio.Channel, direct: grpc.aio.Channel) -> Call:
    stub = benchsvc_pb2_grpc.CounterStub(ingress)

    async def call(timeout: float) -> None:
        request = benchsvc_pb2.AddRequest(key=keyed_key(next(_keyed_calls)), delta=1)
        response = await stub.Add(request, timeout=timeout)
        if response.value < 1:
            raise BadResponse(f"counter {request.key} went to {response.value}")

    return call


def _saga(ingress: grpc.aio.Channel, direct: grpc.aio.Channel) -> Call:
    stub = trips_pb2_grpc.TripsStub(ingress)
    request = trips_pb2.ReserveTripRequest(
        **{"from": "BER"}, to="LIS", date="2026-07-01", amount_cents=45000
    )

    async def call(timeout: float) -> None:
        response = await stub.Reserve(request, timeout=timeout)
        if response.status != "success":
            raise BadResponse(f"saga status {response.status!r}")

    return call


def _journal(steps: int) -> Callable[[grpc.aio.Channel, grpc.aio.Channel], Call]:
    request = benchsvc_pb2.StepsRequest(steps=steps)

    def make(ingress: grpc.aio.Channel, direct: grpc.aio.Channel) -> Call:
        stub = benchsvc_pb2_grpc.BenchStub(ingress)

        async def call(timeout: float) -> None:
            response = await stub.Steps(request, timeout=timeout)
            if response.steps != steps:
                raise BadResponse(f"ran {response.steps} steps of {steps}")

        return call

    return make


def scenarios(names: list[str], payload: bytes, journal_steps: list[int]) -> list[Scenario]:
    """The scenarios to run, the floor first (every other one is reported against it)."""
    out: list[Scenario] = []
    if "direct" in names:
        out.append(Scenario("direct", False, 0, 0, _echo(payload, via_broker=False)))
    if "trivial" in names:
        out.append(Scenario("trivial", True, 1, 0, _echo(payload, via_broker=True)))
    if "keyed" in names:
        out.append(Scenario("keyed", True, 1, 0, _keyed))
    if "saga" in names:
        out.append(Scenario("saga", True, 6, 0, _saga))
    if "journal" in names:
        out.extend(Scenario(f"journal-{n}", True, 1, n, _journal(n)) for n in journal_steps)
    return out


def _int_list(text: str, least: int = 1) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from e
    if not values or min(values) < least:
        raise argparse.ArgumentTypeError(f"need integers of at least {least}: {text!r}")
    return values


def _workers_list(text: str) -> list[int]:
    """Worker counts; 0 is the single embedded process."""
    return _int_list(text, least=0)


def _scenario_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = sorted(set(names) - set(ALL_SCENARIOS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenarios {unknown}; choose from {', '.join(ALL_SCENARIOS)}"
        )
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The benchmark's flags."""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput, latency and CPU of the broker against a plain gRPC floor.",
        epilog="python -m bench --peer restate [--help]: the same scenarios side by side "
        "with Restate (bench.peer).",
    )
    p.add_argument(
        "--scenarios",
        type=_scenario_list,
        default=list(ALL_SCENARIOS),
        help=f"comma-separated, from {','.join(ALL_SCENARIOS)} (default all)",
    )
    p.add_argument(
        "--concurrency", type=_int_list, default=[1, 16, 64], help="clients (default 1,16,64)"
    )
    p.add_argument(
        "--duration", type=float, default=5.0, help="measured seconds per point (default 5)"
    )
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before each window (1)")
    p.add_argument(
        "--journal-steps",
        type=_int_list,
        default=[10, 100],
        help="ctx.run steps per call in the journal scenario (default 10,100)",
    )
    p.add_argument(
        "--workers",
        type=_workers_list,
        default=[0, 2],
        help="broker processes to measure, each in turn on a fresh data dir: 0 is the "
        "single embedded process, N>0 runs --workers N; ratios are against the first "
        "(default 0,2)",
    )
    p.add_argument(
        "--connections",
        type=int,
        default=16,
        help="client connections the calls are spread over, at most one per client "
        "(default 16): one connection reaches one worker of --workers, or one of the "
        "broker's --ingress-servers",
    )
    p.add_argument("--payload-bytes", type=int, default=64, help="echo payload size (default 64)")
    p.add_argument("--no-fsync", action="store_true", help="run the broker with --no-fsync")
    p.add_argument(
        "--broker-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass ARG to the broker (repeatable; e.g. --broker-arg=--max-concurrency=0)",
    )
    p.add_argument(
        "--suspend-after", default="1s", help="the broker's --suspend-after (default 1s)"
    )
    p.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help=f"where to write the results (default {DEFAULT_JSON})",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the run's data and logs under .data/bench"
    )
    nodes_cluster.add_arguments(p, _int_list)
    args = p.parse_args(argv)
    nodes_cluster.check_arguments(p, args)
    if any(w < 0 for w in args.workers) or args.connections < 1:
        p.error("--workers must not be negative, --connections at least 1")
    if args.duration <= 0 or args.warmup < 0 or args.payload_bytes < 0:
        p.error("--duration must be positive, --warmup and --payload-bytes not negative")
    return args


async def measure(
    cluster: Cluster,
    addresses: Addresses,
    plan: list[Scenario],
    args: argparse.Namespace,
    points: list[Point],
) -> None:
    """Measures every scenario at every concurrency, appending to `points` as it goes."""
    # Separate connections (a subchannel pool of their own each), so that SO_REUSEPORT
    # can spread them over a broker's workers, as it spreads many clients.
    options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    # In cluster mode the connections take turns over the nodes: every node serves load.
    targets = addresses.ingresses or (addresses.ingress,)
    ingresses = [
        grpc.aio.insecure_channel(targets[i % len(targets)], options=options)
        for i in range(args.connections)
    ]
    directs = [
        grpc.aio.insecure_channel(addresses.direct, options=options)
        for _ in range(args.connections)
    ]
    try:
        calls = {
            s.name: [s.make(i, d) for i, d in zip(ingresses, directs, strict=True)] for s in plan
        }
        await _measure(cluster, plan, calls, args, points, nodes=len(targets))
    finally:
        for channel in (*ingresses, *directs):
            await channel.close(None)


def connections_used(concurrency: int, connections: int, nodes: int = 1) -> int:
    """How many of the connections `concurrency` clients spread their calls over: one per
    client, as a client library opens them (Restate's HTTP load in `make bench-peer`
    opens one per call in flight), at most `connections`, and at least one per node of
    a cluster, so that every node serves load."""
    return min(connections, max(concurrency, nodes))


def _spread(calls: list[Call]) -> Call:
    """One call function taking turns over several connections' calls."""
    turns = itertools.cycle(calls)

    async def call(timeout: float) -> None:
        await next(turns)(timeout)

    return call


async def _measure(
    cluster: Cluster,
    plan: list[Scenario],
    calls: dict[str, list[Call]],
    args: argparse.Namespace,
    points: list[Point],
    nodes: int = 1,
) -> None:
    """Runs the first call of each scenario, then every window; `calls` has each
    scenario's call on every connection."""
    # One call of each first: a scenario that cannot work fails the run at once.
    for s in plan:
        try:
            await calls[s.name][0](CALL_TIMEOUT_S)
        except (grpc.aio.AioRpcError, BadResponse) as e:
            detail = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.aio.AioRpcError) else e
            raise BenchError(f"scenario {s.name}: the first call failed: {detail}") from e
    for s in plan:
        for concurrency in args.concurrency:
            cluster.check_alive()
            used = connections_used(concurrency, len(calls[s.name]), nodes)
            window = await closed_loop(
                _spread(calls[s.name][:used]),
                concurrency=concurrency,
                warmup=args.warmup,
                duration=args.duration,
                probe=cluster.probe,
                call_timeout=CALL_TIMEOUT_S,
                drain_timeout=DRAIN_TIMEOUT_S,
            )
            point = Point(s, concurrency, window)
            points.append(point)
            print(report.progress_line(point), file=sys.stderr, flush=True)
    cluster.check_alive()


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings in force, as printed and written to JSON."""
    return {
        "fsync": not args.no_fsync,
        "broker_args": args.broker_arg,
        "suspend_after": args.suspend_after,
        "broker_log_level": "the broker's default (INFO)",
        "group_commit": "broker default (adaptive: one fsync per group of queued batches)",
        "payload_bytes": args.payload_bytes,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "journal_steps": args.journal_steps,
        "workers": args.workers,
        "cluster_nodes": args.cluster,
        "cluster_partitions": args.cluster_partitions,
        "failover_kills": args.failover,
        "failover_nodes": args.failover_nodes,
        "connections": args.connections,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "event_loop": wire.loop_name(),
        "platform": platform.platform(),
    }


def measure_nodes(
    cluster: Cluster,
    workdir: Path,
    args: argparse.Namespace,
    plan: list[Scenario],
    count: int,
    points: list[Point],
) -> None:
    """Measures the plan (but the floor, measured with the embedded broker) through `count`
    cluster nodes, started afresh in `workdir`; its points are labelled `scenario/nN`."""
    names = [s for s in args.scenarios if s != "direct"]
    runs = [dataclasses.replace(s, name=f"{s.name}/n{count}") for s in plan if s.name in names]
    cluster.stop()
    cluster.reset(workdir)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        addresses, _ = nodes_cluster.start(cluster, stack, args, names, count)
        print(f"cluster of {count} node(s) ready after {time.monotonic() - started:.1f} s")
        wire.run(measure(cluster, addresses, runs, args, points))


def measure_failover(
    cluster: Cluster, workdir: Path, args: argparse.Namespace, kills: list[failover.Kill]
) -> dict[str, Any]:
    """Times `--failover` kills on a fresh cluster in `workdir` (`bench.failover`)."""
    cluster.stop()
    cluster.reset(workdir)
    with contextlib.ExitStack() as stack:
        # INFO: the nodes log their leadership changes, the story of a slow failover.
        _, nodes = nodes_cluster.start(
            cluster, stack, args, ["keyed"], args.failover_nodes, log_level="INFO"
        )
        print(f"failover: {args.failover} kills of a partition's leader", flush=True)
        run = failover.run_failover(cluster, nodes, args.failover, args.cluster_partitions, kills)
        return wire.run(run)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns the exit code (0, 1 on failure, 130 when interrupted)."""
    args = parse_args(argv)
    started = time.monotonic()
    install_signal_handlers()
    plan = scenarios(args.scenarios, os.urandom(args.payload_bytes), args.journal_steps)
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    # Under the repository, not /tmp: the journal's fsyncs must hit the real disk, and /tmp
    # is a tmpfs on many machines.
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=WORK_ROOT))
    points: list[Point] = []
    kills: list[failover.Kill] = []
    check: dict[str, Any] = {}
    code = 0
    the_settings = settings(args)
    print(report.settings_line(the_settings), flush=True)
    try:
        with Cluster(workdir) as cluster:
            for n, workers in enumerate(args.workers):
                # The floor needs measuring once; later runs are labelled by their workers.
                names = [s for s in args.scenarios if n == 0 or s != "direct"]
                runs = [
                    s if n == 0 else dataclasses.replace(s, name=f"{s.name}/w{workers}")
                    for s in plan
                    if s.name in names
                ]
                if n:
                    cluster.stop()
                    cluster.reset(workdir / f"w{workers}")
                addresses = start(cluster, args, names, workers)
                label = f"--workers {workers}" if workers else "one process"
                print(
                    f"broker ({label}) ready after {time.monotonic() - started:.1f} s",
                    flush=True,
                )
                wire.run(measure(cluster, addresses, runs, args, points))
            for count in args.cluster:
                measure_nodes(cluster, workdir / f"n{count}", args, plan, count, points)
            if args.failover:
                check = measure_failover(cluster, workdir / "failover", args, kills)
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"\ninterrupted ({type(e).__name__}); all processes stopped", file=sys.stderr)
        code = 130
    except BenchError as e:
        print(f"bench failed: {e}", file=sys.stderr)
        code = 1
    finally:
        # Kept when asked to, or when a failure may need its logs; an interrupt needs none.
        if code != 1 and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"data and logs kept in {workdir}", file=sys.stderr)

    elapsed = time.monotonic() - started
    if points or kills:
        print()
        print(report.render(points, the_settings, partial=code != 0))
        if kills:
            print()
            print(failover.render(kills, check, args.failover_nodes, args.cluster_partitions))
        results = report.to_json(points, the_settings, elapsed, complete=code == 0)
        results["failover"] = failover.to_json(kills, check)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")
    print(f"total elapsed {elapsed:.1f} s")
    return code
