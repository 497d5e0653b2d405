"""The tables `make bench` prints, the reference figures of issue #6 and the JSON results."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.run import Point

# Average cores used by other processes during the windows above which the report warns.
CONTENTION_WARN_CORES = 0.15


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    ms = seconds * 1000
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def _rate(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _ratio(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return "-"
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def _service_role(point: Point) -> str:
    return "service" if point.scenario.through_broker else "direct"


def _per_call_ms(point: Point, role: str) -> float:
    ok = point.window.ok
    return point.window.deltas.get(role, 0.0) * 1000 / ok if ok else math.nan


def _cores(point: Point, role: str) -> float:
    w = point.window
    return w.deltas.get(role, 0.0) / w.seconds if w.seconds > 0 else math.nan


def _floor(points: Sequence[Point], concurrency: int) -> Point | None:
    return next(
        (p for p in points if p.scenario.name == "direct" and p.concurrency == concurrency), None
    )


def _ratios(points: Sequence[Point], point: Point) -> tuple[float, float]:
    """(throughput / floor throughput, p50 / floor p50) at the same concurrency."""
    floor = _floor(points, point.concurrency)
    if floor is None or not point.scenario.through_broker:
        return math.nan, math.nan
    thr = point.window.throughput / floor.window.throughput if floor.window.ok else math.nan
    p50 = (
        point.window.percentile(0.5) / floor.window.percentile(0.5) if floor.window.ok else math.nan
    )
    return thr, p50


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Columns padded to fit; the first `left` columns left-aligned, the rest right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def settings_line(settings: dict[str, Any]) -> str:
    """One line with the settings in force."""
    return (
        f"settings: fsync {'on' if settings['fsync'] else 'OFF (not durable)'}, "
        f"suspend-after {settings['suspend_after']}, group commit {settings['group_commit']}, "
        f"payload {settings['payload_bytes']} B, warm-up {settings['warmup_s']:g} s, "
        f"window {settings['duration_s']:g} s per point, {settings['cpus']} CPUs, "
        f"Python {settings['python']}, grpcio {settings['grpcio']}, "
        f"event loop {settings.get('event_loop', 'asyncio')}"
        + (
            f", broker args {' '.join(settings['broker_args'])}"
            if settings.get("broker_args")
            else ""
        )
    )


def progress_line(point: Point) -> str:
    """One line per point, printed as soon as it is measured."""
    w = point.window
    return (
        f"  {point.scenario.name:<12} c={point.concurrency:<4} {_rate(w.throughput):>7}/s  "
        f"p50 {_ms(w.percentile(0.5))} ms  p99 {_ms(w.percentile(0.99))} ms  "
        f"errors {sum(w.errors.values())}"
    )


def main_table(points: Sequence[Point]) -> str:
    """Every point: throughput, latency, errors, CPU per call, cores busy, ratio to the floor."""
    header = [
        "scenario", "conc", "calls/s", "p50 ms", "p90 ms", "p99 ms", "errors",
        "CPU ms/call broker", "services", "client",
        "cores b/s/c", "other", "thr vs floor", "p50 vs floor",
    ]  # fmt: skip
    rows = []
    for p in points:
        w = p.window
        svc = _service_role(p)
        thr, p50 = _ratios(points, p)
        name = p.scenario.name
        if p.scenario.invocations > 1:
            name += f" ({p.scenario.invocations} inv)"
        rows.append(
            [
                name,
                str(p.concurrency),
                _rate(w.throughput),
                _ms(w.percentile(0.5)),
                _ms(w.percentile(0.9)),
                _ms(w.percentile(0.99)),
                str(sum(w.errors.values())) + (f" +{w.unfinished} hung" if w.unfinished else ""),
                "-" if not p.scenario.through_broker else f"{_per_call_ms(p, 'broker'):.2f}",
                f"{_per_call_ms(p, svc):.2f}",
                f"{_per_call_ms(p, 'client'):.2f}",
                "/".join(
                    "-"
                    if (r == "broker" and not p.scenario.through_broker)
                    else f"{_cores(p, r):.2f}"
                    for r in ("broker", svc, "client")
                ),
                f"{max(0.0, _cores(p, 'other')):.2f}",
                "floor" if not p.scenario.through_broker else _ratio(thr),
                "floor" if not p.scenario.through_broker else _ratio(p50),
            ]
        )
    return _table(header, rows)


def journal_table(points: Sequence[Point]) -> str:
    """The journal scenario per step: does cost grow linearly with journal length?"""
    header = [
        "scenario", "conc", "steps", "calls/s", "steps/s", "p50 ms/call",
        "p50 ms/step", "p99 ms/step", "CPU us/step broker", "services",
    ]  # fmt: skip
    rows = []
    for p in points:
        n = p.scenario.steps
        if not n:
            continue
        w = p.window
        steps_done = w.ok * n
        rows.append(
            [
                p.scenario.name,
                str(p.concurrency),
                str(n),
                _rate(w.throughput),
                _rate(w.throughput * n),
                _ms(w.percentile(0.5)),
                f"{w.percentile(0.5) * 1000 / n:.3f}",
                f"{w.percentile(0.99) * 1000 / n:.3f}",
                f"{w.deltas.get('broker', 0.0) * 1e6 / steps_done:.0f}" if steps_done else "-",
                f"{w.deltas.get('service', 0.0) * 1e6 / steps_done:.0f}" if steps_done else "-",
            ]
        )
    return _table(header, rows) if rows else ""


def commit_table(points: Sequence[Point]) -> str:
    """Group commit as the broker saw it (its `/metrics`), for the points through it."""
    header = [
        "scenario", "conc", "invocations/call", "fsync groups/s", "groups/call",
        "batches/group", "mean fsync ms", "messages/frame",
    ]  # fmt: skip
    rows = []
    for p in points:
        d = p.window.deltas
        groups = d.get("metric:durable_journal_batch_steps_count")
        if not p.scenario.through_broker or groups is None:
            continue
        ok, batches = p.window.ok, d.get("metric:durable_journal_batch_steps_sum", 0.0)
        syncs = d.get("metric:durable_journal_fsync_seconds_count", 0.0)
        sync_s = d.get("metric:durable_journal_fsync_seconds_sum", 0.0)
        started = d.get("metric:durable_invocations_started_total", 0.0)
        frames = d.get("metric:durable_endpoint_frames_total", 0.0)
        messages = d.get("metric:durable_endpoint_messages_total", 0.0)
        rows.append(
            [
                p.scenario.name,
                str(p.concurrency),
                f"{started / ok:.2f}" if ok else "-",
                _rate(groups / p.window.seconds),
                f"{groups / ok:.2f}" if ok else "-",
                f"{batches / groups:.1f}" if groups else "-",
                f"{sync_s * 1000 / syncs:.3f}" if syncs else "-",
                f"{messages / frames:.2f}" if frames else "-",
            ]
        )
    if not rows:
        return ""
    return (
        "Group commit, from the broker's /metrics during each window (a group = one RocksDB\n"
        "write + one fsync; batches/group = how many state-machine batches shared it;\n"
        "messages/frame = messages to endpoints per frame of their multiplexed streams)\n\n"
        + _table(header, rows)
    )


def peer_pointer() -> str:
    """Where the comparison with Restate lives: measured in the same run, never divided
    by figures from another day."""
    return (
        "Against Restate: `make bench-peer` measures it side by side with this broker in one "
        "run\n(same scenarios, same load generator)."
    )


def _find(points: Sequence[Point], name: str, conc: int) -> Point | None:
    return next((p for p in points if p.scenario.name == name and p.concurrency == conc), None)


def targets_section(points: Sequence[Point]) -> str:
    """Issue #6's targets against this run (a report, never a failure)."""
    checks: list[tuple[str, str, Point | None, bool]] = []

    def add(label: str, name: str, conc: int, measured: str, met: bool) -> None:
        p = _find(points, name, conc)
        checks.append((label, measured if p else "not run", p, met if p else False))

    def p50(name: str, conc: int) -> float:
        p = _find(points, name, conc)
        return p.window.percentile(0.5) * 1000 if p else math.nan

    def p99(name: str, conc: int) -> float:
        p = _find(points, name, conc)
        return p.window.percentile(0.99) * 1000 if p else math.nan

    def thr(name: str, conc: int) -> float:
        p = _find(points, name, conc)
        return p.window.throughput if p else math.nan

    add(
        "saga p50 at concurrency 1 <= 20 ms",
        "saga",
        1,
        f"{p50('saga', 1):.1f} ms",
        p50("saga", 1) <= 20,
    )
    add(
        "saga >= 150/s at concurrency 64, p99 < 1 s",
        "saga",
        64,
        f"{thr('saga', 64):.1f}/s, p99 {p99('saga', 64):.0f} ms",
        thr("saga", 64) >= 150 and p99("saga", 64) < 1000,
    )
    add(
        "trivial p50 at concurrency 1 <= 3 ms",
        "trivial",
        1,
        f"{p50('trivial', 1):.2f} ms",
        p50("trivial", 1) <= 3,
    )
    add(
        "trivial >= 1,200/s at concurrency 64",
        "trivial",
        64,
        f"{thr('trivial', 64):.0f}/s",
        thr("trivial", 64) >= 1200,
    )
    rows = [
        [label, measured, "-" if p is None else ("met" if met else "MISSED")]
        for label, measured, p, met in checks
    ]
    return "Targets of issue #6 (reported, not enforced)\n\n" + _table(
        ["target", "this run", "status"], rows, left=2
    )


def workers_section(points: Sequence[Point]) -> str:
    """Each `scenario/wN` point against the same scenario and concurrency in the first
    broker measured (the single process, by default)."""
    rows = []
    for p in points:
        name, _, workers = p.scenario.name.partition("/w")
        base = _find(points, name, p.concurrency) if workers else None
        if base is None:
            continue
        thr = p.window.throughput / base.window.throughput if base.window.throughput else 0.0
        p50 = p.window.percentile(0.5) / base.window.percentile(0.5)
        cpu = _per_call_ms(p, "broker") / _per_call_ms(base, "broker")
        rows.append([name, workers, str(p.concurrency), _ratio(thr), _ratio(p50), _ratio(cpu)])
    if not rows:
        return ""
    header = ["scenario", "workers", "conc", "calls/s vs first", "p50 vs first", "broker CPU/call"]
    return "Workers, against the first broker measured (same run):\n" + _table(header, rows)


def cluster_section(points: Sequence[Point], settings: dict[str, Any]) -> str:
    """Each `scenario/nN` point (N cluster nodes) against the same scenario and concurrency
    through the embedded broker, measured earlier in the same run."""
    rows = []
    for p in points:
        name, _, nodes = p.scenario.name.partition("/n")
        base = _find(points, name, p.concurrency) if nodes else None
        if base is None:
            continue
        # The cluster's cost includes its log's: the nodes' CPU plus the NATS servers'.
        cpu = _per_call_ms(p, "broker") + _per_call_ms(p, "nats")
        base_cpu = _per_call_ms(base, "broker")
        thr = p.window.throughput / base.window.throughput if base.window.throughput else 0.0
        rows.append(
            [
                name,
                nodes,
                str(p.concurrency),
                _rate(p.window.throughput),
                _ratio(thr),
                _ms(p.window.percentile(0.5)),
                _ratio(p.window.percentile(0.5) / base.window.percentile(0.5)),
                f"{cpu:.2f}",
                f"{_per_call_ms(p, 'nats'):.2f}",
                _ratio(cpu / base_cpu),
                f"{_cores(p, 'nats'):.2f}",
                f"{max(0.0, _cores(p, 'other')):.2f}/{max(0.0, _cores(base, 'other')):.2f}",
            ]
        )
    if not rows:
        return ""
    header = [
        "scenario", "nodes", "conc", "calls/s", "vs embedded", "p50 ms", "vs embedded",
        "CPU ms/call nodes+NATS", "of which NATS", "vs embedded", "NATS cores",
        "other cores (vs emb.)",
    ]  # fmt: skip
    conditions = (
        f"embedded: one broker process, its RocksDB journal fsync'd "
        f"{'once per group commit' if settings['fsync'] else 'NEVER (--no-fsync)'}.\n"
        f"cluster: N broker nodes, {settings['cluster_partitions']} partitions; each "
        "partition's log is a JetStream stream (file storage, 3 replicas) on 3 nats-servers\n"
        "on this machine, and a group is applied once a quorum acknowledged it (no local "
        "fsync).\nBoth: the same concurrency, "
        f"one client connection per client, at most {settings['connections']} (spread over "
        "the nodes' ingresses), "
        f"payload {settings['payload_bytes']} B, {settings['duration_s']:g} s windows.\n"
        "CPU ms/call: the cluster's is the nodes' plus the 3 NATS servers'; the embedded "
        "broker's is its process's.\n'other cores': the machine's other load during the "
        "cluster's window / during the embedded broker's (contention skews the ratios)."
    )
    return (
        "Cluster mode, against the embedded broker (same run):\n"
        + conditions
        + "\n\n"
        + _table(header, rows)
    )


def _errors(points: Sequence[Point]) -> str:
    lines = []
    for p in points:
        for kind, count in p.window.errors.most_common():
            sample = p.window.error_samples.get(kind, "")
            lines.append(f"  {p.scenario.name} c={p.concurrency}: {count} x {kind}: {sample[:160]}")
        if p.window.unfinished:
            lines.append(
                f"  {p.scenario.name} c={p.concurrency}: {p.window.unfinished} calls still "
                "running after the drain timeout"
            )
    return "Errors\n" + "\n".join(lines) if lines else ""


def contention_warning(points: Sequence[Point]) -> str:
    """A warning when other processes kept the machine busy during the windows."""
    seconds = sum(p.window.seconds for p in points)
    other = sum(max(0.0, p.window.deltas.get("other", 0.0)) for p in points)
    if not seconds or other / seconds < CONTENTION_WARN_CORES:
        return ""
    worst = max(points, key=lambda p: _cores(p, "other"))
    return (
        f"WARNING: other processes kept {other / seconds:.2f} cores busy on average during the "
        f"windows (up to {_cores(worst, 'other'):.2f} at {worst.scenario.name} "
        f"c={worst.concurrency}); these figures understate an uncontended run."
    )


def render(points: Sequence[Point], settings: dict[str, Any], partial: bool = False) -> str:
    """Everything printed after the run."""
    title = "Results" + (" (PARTIAL: the run did not finish)" if partial else "")
    sections = [
        f"{title}\n{settings_line(settings)}\n"
        "calls/s and latency are per client call; a saga call is 6 durable invocations. "
        "CPU ms/call = CPU seconds used\nby the process(es) during the window / calls "
        "completed in it; 'cores b/s/c' = CPU seconds / window seconds (broker/services/client);\n"
        "'other' = cores busy with anything else on the machine (contention: figures are only\n"
        "comparable when it is near 0). The floor is `direct`: the same handler over plain gRPC,\n"
        "no broker, at the same concurrency.",
        main_table(points),
        contention_warning(points),
        journal_table(points),
        commit_table(points),
        workers_section(points),
        cluster_section(points, settings),
        _errors(points),
        peer_pointer(),
        targets_section(points),
    ]
    return "\n\n".join(s for s in sections if s)


def to_json(
    points: Sequence[Point], settings: dict[str, Any], elapsed: float, complete: bool
) -> dict[str, Any]:
    """The results as a JSON-ready dict."""

    def nan_none(x: float) -> float | None:
        return None if math.isnan(x) or math.isinf(x) else x

    out = []
    for p in points:
        w = p.window
        svc = _service_role(p)
        thr, p50 = _ratios(points, p)
        out.append(
            {
                "scenario": p.scenario.name,
                "through_broker": p.scenario.through_broker,
                "invocations_per_call": p.scenario.invocations,
                "steps_per_call": p.scenario.steps,
                "concurrency": p.concurrency,
                "window_s": w.seconds,
                "calls": w.ok,
                "throughput_per_s": w.throughput,
                "latency_ms": {
                    q: nan_none(w.percentile(v) * 1000)
                    for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
                },
                "errors": dict(w.errors),
                "error_samples": w.error_samples,
                "unfinished": w.unfinished,
                "cpu_s": {k: v for k, v in w.deltas.items() if not k.startswith("metric:")},
                "broker_metrics": {
                    k[7:]: v for k, v in w.deltas.items() if k.startswith("metric:")
                },
                "cpu_s_per_call": {
                    "broker": nan_none(_per_call_ms(p, "broker") / 1000),
                    "services": nan_none(_per_call_ms(p, svc) / 1000),
                    "client": nan_none(_per_call_ms(p, "client") / 1000),
                },
                "vs_floor": {"throughput": nan_none(thr), "p50": nan_none(p50)},
            }
        )
    return {
        "complete": complete,
        "elapsed_s": elapsed,
        "settings": settings,
        "results": out,
    }
