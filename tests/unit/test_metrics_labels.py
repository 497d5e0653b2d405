"""/metrics label values are escaped and bounded. A handler's one-way send to a made-up
service is refused and counted under that name: an attack injected a line
(`x"} 1\\nfake_metric{a="b`) that Prometheus rejects the whole scrape for, and 6,000 names
took /metrics from 11 KB to 8.2 MB, until a restart."""

from __future__ import annotations

from broker.metrics import MAX_LABELS, OTHER, Metrics


def test_a_label_value_cannot_end_its_label_or_line() -> None:
    metrics = Metrics()
    hostile = 'x"} 1\nfake_metric{a="b\\'
    metrics.count("started", hostile)
    metrics.invocation_seconds.observe(0.1, hostile)
    text = metrics.render()
    assert "\nfake_metric" not in text
    escaped = 'x\\"} 1\\nfake_metric{a=\\"b\\\\'
    assert f'durable_invocations_started_total{{service="{escaped}"}} 1' in text
    assert f'durable_invocation_duration_seconds_count{{service="{escaped}"}} 1' in text
    for line in text.splitlines():
        assert line.startswith(("#", "durable_")), line


def test_names_past_the_bound_are_counted_together() -> None:
    metrics = Metrics()
    for i in range(MAX_LABELS + 500):
        metrics.count("failed", f"made.Up{i}")
        metrics.invocation_seconds.observe(0.1, f"made.Up{i}")
    failed = metrics.counters["failed"]
    assert len(failed) == MAX_LABELS + 1
    assert failed[OTHER] == 500
    assert len(metrics.invocation_seconds.counts) == MAX_LABELS + 1
    # A name seen before the bound keeps its own series.
    metrics.count("failed", "made.Up0")
    assert failed["made.Up0"] == 2
