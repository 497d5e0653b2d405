"""`make bench-peer` / `python -m bench --peer restate`: this broker and Restate side by side.

Installs the peer when missing (`bench.peer.install`), then re-runs itself in a network
namespace of its own that has only a loopback interface (`unshare --net`): Restate's server
looks for a newer release over the internet at start-up and has no setting to stop it, and
there it cannot. Both sides run in that namespace, so they see the same loopback. Inside,
each repeat measures every point (a scenario at a concurrency) on both sides back to back,
each side in a fresh process with fresh servers and data (`bench.peer.side`), the side
that goes first alternating from one repeat to the next: this machine's speed drifts by
tens of percent over minutes, and the two windows of a pair are then seconds apart
instead of a whole side's run. (`--pair run` measures every point of one side, then every
point of the other, as before.)
The medians, the ratios and issue 15's targets are printed (`bench.peer.compare`) and
written as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.peer import compare
from bench.peer.compare import OURS, PEER, Measured
from bench.peer.install import ensure_installed
from bench.peer.restate_run import SETTINGS as PEER_SETTINGS
from bench.procs import ROOT, BenchError

SCENARIOS = ("trivial", "keyed", "saga")
DEFAULT_JSON = Path(".data/bench/peer-results.json")
WORK_ROOT = ROOT / ".data" / "bench"
# Per side and run: start-up and the first calls, beyond the windows themselves.
SIDE_OVERHEAD_S = 90.0
# Per point: the drain after the window, at worst (bench.run.DRAIN_TIMEOUT_S) and margin.
POINT_OVERHEAD_S = 35.0
STOP_GRACE_S = 30.0


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from e
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need positive integers: {text!r}")
    return values


def _scenarios(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}"
        )
    return names


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The comparison's flags."""
    p = argparse.ArgumentParser(
        prog="python -m bench --peer restate",
        description="This broker and Restate side by side, same scenarios, same load "
        "generator, fsync on, in one run (see bench/peer/main.py).",
    )
    p.add_argument("--peer", choices=(PEER,), required=True, help="the peer to compare with")
    p.add_argument(
        "--scenarios",
        type=_scenarios,
        default=list(SCENARIOS),
        help=f"comma-separated, from {','.join(SCENARIOS)} (default all)",
    )
    p.add_argument("--concurrency", type=_ints, default=[1, 64], help="clients (default 1,64)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before each window (2)")
    p.add_argument("--repeat", type=int, default=1, help="runs per side, alternating (1)")
    p.add_argument(
        "--pair",
        choices=("point", "run"),
        default="point",
        help="measure both sides point by point, back to back (default), or a whole run of "
        "one side, then of the other",
    )
    p.add_argument("--payload-bytes", type=int, default=64, help="trivial's payload (64)")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="our broker's --workers (default 0: one process, the broker's default)",
    )
    p.add_argument(
        "--connections",
        type=int,
        default=16,
        help="gRPC connections our calls are spread over, one per call in flight up to "
        "this many, as in make bench (default 16; Restate's HTTP/1.1 load opens one per "
        "call in flight)",
    )
    p.add_argument(
        "--broker-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass ARG to our broker (repeatable)",
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results ({DEFAULT_JSON})")
    p.add_argument("--keep", action="store_true", help="keep data and logs under .data/bench")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.workers < 0 or args.connections < 1:
        p.error("--workers must not be negative, --connections at least 1")
    if args.duration <= 0 or args.warmup < 0 or args.payload_bytes < 0 or args.repeat < 1:
        p.error(
            "--duration and --repeat must be positive, --warmup and --payload-bytes not negative"
        )
    if args.duration > 60:
        p.error("--duration: keep a window at 60 s or less")
    return args


def side_timeout(args: argparse.Namespace, points: int) -> float:
    """The longest one side process measuring `points` points may take."""
    per_point = float(args.warmup) + float(args.duration) + POINT_OVERHEAD_S
    return SIDE_OVERHEAD_S + points * per_point


def total_timeout(args: argparse.Namespace) -> float:
    """The longest the whole comparison may take."""
    points = len(args.scenarios) * len(args.concurrency)
    if args.pair == "point":
        return float(args.repeat * 2 * points * side_timeout(args, 1) + 60)
    return float(args.repeat * 2 * side_timeout(args, points) + 60)


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Waits for `proc`; past `timeout`, or on a signal here, stops it (TERM, then KILL)."""
    try:
        return proc.wait(timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as e:
        # A Ctrl-C in a terminal reached the child too; a signal sent to us alone did not.
        stop = signal.SIGTERM if isinstance(e, subprocess.TimeoutExpired) else signal.SIGINT
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(stop)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if isinstance(e, KeyboardInterrupt):
            raise
        print(f"stopped after {timeout:.0f} s", file=sys.stderr)
        return 1


def outside(argv: list[str], args: argparse.Namespace) -> int:
    """Installs the peer, then runs the comparison in a loopback-only network namespace."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        print("bench-peer needs unshare and ip (util-linux, iproute2)", file=sys.stderr)
        return 1
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        print(
            "bench-peer cannot make a network namespace (it needs root): "
            + probe.stderr.decode(errors="replace").strip(),
            file=sys.stderr,
        )
        return 1
    try:
        ensure_installed()
    except BenchError as e:
        print(f"bench-peer: {e}", file=sys.stderr)
        return 1
    cmd = ["unshare", "--net", "--", sys.executable, "-m", "bench.peer", *argv, "--inside"]
    total = total_timeout(args)
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        return _wait(proc, total)
    except KeyboardInterrupt:
        return 130


def _machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:", 1)[1].split()[0])
        mem = f"{kib / 1048576:.0f} GiB"
    return f"{os.cpu_count()} CPUs ({model}), {mem}, {platform.system()} {platform.release()}"


def settings(args: argparse.Namespace, peer_versions: dict[str, str]) -> dict[str, Any]:
    """What was compared, under which conditions: printed above the table and kept."""
    import grpc

    workers = (
        f"{args.workers} (--workers {args.workers})"
        if args.workers
        else "0 (one broker process, its default)"
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": _machine(),
        "Restate": ", ".join(f"{k} {v}" for k, v in peer_versions.items()) + "; " + PEER_SETTINGS,
        "ours": (
            f"fsync on, workers {workers}, suspend-after 1s, group commit default, "
            "log level default, "
            f"payload {args.payload_bytes} B (protobuf; Restate: the same bytes base64 in "
            f"JSON), grpcio {grpc.__version__}, Python {platform.python_version()}, uvloop; "
            f"load over gRPC (grpc.aio, one connection per call in flight, at most "
            f"{args.connections})"
            + (f"; broker args {' '.join(args.broker_arg)}" if args.broker_arg else "")
        ),
        "load": (
            f"closed loop (bench.load.closed_loop, one client process per side and run), "
            f"concurrency {','.join(map(str, args.concurrency))}, warm-up {args.warmup:g} s, "
            f"window {args.duration:g} s per point, {args.repeat} run(s) per side, "
            + (
                "each point on both sides back to back (who goes first alternating by run), "
                "fresh servers and data for every window"
                if args.pair == "point"
                else "alternating ours/Restate by whole runs, fresh servers and data each run"
            )
            + ", both in one loopback-only network namespace, data on the same disk"
        ),
    }


def _side(
    args: argparse.Namespace,
    side: str,
    run: int,
    workdir: Path,
    scenarios: list[str],
    concurrency: list[int],
) -> list[Measured]:
    label = f"{side}-r{run}" + (
        f"-{scenarios[0]}-c{concurrency[0]}" if len(scenarios) * len(concurrency) == 1 else ""
    )
    out = workdir / f"{label}.json"
    cmd = [
        sys.executable, "-m", "bench.peer.side",
        "--side", side,
        "--run", str(run),
        "--workdir", str(workdir / label),
        "--out", str(out),
        "--scenarios", ",".join(scenarios),
        "--concurrency", ",".join(map(str, concurrency)),
        "--duration", str(args.duration),
        "--warmup", str(args.warmup),
        "--payload-bytes", str(args.payload_bytes),
        "--workers", str(args.workers),
        "--connections", str(args.connections),
        *(f"--broker-arg={a}" for a in args.broker_arg),
    ]  # fmt: skip
    what = " ".join(f"{s} c={c}" for s in scenarios for c in concurrency)
    print(f"run {run}/{args.repeat}: {side}: {what}", file=sys.stderr, flush=True)
    points = len(scenarios) * len(concurrency)
    code = _wait(subprocess.Popen(cmd, cwd=ROOT), side_timeout(args, points))
    if code != 0:
        raise BenchError(f"the {side} side of run {run} failed (exit {code})")
    return [Measured.from_json(m) for m in json.loads(out.read_text())]


def plan(args: argparse.Namespace) -> list[tuple[int, str, list[str], list[int]]]:
    """The side processes to run, in order: (run, side, scenarios, concurrencies)."""
    steps: list[tuple[int, str, list[str], list[int]]] = []
    for run in range(1, args.repeat + 1):
        if args.pair == "run":
            steps += [(run, side, args.scenarios, args.concurrency) for side in (OURS, PEER)]
            continue
        order = (OURS, PEER) if run % 2 else (PEER, OURS)
        for scenario in args.scenarios:
            for concurrency in args.concurrency:
                steps += [(run, side, [scenario], [concurrency]) for side in order]
    return steps


def _nan_none(v: float) -> float | None:
    return None if math.isnan(v) or math.isinf(v) else v


def to_json(measured: list[Measured], the_settings: dict[str, Any]) -> dict[str, Any]:
    """The results: settings, every window, and the table's rows."""
    return {
        "settings": the_settings,
        "rows": [
            {
                "scenario": r.scenario,
                "concurrency": r.concurrency,
                "ours": {
                    "throughput_per_s": r.ours.throughput,
                    "p50_ms": _nan_none(r.ours.p50_ms),
                    "p99_ms": _nan_none(r.ours.p99_ms),
                },
                "restate": {
                    "throughput_per_s": r.peer.throughput,
                    "p50_ms": _nan_none(r.peer.p50_ms),
                    "p99_ms": _nan_none(r.peer.p99_ms),
                },
                "throughput_ours_over_restate": _nan_none(r.throughput_ratio),
                "p50_restate_over_ours": _nan_none(r.p50_ratio),
                "p99_restate_over_ours": _nan_none(r.p99_ratio),
                "target": r.target,
            }
            for r in compare.rows(measured)
        ],
        "measured": [m.to_json() for m in measured],
    }


def inside(args: argparse.Namespace) -> int:
    """The comparison itself, in the namespace: alternate the sides, then report."""
    up = subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True, check=False)
    if up.returncode != 0:
        print(f"cannot bring loopback up: {up.stderr.decode().strip()}", file=sys.stderr)
        return 1
    started = time.monotonic()
    the_settings = settings(args, ensure_installed(log=False).versions)
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="peer-", dir=WORK_ROOT))
    measured: list[Measured] = []
    code = 0
    try:
        for run, side, scenarios, concurrency in plan(args):
            measured += _side(args, side, run, workdir, scenarios, concurrency)
    except KeyboardInterrupt:
        print("\ninterrupted; all processes stopped", file=sys.stderr)
        code = 130
    except BenchError as e:
        print(f"bench-peer failed: {e}", file=sys.stderr)
        code = 1
    finally:
        if code == 1 or args.keep:
            print(f"data and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    # Only points measured on both sides make a row: a run cut short may have none.
    if compare.rows(measured):
        print()
        print(compare.render(measured, the_settings, partial=code != 0))
        results = {"complete": code == 0, **to_json(measured, the_settings)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"\nresults written to {args.json}")
    print(f"total elapsed {time.monotonic() - started:.0f} s")
    return code


def main(argv: list[str] | None = None) -> int:
    """Runs the comparison; the exit code is 0, 1 on failure, 130 when interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.inside:
        return inside(args)
    return outside(argv, args)
