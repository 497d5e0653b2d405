"""One side of one comparison run, in a process of its own: `python -m bench.peer.side`.

Starts a fresh broker (ours) or a fresh Restate, measures every scenario at every
concurrency with `bench.load.closed_loop`, the same load generator for both sides, and
writes the windows' summaries as JSON. A fresh process per side and run: neither side
inherits the other's client state (connections, event loop, allocator).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import aiohttp
import grpc
from durable import wire

from bench import run as ours
from bench import spawn
from bench.load import BadResponse, Call, closed_loop
from bench.peer import restate_run as restate
from bench.peer.compare import OURS, PEER, Measured
from bench.peer.install import ensure_installed
from bench.procs import BenchError, Cluster, Interrupted, install_signal_handlers

OUR_FSYNC_METRIC = "durable_journal_fsync_seconds_count"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The side's flags (given by `bench.peer.main`, which checked them)."""
    p = argparse.ArgumentParser(prog="python -m bench.peer.side")
    p.add_argument("--side", choices=(OURS, PEER), required=True)
    p.add_argument("--run", type=int, required=True)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--scenarios", required=True)
    p.add_argument("--concurrency", required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--warmup", type=float, required=True)
    p.add_argument("--payload-bytes", type=int, required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--broker-arg", action="append", default=[])
    args = p.parse_args(argv)
    args.scenarios = args.scenarios.split(",")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    return args


def _ours(args: argparse.Namespace) -> list[Measured]:
    # `bench.run`'s own start and measure: exactly what `make bench` runs.
    run_args = argparse.Namespace(
        suspend_after="1s",
        no_fsync=False,
        broker_arg=args.broker_arg,
        concurrency=args.concurrency,
        warmup=args.warmup,
        duration=args.duration,
        connections=args.connections,
    )
    plan = ours.scenarios(args.scenarios, os.urandom(args.payload_bytes), [])
    points: list[ours.Point] = []
    with Cluster(args.workdir) as cluster:
        addresses = spawn.start(cluster, run_args, args.scenarios, args.workers)
        wire.run(ours.measure(cluster, addresses, plan, run_args, points))
    return [
        Measured.from_window(
            OURS, args.run, p.scenario.name, p.concurrency, p.window, OUR_FSYNC_METRIC
        )
        for p in points
    ]


async def _measure_restate(cluster: Cluster, args: argparse.Namespace) -> list[Measured]:
    out: list[Measured] = []
    connector = aiohttp.TCPConnector(limit=max(args.concurrency))
    async with aiohttp.ClientSession(connector=connector) as session:
        makers = restate.calls(session, os.urandom(args.payload_bytes))
        made: dict[str, Call] = {name: makers[name]() for name in args.scenarios}
        for name, call in made.items():
            try:
                await call(ours.CALL_TIMEOUT_S)
            except BadResponse as e:
                raise BenchError(f"scenario {name} on Restate: the first call failed: {e}") from e
        for name, call in made.items():
            for concurrency in args.concurrency:
                cluster.check_alive()
                window = await closed_loop(
                    call,
                    concurrency=concurrency,
                    warmup=args.warmup,
                    duration=args.duration,
                    probe=cluster.probe,
                    call_timeout=ours.CALL_TIMEOUT_S,
                    drain_timeout=ours.DRAIN_TIMEOUT_S,
                )
                m = Measured.from_window(
                    PEER, args.run, name, concurrency, window, restate.FSYNC_METRIC
                )
                out.append(m)
                print(
                    f"  {name:<8} c={concurrency:<3} {m.throughput:8.1f}/s  p50 {m.p50_ms:.2f} ms"
                    f"  p99 {m.p99_ms:.2f} ms  errors {m.errors}",
                    file=sys.stderr,
                    flush=True,
                )
        cluster.check_alive()
    return out


def _restate(args: argparse.Namespace) -> list[Measured]:
    peer = ensure_installed(log=False)
    with Cluster(args.workdir) as cluster:
        restate.start(cluster, peer)
        return wire.run(_measure_restate(cluster, args))


def main(argv: list[str] | None = None) -> int:
    """Runs one side; 0 when every point was measured, 1 on failure, 130 if interrupted."""
    args = parse_args(argv)
    install_signal_handlers()
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        measured = _ours(args) if args.side == OURS else _restate(args)
    except (KeyboardInterrupt, Interrupted):
        return 130
    except (BenchError, grpc.RpcError) as e:
        print(f"{args.side} run {args.run} failed: {e}", file=sys.stderr)
        return 1
    args.out.write_text(json.dumps([m.to_json() for m in measured], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
