"""The cluster's pure parts: merging partitions' answers, combining their metrics, the
workers' command line and their restart backoff."""

from __future__ import annotations

import itertools

from durable.v1 import admin_pb2, invocation_pb2

from broker.cluster import launch, merge, scrape, supervisor


def _inv(created: int, ident: str) -> invocation_pb2.Invocation:
    return invocation_pb2.Invocation(id=ident, created_at_ms=created)


def _answers(
    partitions: list[list[invocation_pb2.Invocation]], request: admin_pb2.ListInvocationsRequest
) -> list[admin_pb2.ListInvocationsResponse]:
    """What each partition answers to `merge.partition_request(request)`."""
    asked = merge.partition_request(request)
    out = []
    for records in partitions:
        ordered = sorted(records, key=lambda r: (r.created_at_ms, r.id), reverse=True)
        out.append(
            admin_pb2.ListInvocationsResponse(
                invocations=ordered[: asked.limit], total=len(records)
            )
        )
    return out


def test_partition_request_asks_each_for_the_first_offset_plus_limit() -> None:
    request = admin_pb2.ListInvocationsRequest(service="s", offset=20, limit=5)
    asked = merge.partition_request(request)

    assert (asked.offset, asked.limit, asked.service) == (0, 25, "s")
    assert merge.partition_request(admin_pb2.ListInvocationsRequest()).limit == 1000
    huge = admin_pb2.ListInvocationsRequest(offset=0xFFFFFFFF, limit=10)
    assert merge.partition_request(huge).limit == 0xFFFFFFFF


def test_pages_of_the_merge_are_the_single_brokers_pages() -> None:
    # Ties in creation time are broken by id, as one broker orders them.
    records = [_inv(t // 2, f"inv_{t:03d}") for t in range(23)]
    partitions = [records[p::3] for p in range(3)]
    newest_first = sorted(records, key=lambda r: (r.created_at_ms, r.id), reverse=True)
    for offset, limit in itertools.product(range(0, 25, 4), (1, 3, 7)):
        request = admin_pb2.ListInvocationsRequest(offset=offset, limit=limit)

        page = merge.invocations(request, _answers(partitions, request))

        assert [r.id for r in page.invocations] == [
            r.id for r in newest_first[offset : offset + limit]
        ], (offset, limit)
        assert page.total == 23


def test_stats_are_summed() -> None:
    a = admin_pb2.GetStatsResponse(
        by_status={"RUNNING": 1, "COMPLETED": 3},
        succeeded=2,
        failed=1,
        failed_by_code={13: 1},
        at_ms=5,
        complete=True,
    )
    a.counters.add(service="x", events={"started": 2})
    b = admin_pb2.GetStatsResponse(
        by_status={"COMPLETED": 1}, succeeded=1, failed_by_code={}, at_ms=9, complete=False
    )
    b.counters.add(service="x", events={"started": 1, "failed": 1})
    b.counters.add(service="a", events={"started": 4})

    merged = merge.stats([a, b])

    assert dict(merged.by_status) == {"RUNNING": 1, "COMPLETED": 4}
    assert (merged.succeeded, merged.failed, dict(merged.failed_by_code)) == (3, 1, {13: 1})
    assert (merged.at_ms, merged.complete) == (9, False)
    assert [(c.service, dict(c.events)) for c in merged.counters] == [
        ("a", {"started": 4}),
        ("x", {"started": 3, "failed": 1}),
    ]


def test_awaiting_keeps_the_limit_and_orders_promises() -> None:
    a = admin_pb2.ListAwaitingResponse()
    a.awakeables.add(awakeable_id="awk_1")
    a.promises.add(service="w", key="b", name="p")
    b = admin_pb2.ListAwaitingResponse()
    b.awakeables.add(awakeable_id="awk_2")
    b.promises.add(service="w", key="a", name="p")

    merged = merge.awaiting(1, [a, b])

    assert [w.awakeable_id for w in merged.awakeables] == ["awk_1"]
    assert [p.key for p in merged.promises] == ["a"]
    assert len(merge.awaiting(0, [a, b]).awakeables) == 2


def test_deployments_and_limits_sum_what_each_partition_counts() -> None:
    first = admin_pb2.ListDeploymentsResponse()
    first.deployments.add(id="dp_1", in_flight=1)
    other = admin_pb2.ListDeploymentsResponse()
    other.deployments.add(id="dp_1", in_flight=2)
    assert [d.in_flight for d in merge.deployments([first, other]).deployments] == [3]

    la = admin_pb2.GetLimitsResponse()
    la.limits.add(service="s", concurrency=2, running=1, queued=0)
    lb = admin_pb2.GetLimitsResponse()
    lb.limits.add(service="s", concurrency=2, running=1, queued=4)
    merged = merge.limits([la, lb])
    assert [(s.concurrency, s.running, s.queued) for s in merged.limits] == [(2, 2, 4)]


def test_metrics_are_labelled_and_each_family_given_once() -> None:
    text = (
        "# HELP c_total Things.\n# TYPE c_total counter\n"
        'c_total{service="s"} 2\n'
        "# HELP h Latency.\n# TYPE h histogram\n"
        'h_bucket{le="+Inf"} 1\nh_sum 0.5\nh_count 1\n'
    )

    combined = scrape.combine([text, None, text])

    assert combined.count("# TYPE c_total counter") == 1
    assert 'c_total{partition="0",service="s"} 2' in combined
    assert 'c_total{partition="2",service="s"} 2' in combined
    assert 'h_sum{partition="2"} 0.5' in combined
    assert 'durable_partition_up{partition="1"} 0' in combined
    lines = combined.splitlines()
    assert lines.index('h_count{partition="0"} 1') > lines.index("# TYPE h histogram")


def test_worker_flags_drop_the_supervisors_own() -> None:
    argv = ["--workers", "2", "--partitions=4", "--data-dir", "d", "--metrics", "m:1"]
    argv += ["--ingress", "127.0.0.1:0", "--no-fsync"]

    assert launch.worker_argv(argv, "127.0.0.1:5555") == [
        "--data-dir",
        "d",
        "--ingress",
        "127.0.0.1:0",
        "--no-fsync",
        "--ingress",
        "127.0.0.1:5555",
    ]


def test_restarts_back_off_while_a_worker_dies_young() -> None:
    delays = [supervisor.restart_delay(n) for n in range(9)]

    assert delays[:4] == [0.1, 0.1, 0.2, 0.4]
    assert delays == sorted(delays)
    assert delays[-1] == supervisor.RESTART_MAX_S
