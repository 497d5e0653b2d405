"""The cluster's pure parts: merging partitions' answers, combining their metrics, the
workers' command line and their restart backoff."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any, cast

import pytest
from durable.v1 import admin_pb2, invocation_pb2, journal_pb2

from broker import admin_paging
from broker.cluster import launch, merge, scrape, supervisor
from broker.cluster.front import AdminFront
from broker.metrics import Metrics


def _inv(created: int, ident: str) -> invocation_pb2.Invocation:
    return invocation_pb2.Invocation(id=ident, created_at_ms=created)


def _newest_first(records: list[invocation_pb2.Invocation]) -> list[invocation_pb2.Invocation]:
    return sorted(records, key=lambda r: (r.created_at_ms, r.id), reverse=True)


def _answer(
    records: list[invocation_pb2.Invocation], asked: admin_pb2.ListInvocationsRequest
) -> admin_pb2.ListInvocationsResponse:
    """What a partition holding `records` answers, as the single broker pages."""
    page = admin_paging.check(asked)
    after = [
        r for r in _newest_first(records) if not page.after or (r.created_at_ms, r.id) < page.after
    ]
    taken = after[page.offset : page.offset + page.limit]
    out = admin_pb2.ListInvocationsResponse(invocations=taken, total=len(records))
    if taken and len(after) > page.offset + len(taken):
        out.next_page_token = admin_paging.encode_token((taken[-1].created_at_ms, taken[-1].id))
    return out


def _front(
    partitions: list[list[invocation_pb2.Invocation]],
    request: admin_pb2.ListInvocationsRequest,
    asked: list[admin_pb2.ListInvocationsRequest] | None = None,
) -> admin_pb2.ListInvocationsResponse:
    """What the front answers: each partition paged as `merge` says, then merged (every
    request sent is appended to `asked`)."""
    answers = []
    for records in partitions:
        pages: list[admin_pb2.ListInvocationsResponse] = []
        following: admin_pb2.ListInvocationsRequest | None = merge.partition_request(request)
        while following is not None:
            if asked is not None:
                asked.append(following)
            pages.append(_answer(records, following))
            following = merge.next_partition_request(request, pages)
        answers.append(merge.joined(pages))
    return merge.invocations(request, answers)


def _spread(
    count: int, partitions: int = 3
) -> tuple[list[list[invocation_pb2.Invocation]], list[str]]:
    """`count` invocations over the partitions (ties in creation time broken by id, as
    one broker orders them); their ids newest first."""
    records = [_inv(t // 2, f"inv_{t:05d}") for t in range(count)]
    return [records[p::partitions] for p in range(partitions)], [
        r.id for r in _newest_first(records)
    ]


def test_each_partition_is_asked_for_the_first_offset_plus_limit_a_page_at_a_time() -> None:
    request = admin_pb2.ListInvocationsRequest(service="s", offset=20, limit=5, page_token="t")
    asked = merge.partition_request(request)
    assert (asked.offset, asked.limit, asked.service, asked.page_token) == (0, 25, "s", "t")
    assert merge.partition_request(admin_pb2.ListInvocationsRequest()).limit == 1000
    deep = admin_pb2.ListInvocationsRequest(offset=8500, limit=1000)
    assert merge.partition_request(deep).limit == 1000

    first = admin_pb2.ListInvocationsResponse(next_page_token="p1")
    first.invocations.extend(_inv(9 - t, f"inv_{t}") for t in range(1000))
    following = merge.next_partition_request(deep, [first])
    assert following is not None
    assert (following.offset, following.limit, following.page_token) == (0, 1000, "p1")
    assert merge.next_partition_request(deep, [first] * 9) is not None
    assert merge.next_partition_request(deep, [first] * 10) is None, "it gave all it may need"
    last = admin_pb2.ListInvocationsResponse(invocations=first.invocations[:3])
    assert merge.next_partition_request(deep, [first, last]) is None, "it has no more"


def test_pages_of_the_merge_are_the_single_brokers_pages() -> None:
    partitions, ids = _spread(23)
    for offset, limit in itertools.product(range(0, 25, 4), (1, 3, 7)):
        request = admin_pb2.ListInvocationsRequest(offset=offset, limit=limit)

        page = _front(partitions, request)

        assert [r.id for r in page.invocations] == ids[offset : offset + limit], (offset, limit)
        assert page.total == 23
        assert bool(page.next_page_token) == (offset + limit < 23), (offset, limit)


@pytest.mark.parametrize("limit", [1, 3, 7, 23, 0])
def test_a_walk_with_tokens_lists_every_partitions_invocations_once_in_order(limit: int) -> None:
    partitions, ids = _spread(23)
    request = admin_pb2.ListInvocationsRequest(limit=limit)
    walked: list[str] = []
    while True:
        page = _front(partitions, request)
        assert page.total == 23
        walked += [r.id for r in page.invocations]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token

    assert walked == ids


def test_one_partition_with_all_the_rest_still_has_a_next_page() -> None:
    partitions, ids = _spread(12)
    partitions = [partitions[0] + partitions[1] + partitions[2], [], []]
    first = _front(partitions, admin_pb2.ListInvocationsRequest(limit=5))
    assert [r.id for r in first.invocations] == ids[:5]
    rest = _front(
        partitions, admin_pb2.ListInvocationsRequest(limit=7, page_token=first.next_page_token)
    )
    assert [r.id for r in rest.invocations] == ids[5:]
    assert rest.next_page_token == ""


def test_a_deep_offset_pages_each_partition_1000_at_a_time() -> None:
    partitions, ids = _spread(7500)
    request = admin_pb2.ListInvocationsRequest(offset=4000, limit=2000)  # coerced to 1000
    asked: list[admin_pb2.ListInvocationsRequest] = []

    page = _front(partitions, request, asked)

    assert [r.id for r in page.invocations] == ids[4000:5000]
    assert (page.total, bool(page.next_page_token)) == (7500, True)
    assert max(a.limit for a in asked) == 1000
    # Each partition holds 2500, fewer than the 5000 it may need: all of it, in 3 calls.
    assert len(asked) == 3 * 3
    at_the_end = _front(partitions, admin_pb2.ListInvocationsRequest(offset=7000, limit=1000))
    assert [r.id for r in at_the_end.invocations] == ids[7000:]
    assert at_the_end.next_page_token == ""


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


def _awaiting(partition: int, ages: list[int], total: int) -> admin_pb2.ListAwaitingResponse:
    """A partition's answer: an awakeable per invocation created at each age (its oldest
    first, as a partition lists them), `total` pending in all."""
    out = admin_pb2.ListAwaitingResponse(total_awakeables=total, total_promises=total)
    for age in ages:
        out.awakeables.add(
            awakeable_id=f"awk_{partition}_{age}",
            invocation_id=f"inv_{partition}_{age:05d}",
            created_at_ms=age,
        )
        out.promises.add(service="w", key=f"{age:05d}", name=str(partition))
    return out


def test_awaiting_merges_every_partition_oldest_invocation_first_with_totals() -> None:
    answers = [_awaiting(0, [5, 6, 7], 3), _awaiting(1, [1, 9], 2), _awaiting(2, [6], 1)]

    merged = merge.awaiting(4, answers)

    assert [w.created_at_ms for w in merged.awakeables] == [1, 5, 6, 6]
    # Equal ages: by invocation id, as the single broker orders them.
    assert [w.invocation_id for w in merged.awakeables[2:]] == ["inv_0_00006", "inv_2_00006"]
    assert [(p.key, p.name) for p in merged.promises] == [
        ("00001", "1"),
        ("00005", "0"),
        ("00006", "0"),
        ("00006", "2"),
    ]
    assert (merged.total_awakeables, merged.total_promises) == (6, 6)


def test_awaiting_past_1000_is_cut_to_1000_over_the_partitions() -> None:
    # Each partition cut its own lists to 1000; the merged page is the oldest 1000.
    answers = [_awaiting(p, list(range(p, 3000, 3))[:1000], 5000) for p in range(3)]

    for limit in (0, 1000, 1001, 2**32 - 1):
        merged = merge.awaiting(limit, answers)
        assert [w.created_at_ms for w in merged.awakeables] == list(range(1000)), limit
        assert len(merged.promises) == 1000
        assert merged.total_awakeables == 15000


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


def test_a_partition_whose_listing_is_partial_makes_the_merge_partial() -> None:
    whole = admin_pb2.ListInvocationsResponse(invocations=[_inv(3, "inv_c")], total=1)
    cut = admin_pb2.ListInvocationsResponse(invocations=[_inv(2, "inv_b")], total=1, partial=True)
    request = admin_pb2.ListInvocationsRequest(limit=10)

    assert merge.joined([whole, cut]).partial
    assert not merge.joined([whole]).partial
    assert merge.invocations(request, [whole, merge.joined([cut])]).partial
    assert not merge.invocations(request, [whole, whole]).partial


def test_a_merged_page_stops_at_the_byte_cap_and_says_more_follow() -> None:
    records = [
        invocation_pb2.Invocation(
            id=f"inv_{n}", created_at_ms=100 - n, result=journal_pb2.Result(value=b"v" * 1_000)
        )
        for n in range(6)
    ]
    answers = [
        admin_pb2.ListInvocationsResponse(invocations=records[0::2], total=3),
        admin_pb2.ListInvocationsResponse(invocations=records[1::2], total=3),
    ]
    page = merge.invocations(admin_pb2.ListInvocationsRequest(limit=10), answers, cap=3_100)
    assert [r.id for r in page.invocations] == ["inv_0", "inv_1", "inv_2"]
    assert page.total == 6
    assert admin_paging.decode_token(page.next_page_token) == (98, "inv_2")
    whole = merge.invocations(admin_pb2.ListInvocationsRequest(limit=10), answers)
    assert len(whole.invocations) == 6 and not whole.next_page_token


def test_the_front_routes_every_admin_method() -> None:
    # A method added to admin.proto and not to the front would be UNIMPLEMENTED on a
    # `--workers` broker and a cluster node only (PurgeInvocation nearly was).
    front = AdminFront(cast(Any, SimpleNamespace(count=3)), cast(Any, None))
    methods = admin_pb2.DESCRIPTOR.services_by_name["Admin"].methods_by_name
    assert set(front.handlers()) == set(methods)


def test_a_label_value_with_other_line_breaks_stays_on_its_line() -> None:
    # splitlines() also broke at "\r" and "\u2028" inside a (made-up) service name: the
    # rest read as lines of their own, an injected sample among them.
    metrics = Metrics()
    metrics.count("started", 'x\r injected_total{a="b"} 1\u2028y')
    combined = scrape.combine([metrics.render()])
    samples = [line for line in combined.split("\n") if line.startswith("durable_invocations_")]
    assert samples == [
        'durable_invocations_started_total{partition="0",service="x\r injected_total{a=\\"b\\"} '
        '1\u2028y"} 1'
    ]
