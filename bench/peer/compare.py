"""The side-by-side table: our figures, the peer's, their ratios and issue 15's targets.

Pure: measured points in, text and JSON out, so the arithmetic is unit-tested.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from typing import Any

from bench.load import Window

OURS, PEER = "ours", "restate"
# Issue 15's targets, informational: at c64 at least this many times the peer's
# throughput; at c1 at most this fraction of its p50.
TARGET_THROUGHPUT_RATIO = 2.0
TARGET_P50_FRACTION = 0.5
TARGET_THROUGHPUT_CONCURRENCY = 64
TARGET_P50_CONCURRENCY = 1


@dataclasses.dataclass(frozen=True)
class Measured:
    """One scenario at one concurrency on one side in one run (a window's summary).

    Attributes:
        side: `ours` or `restate`.
        run: Which repeat (1-based).
        scenario: `trivial`, `keyed` or `saga`.
        concurrency: Clients in the closed loop.
        seconds: The window's length.
        ok: Successful calls in the window.
        errors: Failed calls in the window.
        p50_ms: Median latency of the successful calls (NaN without any).
        p99_ms: 99th percentile latency.
        cpu_s: CPU seconds during the window by role: `broker` (our broker or Restate's
            server), `service` (the handlers' processes), `client`, `other`.
        fsyncs: The server's fsyncs during the window, when its metrics tell (else None).
    """

    side: str
    run: int
    scenario: str
    concurrency: int
    seconds: float
    ok: int
    errors: int
    p50_ms: float
    p99_ms: float
    cpu_s: dict[str, float]
    fsyncs: float | None

    @property
    def throughput(self) -> float:
        """Successful calls per second."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def from_window(
        cls,
        side: str,
        run: int,
        scenario: str,
        concurrency: int,
        window: Window,
        fsync_metric: str | None,
    ) -> Measured:
        """The summary of `window`; `fsync_metric` names the counter of fsyncs in its deltas."""
        cpu = {k: v for k, v in window.deltas.items() if not k.startswith("metric:")}
        fsyncs = window.deltas.get(f"metric:{fsync_metric}") if fsync_metric else None
        return cls(
            side=side,
            run=run,
            scenario=scenario,
            concurrency=concurrency,
            seconds=window.seconds,
            ok=window.ok,
            errors=sum(window.errors.values()) + window.unfinished,
            p50_ms=window.percentile(0.5) * 1000,
            p99_ms=window.percentile(0.99) * 1000,
            cpu_s=cpu,
            fsyncs=fsyncs,
        )

    def to_json(self) -> dict[str, Any]:
        """As a JSON object (NaN as null)."""
        out = dataclasses.asdict(self)
        for k in ("p50_ms", "p99_ms"):
            if math.isnan(out[k]):
                out[k] = None
        out["throughput_per_s"] = self.throughput
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measured:
        """The inverse of `to_json`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        for k in ("p50_ms", "p99_ms"):
            if values[k] is None:
                values[k] = math.nan
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One side at one scenario and concurrency, over its repeats (medians).

    Attributes:
        runs: The repeats, in run order.
    """

    runs: tuple[Measured, ...]

    @property
    def throughput(self) -> float:
        """Median throughput over the runs."""
        return statistics.median(m.throughput for m in self.runs)

    @property
    def p50_ms(self) -> float:
        """Median over the runs of each run's p50."""
        return _nan_median([m.p50_ms for m in self.runs])

    @property
    def p99_ms(self) -> float:
        """Median over the runs of each run's p99."""
        return _nan_median([m.p99_ms for m in self.runs])

    @property
    def errors(self) -> int:
        """Failed calls over all runs."""
        return sum(m.errors for m in self.runs)

    def per_call(self, role: str) -> float:
        """CPU ms per successful call of `role`, over all runs together."""
        ok = sum(m.ok for m in self.runs)
        used = sum(m.cpu_s.get(role, 0.0) for m in self.runs)
        return used * 1000 / ok if ok else math.nan

    def cores(self, role: str) -> float:
        """Average cores `role` kept busy during the windows."""
        seconds = sum(m.seconds for m in self.runs)
        return sum(max(0.0, m.cpu_s.get(role, 0.0)) for m in self.runs) / seconds

    @property
    def fsyncs_per_call(self) -> float:
        """The server's fsyncs per successful call (NaN when its metrics did not tell)."""
        known = [m for m in self.runs if m.fsyncs is not None]
        ok = sum(m.ok for m in known)
        return sum(m.fsyncs or 0.0 for m in known) / ok if ok and known else math.nan


def _nan_median(values: list[float]) -> float:
    real = [v for v in values if not math.isnan(v)]
    return statistics.median(real) if real else math.nan


@dataclasses.dataclass(frozen=True)
class Row:
    """Ours against the peer at one scenario and concurrency.

    Attributes:
        throughput_ratio: Our throughput / theirs (above 1: we do more).
        p50_ratio: Their p50 / ours (above 1: we answer sooner).
        p99_ratio: Their p99 / ours.
        target: `pass`/`FAIL` against issue 15's target for this line, `-` where none applies.
    """

    scenario: str
    concurrency: int
    ours: Cell
    peer: Cell
    throughput_ratio: float
    p50_ratio: float
    p99_ratio: float
    target: str


def run_ratios(row: Row) -> list[tuple[int, float, float]]:
    """Each run's own ratios, from its two windows (run, throughput ours/peer, p50
    peer/ours), for the runs measured on both sides."""
    peer_runs = {m.run: m for m in row.peer.runs}
    return [
        (
            m.run,
            _div(m.throughput, peer_runs[m.run].throughput),
            _div(peer_runs[m.run].p50_ms, m.p50_ms),
        )
        for m in row.ours.runs
        if m.run in peer_runs
    ]


def _div(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def target_of(concurrency: int, throughput_ratio: float, p50_ratio: float) -> str:
    """Issue 15's target for a line: throughput at c64, p50 at c1 (else `-`)."""
    if concurrency == TARGET_THROUGHPUT_CONCURRENCY:
        ok = throughput_ratio >= TARGET_THROUGHPUT_RATIO
        return f"{'pass' if ok else 'FAIL'} (thr >= {TARGET_THROUGHPUT_RATIO:g}x)"
    if concurrency == TARGET_P50_CONCURRENCY:
        ok = p50_ratio >= 1 / TARGET_P50_FRACTION
        return f"{'pass' if ok else 'FAIL'} (p50 <= {TARGET_P50_FRACTION:g}x)"
    return "-"


def rows(measured: Sequence[Measured]) -> list[Row]:
    """One row per scenario and concurrency measured on both sides, in first-seen order."""
    keys: list[tuple[str, int]] = []
    for m in measured:
        if (m.scenario, m.concurrency) not in keys:
            keys.append((m.scenario, m.concurrency))
    out = []
    for scenario, conc in keys:
        sides = {
            side: tuple(
                m
                for m in measured
                if m.side == side and m.scenario == scenario and m.concurrency == conc
            )
            for side in (OURS, PEER)
        }
        if not sides[OURS] or not sides[PEER]:
            continue
        ours, peer = Cell(sides[OURS]), Cell(sides[PEER])
        thr = _div(ours.throughput, peer.throughput)
        p50 = _div(peer.p50_ms, ours.p50_ms)
        p99 = _div(peer.p99_ms, ours.p99_ms)
        out.append(Row(scenario, conc, ours, peer, thr, p50, p99, target_of(conc, thr, p50)))
    return out


def _ms(v: float) -> str:
    if math.isnan(v):
        return "-"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _rate(v: float) -> str:
    return f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def _x(v: float) -> str:
    return "-" if math.isnan(v) or math.isinf(v) else f"{v:.2f}x"


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, body)])


def main_table(table_rows: Sequence[Row]) -> str:
    """Throughput and latency of both sides, the ratios and the targets."""
    header = [
        "scenario", "conc", "ours/s", "p50 ms", "p99 ms", "Restate/s", "p50 ms", "p99 ms",
        "thr ours/R", "p50 R/ours", "p99 R/ours", "errors o/R", "issue 15 target",
    ]  # fmt: skip
    body = [
        [
            r.scenario,
            str(r.concurrency),
            _rate(r.ours.throughput),
            _ms(r.ours.p50_ms),
            _ms(r.ours.p99_ms),
            _rate(r.peer.throughput),
            _ms(r.peer.p50_ms),
            _ms(r.peer.p99_ms),
            _x(r.throughput_ratio),
            _x(r.p50_ratio),
            _x(r.p99_ratio),
            f"{r.ours.errors}/{r.peer.errors}",
            r.target,
        ]
        for r in table_rows
    ]
    return _table(header, body)


def runs_table(table_rows: Sequence[Row]) -> str:
    """Each run's own ratios and their median, beside the ratio of the medians."""
    header = ["scenario", "conc", "thr ours/R by run", "median", "p50 R/ours by run", "median"]
    body = []
    for r in table_rows:
        by_run = run_ratios(r)
        thr = [t for _, t, _ in by_run]
        p50 = [p for _, _, p in by_run]
        body.append(
            [
                r.scenario,
                str(r.concurrency),
                " ".join(_x(v) for v in thr),
                _x(_nan_median(thr)),
                " ".join(_x(v) for v in p50),
                _x(_nan_median(p50)),
            ]
        )
    return _table(header, body)


def cost_table(table_rows: Sequence[Row]) -> str:
    """Where the CPU goes on each side, and each server's fsyncs per call."""
    header = [
        "scenario", "conc", "side", "CPU ms/call server", "service", "client",
        "cores s/s/c", "other cores", "fsyncs/call", "calls/s of each run",
    ]  # fmt: skip
    body = []
    for r in table_rows:
        for name, cell in (("ours", r.ours), ("Restate", r.peer)):
            body.append(
                [
                    r.scenario,
                    str(r.concurrency),
                    name,
                    f"{cell.per_call('broker'):.2f}",
                    f"{cell.per_call('service'):.2f}",
                    f"{cell.per_call('client'):.2f}",
                    "/".join(f"{cell.cores(k):.2f}" for k in ("broker", "service", "client")),
                    f"{cell.cores('other'):.2f}",
                    "-" if math.isnan(cell.fsyncs_per_call) else f"{cell.fsyncs_per_call:.2f}",
                    " ".join(_rate(m.throughput) for m in cell.runs),
                ]
            )
    return _table(header, body)


def render(measured: Sequence[Measured], settings: dict[str, Any], partial: bool = False) -> str:
    """Everything printed after a comparison run (`partial`: it did not finish)."""
    table_rows = rows(measured)
    runs = max((m.run for m in measured), default=0)
    title = "Side by side: this broker against Restate, one run on this machine"
    if partial:
        title += " (PARTIAL: the run did not finish)"
    return "\n\n".join(
        [
            title + "\n" + "\n".join(f"  {k}: {v}" for k, v in settings.items()),
            f"Medians over {runs} run(s) per side, alternating ours/Restate. thr ours/R = our "
            "calls/s / Restate's;\np50 R/ours and p99 R/ours = Restate's latency / ours "
            "(above 1.00x: we are faster). The targets are\nissue 15's (informational): "
            f"{TARGET_THROUGHPUT_RATIO:g}x Restate's throughput at c{TARGET_THROUGHPUT_CONCURRENCY}"
            f", at most {TARGET_P50_FRACTION:g} of its p50 at c{TARGET_P50_CONCURRENCY}.",
            main_table(table_rows),
            "Each run's own ratios (from its two windows of the point, back to back with "
            "--pair point) and their median,\nbeside the ratios of the medians above.",
            runs_table(table_rows),
            "CPU per successful call by process (server = our broker / restate-server; service "
            "= the handlers' process(es));\n'other cores' = the rest of the machine (other "
            "users: figures are comparable when it is near 0);\nfsyncs/call from each server's "
            "metrics (ours: journal fsyncs; Restate: RocksDB WAL syncs).",
            cost_table(table_rows),
        ]
    )
