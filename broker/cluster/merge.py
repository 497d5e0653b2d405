"""The admin answers of many partitions as one: pure functions over response messages.

Each partition answers for its own invocations; the front asks every partition and
merges here. A listing keeps the single broker's semantics (`broker.admin_paging`):
newest first, `offset`, `limit` and `page_token` over the whole, `total` summed. Any
of a partition's first offset+limit matches after the page token may belong on the
merged page, and a partition lists at most `MAX_LIST_LIMIT` a call, so the front
pages each partition with its own token (`partition_request`, then
`next_partition_request` until it is None) and merges what they gave
(`invocations`). The offset window bounds that to 10,000 records per partition.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence

from durable.v1 import admin_pb2

from ..admin_paging import MAX_LIST_LIMIT, coerce_limit, encode_token, fitting, page_limit
from ..config import ADMIN_ANSWER_BYTES


def wanted(request: admin_pb2.ListInvocationsRequest) -> int:
    """How many of each partition's matches (after the page token) may belong on the
    merged page: its first offset+limit."""
    return request.offset + page_limit(request)


def partition_request(
    request: admin_pb2.ListInvocationsRequest,
) -> admin_pb2.ListInvocationsRequest:
    """What each partition is asked first: the same filters and page token, no offset,
    as many of `wanted` as one call lists."""
    out = admin_pb2.ListInvocationsRequest()
    out.CopyFrom(request)
    out.offset = 0
    out.limit = min(wanted(request), MAX_LIST_LIMIT)
    return out


def next_partition_request(
    request: admin_pb2.ListInvocationsRequest,
    pages: Sequence[admin_pb2.ListInvocationsResponse],
) -> admin_pb2.ListInvocationsRequest | None:
    """What to ask a partition next, given the `pages` it answered so far; None once
    they hold all it `wanted` or it has no more."""
    have = sum(len(p.invocations) for p in pages)
    token = pages[-1].next_page_token if pages else ""
    if not token or have >= wanted(request):
        return None
    out = partition_request(request)
    out.page_token = token
    out.limit = min(wanted(request) - have, MAX_LIST_LIMIT)
    return out


def joined(pages: Sequence[admin_pb2.ListInvocationsResponse]) -> admin_pb2.ListInvocationsResponse:
    """A partition's pages as one answer: their invocations in order, the first page's
    total (the count ignores the token), the last page's next token, partial if any
    page was."""
    out = admin_pb2.ListInvocationsResponse(
        total=pages[0].total if pages else 0,
        next_page_token=pages[-1].next_page_token if pages else "",
        partial=any(p.partial for p in pages),
    )
    for page in pages:
        out.invocations.extend(page.invocations)
    return out


def invocations(
    request: admin_pb2.ListInvocationsRequest,
    answers: Sequence[admin_pb2.ListInvocationsResponse],
    cap: int = ADMIN_ANSWER_BYTES,
) -> admin_pb2.ListInvocationsResponse:
    """The page `request` asks for, from every partition's `joined` answer; shorter, with
    a token for the rest, where its records would pass `cap` bytes (as a partition's)."""
    merged = heapq.merge(
        *(a.invocations for a in answers),
        key=lambda r: (r.created_at_ms, r.id),
        reverse=True,
    )
    end = request.offset + page_limit(request)
    # One past the page tells whether more follow; so does a partition that has more
    # than it gave (what it kept back comes after everything it gave).
    taken = list(itertools.islice(merged, request.offset, end + 1))
    page = taken[: page_limit(request)]
    page = page[: fitting([r.ByteSize() for r in page], cap)]
    out = admin_pb2.ListInvocationsResponse(
        invocations=page,
        total=sum(a.total for a in answers),
        partial=any(a.partial for a in answers),
    )
    if page and (len(taken) > len(page) or any(a.next_page_token for a in answers)):
        out.next_page_token = encode_token((page[-1].created_at_ms, page[-1].id))
    return out


def stats(answers: Sequence[admin_pb2.GetStatsResponse]) -> admin_pb2.GetStatsResponse:
    """Counts and counters summed; complete only when every partition's are."""
    out = admin_pb2.GetStatsResponse(
        at_ms=max((a.at_ms for a in answers), default=0),
        complete=all(a.complete for a in answers),
    )
    events: dict[str, dict[str, int]] = {}
    for a in answers:
        for name, n in a.by_status.items():
            out.by_status[name] = out.by_status[name] + n
        for code, n in a.failed_by_code.items():
            out.failed_by_code[code] = out.failed_by_code[code] + n
        out.succeeded += a.succeeded
        out.failed += a.failed
        for counters in a.counters:
            mine = events.setdefault(counters.service, {})
            for event, n in counters.events.items():
                mine[event] = mine.get(event, 0) + n
    for service in sorted(events):
        out.counters.add(service=service, events=events[service])
    return out


def awaiting(
    limit: int, answers: Sequence[admin_pb2.ListAwaitingResponse]
) -> admin_pb2.ListAwaitingResponse:
    """The single broker's order over every partition: awakeables oldest invocation
    first, promises by (service, key, name), at most `limit` (coerced as a page's) of
    each, and the totals summed. Each partition cut its lists to the same limit, and
    what it cut comes after everything it gave, so the merged cut is exact."""
    limit = coerce_limit(limit)
    out = admin_pb2.ListAwaitingResponse(
        total_awakeables=sum(a.total_awakeables for a in answers),
        total_promises=sum(a.total_promises for a in answers),
    )
    awakeables = heapq.merge(
        *(a.awakeables for a in answers),
        key=lambda w: (w.created_at_ms, w.invocation_id, w.entry_index),
    )
    out.awakeables.extend(itertools.islice(awakeables, limit))
    promises = heapq.merge(*(a.promises for a in answers), key=lambda p: (p.service, p.key, p.name))
    out.promises.extend(itertools.islice(promises, limit))
    return out


def deployments(
    answers: Sequence[admin_pb2.ListDeploymentsResponse],
) -> admin_pb2.ListDeploymentsResponse:
    """Partition 0's deployments (registration reaches it first), with the invocations
    in flight on each summed over every partition."""
    in_flight: dict[str, int] = {}
    for a in answers:
        for d in a.deployments:
            in_flight[d.id] = in_flight.get(d.id, 0) + d.in_flight
    out = admin_pb2.ListDeploymentsResponse()
    out.CopyFrom(answers[0])
    for d in out.deployments:
        d.in_flight = in_flight[d.id]
    return out


def _busy(scopes: Sequence[admin_pb2.ScopeLimits]) -> dict[tuple[str, str], tuple[int, int]]:
    return {(s.service, s.method): (s.running, s.queued) for s in scopes}


def scope(answers: Sequence[admin_pb2.SetLimitsResponse]) -> admin_pb2.SetLimitsResponse:
    """Partition 0's view of a scope, with running and queued summed."""
    out = admin_pb2.SetLimitsResponse()
    out.CopyFrom(answers[0])
    out.limits.running = sum(a.limits.running for a in answers)
    out.limits.queued = sum(a.limits.queued for a in answers)
    return out


def limits(answers: Sequence[admin_pb2.GetLimitsResponse]) -> admin_pb2.GetLimitsResponse:
    """Partition 0's scopes (limits are set on every partition), with running and
    queued summed."""
    busy = [_busy(a.limits) for a in answers]
    out = admin_pb2.GetLimitsResponse()
    out.CopyFrom(answers[0])
    for s in out.limits:
        key = (s.service, s.method)
        s.running = sum(b.get(key, (0, 0))[0] for b in busy)
        s.queued = sum(b.get(key, (0, 0))[1] for b in busy)
    return out
