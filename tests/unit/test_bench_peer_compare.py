"""The side-by-side table of `make bench-peer`: medians, ratio directions and targets."""

from __future__ import annotations

import collections
import math

from bench.load import Window
from bench.peer import compare
from bench.peer.compare import OURS, PEER, Measured


def measured(
    side: str,
    scenario: str,
    conc: int,
    calls_per_s: float,
    p50_ms: float,
    run: int = 1,
    p99_ms: float = math.nan,
) -> Measured:
    return Measured(
        side=side,
        run=run,
        scenario=scenario,
        concurrency=conc,
        seconds=10.0,
        ok=round(calls_per_s * 10),
        errors=0,
        p50_ms=p50_ms,
        p99_ms=p99_ms,
        cpu_s={"broker": 5.0, "service": 1.0, "client": 1.0, "other": 0.0},
        fsyncs=None,
    )


def test_ratios_read_as_how_much_better_we_are() -> None:
    rows = compare.rows(
        [
            measured(OURS, "trivial", 64, 300.0, 50.0, p99_ms=80.0),
            measured(PEER, "trivial", 64, 100.0, 150.0, p99_ms=400.0),
        ]
    )
    (row,) = rows
    assert math.isclose(row.throughput_ratio, 3.0)  # ours / theirs
    assert math.isclose(row.p50_ratio, 3.0)  # theirs / ours
    assert math.isclose(row.p99_ratio, 5.0)
    assert row.target == "pass (thr >= 2x)"


def test_targets_apply_to_c64_throughput_and_c1_p50_only() -> None:
    assert compare.target_of(64, 2.0, 0.1) == "pass (thr >= 2x)"
    assert compare.target_of(64, 1.99, 9.0) == "FAIL (thr >= 2x)"
    assert compare.target_of(1, 9.0, 2.0) == "pass (p50 <= 0.5x)"
    assert compare.target_of(1, 9.0, 1.9) == "FAIL (p50 <= 0.5x)"
    assert compare.target_of(16, 9.0, 9.0) == "-"


def test_repeats_give_medians_per_side() -> None:
    runs = [
        measured(OURS, "saga", 1, tput, p50, run=i)
        for i, (tput, p50) in enumerate([(10.0, 30.0), (30.0, 10.0), (20.0, 20.0)], start=1)
    ]
    runs += [measured(PEER, "saga", 1, 5.0, 40.0, run=i) for i in (1, 2, 3)]
    (row,) = compare.rows(runs)
    assert math.isclose(row.ours.throughput, 20.0)
    assert math.isclose(row.ours.p50_ms, 20.0)
    assert math.isclose(row.p50_ratio, 2.0)
    assert [m.run for m in row.ours.runs] == [1, 2, 3]
    # CPU per call over all runs together: 5 s of broker CPU per run / its calls.
    assert math.isclose(row.ours.per_call("broker"), 15.0 * 1000 / 600)


def test_a_point_measured_on_one_side_only_has_no_row() -> None:
    rows = compare.rows(
        [
            measured(OURS, "keyed", 1, 100.0, 5.0),
            measured(OURS, "trivial", 1, 100.0, 5.0),
            measured(PEER, "trivial", 1, 50.0, 10.0),
        ]
    )
    assert [(r.scenario, r.concurrency) for r in rows] == [("trivial", 1)]


def test_a_window_is_summarised_with_its_failures_and_fsyncs() -> None:
    window = Window(
        latencies=[0.001 * i for i in range(1, 101)],
        errors=collections.Counter({"UNAVAILABLE": 2}),
        error_samples={},
        seconds=2.0,
        deltas={"broker": 1.5, "client": 0.5, "metric:fsyncs_total": 150.0},
        unfinished=1,
    )
    m = Measured.from_window(OURS, 2, "keyed", 64, window, "fsyncs_total")
    assert (m.ok, m.errors, m.throughput) == (100, 3, 50.0)
    assert math.isclose(m.p50_ms, 50.0) and math.isclose(m.p99_ms, 99.0)
    assert m.cpu_s == {"broker": 1.5, "client": 0.5}
    assert m.fsyncs == 150.0
    assert Measured.from_window(PEER, 1, "keyed", 64, window, None).fsyncs is None


def test_json_round_trip_keeps_an_empty_window() -> None:
    empty = measured(PEER, "saga", 64, 0.0, math.nan)
    data = empty.to_json()
    assert data["p50_ms"] is None and data["throughput_per_s"] == 0.0
    back = Measured.from_json(data)
    assert math.isnan(back.p50_ms) and back.ok == 0


def test_the_table_shows_both_sides_ratios_and_the_target() -> None:
    text = compare.main_table(
        compare.rows(
            [
                measured(OURS, "trivial", 1, 400.0, 2.5, p99_ms=4.0),
                measured(PEER, "trivial", 1, 200.0, 4.0, p99_ms=12.0),
            ]
        )
    )
    header, _, line = text.splitlines()
    assert "ours/s" in header and "Restate/s" in header and "issue 15 target" in header
    assert line.split() == [
        "trivial", "1", "400", "2.50", "4.00", "200", "4.00", "12.0",
        "2.00x", "1.60x", "3.00x", "0/0", "FAIL", "(p50", "<=", "0.5x)",
    ]  # fmt: skip


def test_the_sides_are_measured_point_by_point_back_to_back_by_default() -> None:
    from bench.peer.main import parse_args, plan, total_timeout

    flags = ["--scenarios", "trivial,keyed", "--concurrency", "1,64", "--repeat", "2"]
    args = parse_args(["--peer", "restate", *flags])
    steps = plan(args)
    assert len(steps) == 2 * 2 * 2 * 2  # runs x scenarios x concurrencies x sides
    # Each point's two windows are adjacent; who goes first alternates by run.
    assert steps[:2] == [(1, OURS, ["trivial"], [1]), (1, PEER, ["trivial"], [1])]
    assert steps[8:10] == [(2, PEER, ["trivial"], [1]), (2, OURS, ["trivial"], [1])]
    for first, second in zip(steps[::2], steps[1::2], strict=True):
        assert first[0] == second[0] and first[2:] == second[2:] and first[1] != second[1]
    whole = parse_args(["--peer", "restate", "--pair", "run", "--repeat", "2"])
    assert [(run, side) for run, side, _, _ in plan(whole)] == [
        (1, OURS),
        (1, PEER),
        (2, OURS),
        (2, PEER),
    ]
    assert plan(whole)[0][2:] == (["trivial", "keyed", "saga"], [1, 64])
    assert total_timeout(args) > 16 * (args.warmup + args.duration)


def test_each_run_has_its_own_ratio_beside_the_ratio_of_medians() -> None:
    ours = [(10.0, 30.0), (30.0, 10.0), (20.0, 20.0)]
    theirs = [(5.0, 60.0), (30.0, 10.0), (4.0, 80.0)]
    runs = [measured(OURS, "saga", 1, t, p, run=i) for i, (t, p) in enumerate(ours, start=1)] + [
        measured(PEER, "saga", 1, t, p, run=i) for i, (t, p) in enumerate(theirs, start=1)
    ]
    runs.append(measured(OURS, "saga", 1, 99.0, 1.0, run=4))  # no peer window: no ratio
    (row,) = compare.rows(runs)
    assert [(r, round(t, 2), round(p, 2)) for r, t, p in compare.run_ratios(row)] == [
        (1, 2.0, 2.0),
        (2, 1.0, 1.0),
        (3, 5.0, 4.0),
    ]
    table = compare.runs_table([row])
    assert "2.00x 1.00x 5.00x   2.00x" in table
    assert "2.00x 1.00x 4.00x   2.00x" in table
