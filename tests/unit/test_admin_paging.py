"""ListInvocations' paging (AIP-158): the limit's ceiling, the offset window, page tokens,
and the single broker's listing walked page by page over a partition built in memory
(completed invocations in its table, the others live), before and after the index of
completed invocations is built. Then the paging by name (ListSchedules')."""

from __future__ import annotations

import asyncio
import base64
import collections
import random
import types
from typing import cast

import pytest
from durable.v1 import admin_pb2, invocation_pb2

from broker import admin_paging, admin_query
from broker.admin_paging import MAX_LIST_LIMIT, MAX_LIST_WINDOW, PagingError
from broker.core.model import Live
from broker.core.partition import Partition
from broker.storage import Batch, MemoryKV, invocations

Invocation = invocation_pb2.Invocation
Status = invocation_pb2.InvocationStatus
Request = admin_pb2.ListInvocationsRequest


@pytest.mark.parametrize(
    ("asked", "listed"),
    [(0, 1000), (1, 1), (999, 999), (1000, 1000), (1001, 1000), (2**32 - 1, 1000)],
)
def test_the_limit_defaults_to_and_is_coerced_to_1000(asked: int, listed: int) -> None:
    assert admin_paging.coerce_limit(asked) == listed
    assert admin_paging.page_limit(Request(limit=asked)) == listed
    assert admin_paging.check(Request(limit=asked)).limit == listed


@pytest.mark.parametrize("key", [(0, "inv_a"), (1_700_000_000_123, "inv_x-Y_9"), (5, "a:b:c")])
def test_a_token_names_its_key_and_is_url_safe(key: admin_paging.Key) -> None:
    token = admin_paging.encode_token(key)

    assert admin_paging.decode_token(token) == key
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        "%%%",
        _b64("no colon"),
        _b64("12:"),  # no id
        _b64(":inv_a"),  # no time
        _b64("-5:inv_a"),
        _b64("007:inv_a"),  # names 7, but not as the broker writes it
        _b64("12:inv_a"),  # padded: the broker's tokens are not
        admin_paging.encode_token((12, "inv_a")) + "=",
        admin_paging.encode_token((12, "inv_a")) + "*",
        base64.urlsafe_b64encode(b"12:\xff\xfe").decode().rstrip("="),
        _b64("9" * 5000 + ":inv_a").rstrip("="),
    ],
)
def test_a_token_the_broker_did_not_issue_is_refused(token: str) -> None:
    with pytest.raises(PagingError, match="pass next_page_token from the previous page unchanged"):
        admin_paging.check(Request(page_token=token))


def test_a_token_with_an_offset_is_refused() -> None:
    token = admin_paging.encode_token((12, "inv_a"))

    with pytest.raises(PagingError, match="page_token and offset cannot be combined"):
        admin_paging.check(Request(page_token=token, offset=1))
    assert admin_paging.check(Request(page_token=token, limit=3)) == admin_paging.Page(
        0, 3, (12, "inv_a")
    )


def test_offset_paging_reaches_the_first_10000_matches() -> None:
    assert admin_paging.check(Request(offset=9990, limit=10)).offset == 9990
    assert admin_paging.check(Request(offset=9000, limit=5000)).limit == MAX_LIST_LIMIT
    for offset, limit in ((9999, 10), (9001, 0), (MAX_LIST_WINDOW, 1), (2**32 - 1, 2**32 - 1)):
        with pytest.raises(PagingError, match="first 10,000 matches") as refused:
            admin_paging.check(Request(offset=offset, limit=limit))
        assert "page_token" in str(refused.value)


# -- the single broker's listing ---------------------------------------------------------


class _Store:
    """What the listing reads of a partition: completed records in its table, the
    others live (in memory), and its completion listeners (for the index)."""

    def __init__(self, completed: list[Invocation], live: list[Invocation]) -> None:
        self.kv = MemoryKV()
        batch = Batch()
        for record in completed:
            invocations.put(batch, record)
        self.kv.write(batch.puts)
        # A loader, so that a test can evict them (it is never called: nothing listed
        # here reads a journal).
        self._live = {r.id: Live(r, [], lambda invocation_id: []) for r in live}
        self.completion_listeners: list[object] = []
        self.metrics = types.SimpleNamespace(counters={})  # what stats reads of them

    def listed(self) -> list[Live]:
        return list(self._live.values())

    def live_record(self, invocation_id: str) -> Invocation | None:
        live = self._live.get(invocation_id)
        return None if live is None else live.snapshot()

    def purge(self, invocation_id: str) -> None:
        batch = Batch()
        invocations.delete(batch, invocation_id)
        self.kv.write(batch.puts)


def _record(n: int, status: invocation_pb2.InvocationStatus.ValueType) -> Invocation:
    # Pairs share a creation time: the id breaks the tie.
    return Invocation(
        id=f"inv_{n:02d}", created_at_ms=1000 + n // 2, status=status, expires_at_ms=2**62
    )


def _listing(index_ready: bool) -> tuple[_Store, admin_query.CompletedIndex, list[str]]:
    """11 invocations, completed ones interleaved with live ones; their ids newest first."""
    records = [_record(n, Status.COMPLETED if n % 3 else Status.SUSPENDED) for n in range(11)]
    store = _Store(
        [r for r in records if r.status == Status.COMPLETED],
        [r for r in records if r.status != Status.COMPLETED],
    )
    index = admin_query.CompletedIndex(cast(Partition, store))
    if index_ready:
        asyncio.run(index.build())
    newest_first = sorted(records, key=lambda r: (r.created_at_ms, r.id), reverse=True)
    return store, index, [r.id for r in newest_first]


def _walk(
    store: _Store, index: admin_query.CompletedIndex, request: Request
) -> tuple[list[list[str]], set[int]]:
    """The pages of a walk with next_page_token, and the totals they reported."""
    pages: list[list[str]] = []
    totals: set[int] = set()
    while True:
        page = admin_query.list_invocations(cast(Partition, store), index, request)
        pages.append([r.id for r in page.invocations])
        totals.add(page.total)
        if not page.next_page_token:
            return pages, totals
        request.page_token = page.next_page_token


@pytest.mark.parametrize("limit", [1, 3, 4, 11])
def test_a_walk_with_tokens_lists_every_match_once_newest_first(limit: int) -> None:
    store, index, ids = _listing(index_ready=True)

    pages, totals = _walk(store, index, Request(limit=limit))

    assert [i for page in pages for i in page] == ids
    assert [len(p) for p in pages[:-1]] == [limit] * (len(pages) - 1)
    assert totals == {11}
    assert len(pages) == -(-11 // limit), "no empty page at the end"


def test_a_walk_keeps_the_filters_and_offset_pages_say_whether_more_follow() -> None:
    store, index, ids = _listing(index_ready=True)
    completed = [i for i in ids if int(i[4:]) % 3]

    pages, totals = _walk(store, index, Request(status=Status.COMPLETED, limit=2))

    assert [i for page in pages for i in page] == completed
    assert totals == {len(completed)}
    partition = cast(Partition, store)
    for offset in range(0, 12, 3):
        page = admin_query.list_invocations(partition, index, Request(offset=offset, limit=3))
        assert [r.id for r in page.invocations] == ids[offset : offset + 3]
        more = offset + 3 < len(ids)
        assert bool(page.next_page_token) == more, offset
        if more:  # the token goes on from where the offset page ended
            after = admin_query.list_invocations(
                partition, index, Request(page_token=page.next_page_token, limit=3)
            )
            assert [r.id for r in after.invocations] == ids[offset + 3 : offset + 6]


_LIVE_STATUSES = [Status.PENDING, Status.RUNNING, Status.SUSPENDED, Status.BACKING_OFF]


def _lives(n: int) -> list[Invocation]:
    rng = random.Random(n)
    return [
        Invocation(
            id=f"inv_{i:03d}",
            created_at_ms=1000 + rng.randrange(25),  # ties: the id orders them
            status=rng.choice(_LIVE_STATUSES),
            service=rng.choice(["a.A", "b.B"]),
            method=rng.choice(["M", "N"]),
            key=rng.choice(["", "k1", "k2"]),
            idempotency_key=rng.choice(["", "i1"]),
            deployment_id=rng.choice(["", "dp_1", "dp_2"]),
            expires_at_ms=2**62,
        )
        for i in range(n)
    ]


def _matches(record: Invocation, request: Request) -> bool:
    """The filters' meaning, record by record (what the listing must agree with)."""
    return (
        (not request.status or record.status == request.status)
        and (not request.service or record.service == request.service)
        and (not request.method or record.method == request.method)
        and (not request.key or record.key == request.key)
        and (not request.idempotency_key or record.idempotency_key == request.idempotency_key)
        and (not request.created_after_ms or record.created_at_ms >= request.created_after_ms)
        and (not request.created_before_ms or record.created_at_ms < request.created_before_ms)
    )


_FILTERS = [
    Request(),
    Request(status=Status.SUSPENDED),
    Request(service="b.B"),
    Request(method="N", key="k1"),
    Request(idempotency_key="i1", status=Status.RUNNING),
    Request(created_after_ms=1010),
    Request(created_before_ms=1012, service="a.A"),
    Request(created_after_ms=1005, created_before_ms=1020, key="k2", method="M"),
]


@pytest.mark.parametrize("request_", _FILTERS)
def test_live_invocations_packed_or_not_are_filtered_and_ordered_as_their_records_say(
    request_: Request,
) -> None:
    records = _lives(80)
    store = _Store([], records)
    index = admin_query.CompletedIndex(cast(Partition, store))
    asyncio.run(index.build())
    lives = store.listed()
    for live in lives[::2]:  # a waiting invocation's record is packed while it waits
        live.evict()
    expected = sorted(
        (r for r in records if _matches(r, request_)),
        key=lambda r: (r.created_at_ms, r.id),
        reverse=True,
    )

    for limit in (1, 7, 80):
        request = Request()
        request.CopyFrom(request_)
        request.limit = limit
        pages, totals = _walk(store, index, request)

        assert [i for page in pages for i in page] == [r.id for r in expected]
        assert totals == {len(expected)}
    page = admin_query.list_invocations(cast(Partition, store), index, Request(limit=1000))
    assert [r for r in page.invocations] == sorted(
        records, key=lambda r: (r.created_at_ms, r.id), reverse=True
    ), "a packed record is listed whole"
    assert all(live._record is None for live in lives[::2]), "listing unpacked a record"


def test_a_packed_invocation_lists_the_fields_of_its_record() -> None:
    records = _lives(30)
    store = _Store([], records)
    lives = store.listed()
    for live in lives:
        live.evict()

    for live, record in zip(lives, records, strict=True):
        for name in ("status", "service", "method", "key", "idempotency_key", "deployment_id"):
            assert getattr(live.listed, name) == getattr(record, name), name
        assert live.order == (record.created_at_ms, record.id)
        assert live._record is None, "reading what it lists unpacked it"


def test_stats_count_live_invocations_by_status_packed_or_not() -> None:
    records = _lives(50)
    store = _Store([], records)
    index = admin_query.CompletedIndex(cast(Partition, store))
    for live in store.listed()[1::3]:
        live.evict()

    stats = admin_query.stats(cast(Partition, store), index)

    expected = collections.Counter(Status.Name(r.status) for r in records)
    assert dict(stats.by_status) == dict(expected)


@pytest.mark.parametrize("limit", [1, 3, 11])
def test_before_the_index_is_built_live_ones_are_listed_and_the_answer_is_partial(
    limit: int,
) -> None:
    store, index, ids = _listing(index_ready=False)
    live = [i for i in ids if not int(i[4:]) % 3]  # the suspended ones, newest first

    pages, totals = _walk(store, index, Request(limit=limit))

    assert [i for page in pages for i in page] == live
    assert totals == {len(live)}
    partition = cast(Partition, store)
    assert admin_query.list_invocations(partition, index, Request()).partial
    completed = admin_query.list_invocations(partition, index, Request(status=Status.COMPLETED))
    assert completed.partial and not completed.invocations
    suspended = admin_query.list_invocations(partition, index, Request(status=Status.SUSPENDED))
    assert not suspended.partial, "every live one is listed"
    assert not admin_query.stats(partition, index).complete


def test_a_listing_waits_for_the_index_a_while_then_answers_without_it() -> None:
    store, index, ids = _listing(index_ready=False)

    async def run() -> tuple[bool, bool]:
        late = await index.wait_built(timeout=0.05)  # nobody builds it
        building = asyncio.create_task(index.build())
        built = await index.wait_built(timeout=10)
        await building
        return late, built

    late, built = asyncio.run(run())
    assert (late, built) == (False, True)
    listed = admin_query.list_invocations(cast(Partition, store), index, Request())
    assert [r.id for r in listed.invocations] == ids and not listed.partial


def test_a_record_purged_while_listed_does_not_stop_the_walk() -> None:
    store, index, ids = _listing(index_ready=True)
    purged = next(i for i in ids if int(i[4:]) % 3)  # the newest completed one
    store.purge(purged)

    pages, _ = _walk(store, index, Request(limit=1))

    assert [i for page in pages for i in page] == [i for i in ids if i != purged]


# -- paging by name ------------------------------------------------------------------------


def _plain(name: str) -> bool:
    return name.isalnum()


def _walk_names(names: list[str], limit: int) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        page, token = admin_paging.name_page(names, token, limit, _plain)
        pages.append(list(page))
        if not token:
            return pages


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 6, 0, 2**32 - 1])
def test_a_walk_by_name_lists_each_once_in_order(limit: int) -> None:
    names = ["a1", "a2", "b", "c", "d"]

    pages = _walk_names(names, limit)

    assert [n for page in pages for n in page] == names
    assert len(pages) == -(-len(names) // admin_paging.coerce_limit(limit)), "no empty last page"


def test_a_page_by_name_holds_at_most_1000_and_goes_on_after_its_last() -> None:
    names = [f"s{i:05d}" for i in range(2500)]

    first, token = admin_paging.name_page(names, "", 2**32 - 1, _plain)
    second, token2 = admin_paging.name_page(names, token, 0, _plain)
    third, last = admin_paging.name_page(names, token2, 5000, _plain)

    assert (list(first), list(second), list(third)) == (
        names[:1000],
        names[1000:2000],
        names[2000:],
    )
    assert last == ""
    assert admin_paging.decode_name_token(token, _plain) == names[999]


def test_a_name_removed_or_added_meanwhile_moves_nothing() -> None:
    _, token = admin_paging.name_page(["a", "b", "c", "d"], "", 2, _plain)

    # "b" (the token's own name) is gone and "bb" is new: the walk goes on after "b".
    page, _ = admin_paging.name_page(["a", "bb", "c", "d"], token, 2, _plain)

    assert list(page) == ["bb", "c"]


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        _b64("not plain!").rstrip("="),  # not a name the listing holds
        _b64("ab"),  # padded: the broker's tokens are not
        admin_paging.encode_name_token("abc") + "*",
        admin_paging.encode_token((12, "inv_a")),  # a ListInvocations token
        base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("="),
        admin_paging.encode_name_token("a" * 1000),
    ],
)
def test_a_name_token_the_broker_did_not_issue_is_refused(token: str) -> None:
    with pytest.raises(PagingError, match="pass next_page_token from the previous page unchanged"):
        admin_paging.name_page(["a", "b"], token, 1, _plain)


def test_a_bounded_index_says_the_listing_and_counts_of_completed_ones_are_partial() -> None:
    records = [_record(n, Status.COMPLETED if n % 3 else Status.SUSPENDED) for n in range(30)]
    completed = [r for r in records if r.status == Status.COMPLETED]
    store = _Store(completed, [r for r in records if r.status != Status.COMPLETED])
    partition = cast(Partition, store)
    index = admin_query.CompletedIndex(partition, max_rows=8)
    asyncio.run(index.build())
    newest = sorted(completed, key=lambda r: (r.created_at_ms, r.id))[-8:]

    listed = admin_query.list_invocations(partition, index, Request(status=Status.COMPLETED))
    assert [r.id for r in listed.invocations] == [r.id for r in reversed(newest)]
    assert listed.total == 8
    assert listed.partial
    assert admin_query.list_invocations(partition, index, Request()).partial
    live_only = admin_query.list_invocations(partition, index, Request(status=Status.SUSPENDED))
    assert not live_only.partial, "no completed ones were asked for"
    assert len(live_only.invocations) == len(records) - len(completed)
    assert not admin_query.stats(partition, index).complete

    whole = admin_query.CompletedIndex(partition, max_rows=100)
    asyncio.run(whole.build())
    assert not admin_query.list_invocations(partition, whole, Request()).partial
    assert admin_query.stats(partition, whole).complete


def test_a_page_of_records_with_large_results_stops_at_the_byte_cap() -> None:
    # Results of different sizes, completed and live: each page holds what fits in
    # 5,000 bytes (at least one record), and a token goes on from there.
    rng = random.Random(7)
    records = [_record(n, Status.COMPLETED if n % 3 else Status.SUSPENDED) for n in range(11)]
    for record in records:
        record.result.value = b"r" * rng.randrange(500, 4_000)
    store = _Store(
        [r for r in records if r.status == Status.COMPLETED],
        [r for r in records if r.status != Status.COMPLETED],
    )
    index = admin_query.CompletedIndex(cast(Partition, store))
    asyncio.run(index.build())
    newest_first = [
        r.id for r in sorted(records, key=lambda r: (r.created_at_ms, r.id), reverse=True)
    ]
    request, seen, pages = Request(limit=1000), [], 0
    while pages < 20:
        page = admin_query.list_invocations(cast(Partition, store), index, request, cap=5_000)
        pages += 1
        assert page.invocations and page.total == 11
        assert (
            sum(r.ByteSize() + 6 for r in page.invocations) <= 5_000 or len(page.invocations) == 1
        )
        seen += [r.id for r in page.invocations]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert seen == newest_first
    assert pages > 11 * 500 // 5_000
    # A cap no record fits under still lists one at a time.
    one = admin_query.list_invocations(cast(Partition, store), index, Request(limit=5), cap=10)
    assert [r.id for r in one.invocations] == newest_first[:1] and one.next_page_token


def test_without_results_a_page_holds_records_whose_results_would_not_fit() -> None:
    # What the console asks for: the values go, a failure's code and message stay, and
    # the page is no longer cut by the results' bytes. The stored records keep theirs.
    records = [_record(n, Status.COMPLETED if n % 3 else Status.SUSPENDED) for n in range(11)]
    completed = [r for r in records if r.status == Status.COMPLETED]
    for record in completed[1:]:
        record.result.value = b"r" * 4_000
    completed[0].result.failure.code = 9
    completed[0].result.failure.message = "declined"
    store = _Store(completed, [r for r in records if r.status != Status.COMPLETED])
    index = admin_query.CompletedIndex(cast(Partition, store))
    asyncio.run(index.build())
    request = Request(limit=1000, without_results=True)
    page = admin_query.list_invocations(cast(Partition, store), index, request, cap=5_000)
    assert len(page.invocations) == 11 and not page.next_page_token
    listed = {r.id: r for r in page.invocations}
    assert all(not listed[r.id].result.HasField("value") for r in completed[1:])
    assert listed[completed[0].id].result.failure.message == "declined"
    assert invocations.get(store.kv, completed[1].id).result.value == b"r" * 4_000  # type: ignore[union-attr]
    with_results = admin_query.list_invocations(
        cast(Partition, store), index, Request(limit=1000), cap=5_000
    )
    assert len(with_results.invocations) < 11 and with_results.next_page_token
