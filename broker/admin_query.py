"""The admin API's read side for listings that must stay fast with many invocations
retained: an in-memory index of completed invocations, and the queries over it.

Completed invocations live only in the invocations table, keyed by a random id, so
listing them newest first (or counting them by outcome) would read and parse every
record: seconds at 100,000. The index keeps a small row per completed invocation,
sorted by creation time; it is built once after a start (in slices, so the broker
keeps serving) and kept current by the partition's completion listener. A page then
reads only its own records. Until the index is built, a listing waits for it a few
seconds (`INDEX_WAIT_S`), then lists live invocations only and says it is partial: a
scan of the table instead held the event loop for seconds per call with a few hundred
thousand retained, and the console polls.

The index holds the newest `--admin-index-rows` completed invocations (by creation
time), about 250 bytes each: a broker retaining a day of a thousand calls a second
would otherwise hold tens of gigabytes of rows. Past that bound the oldest rows are
dropped, and the answers say so (`ListInvocationsResponse.partial`, `GetStats`'s
`complete`); the dropped invocations stay retained and can be described by id.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import heapq
import itertools
import logging
import operator
import sys
from collections.abc import Iterator, Sequence

from durable.v1 import admin_pb2, invocation_pb2
from google.protobuf.message import Message

from . import admin_paging
from .config import ADMIN_ANSWER_BYTES, ADMIN_INDEX_ROWS, MAX_SEND_BYTES
from .core.model import Live, UnknownInvocation, now_ms
from .core.partition import Partition
from .storage import invocations, promises

log = logging.getLogger("broker.admin")

Invocation = invocation_pb2.Invocation
Status = invocation_pb2.InvocationStatus
# Invocations a key's description lists of its inbox: a busy key's queue has no bound.
INBOX_SHOWN = admin_paging.MAX_LIST_LIMIT
_SLICE = 2000
# How long a listing waits for the index after a start before it answers without it.
INDEX_WAIT_S = 5.0
# Journals ListAwaiting reads between two yields to the event loop (a few milliseconds
# when they come from storage).
_JOURNAL_SLICE = 500
_PRUNE_EVERY_MS = 5000
# Not started yet, or ended: nothing of theirs is listed as awaited.
_NOTHING_PENDING = (Status.PENDING, Status.COMPLETED)
# Those whose pending get_promise entries are listed as awaiting their promise.
_AWAITING_PROMISES = (Status.SUSPENDED, Status.RUNNING)

# (created_at_ms, id, service, method, key, idempotency_key, failure code (0 =
# succeeded), expires_at_ms): sorted by the first two.
Row = tuple[int, str, str, str, str, str, int, int]


def _row(record: Invocation) -> Row:
    code = 0
    if record.result.HasField("failure"):
        code = record.result.failure.code or 2  # a failure without a code is UNKNOWN
    # Every retained completed invocation has a row, so a row's size is paid millions of
    # times over: names that repeat from row to row (services, methods, object keys)
    # are shared instead of copied (421 bytes a keyed row before, 252 after).
    return (
        record.created_at_ms,
        record.id,
        sys.intern(record.service),
        sys.intern(record.method),
        sys.intern(record.key),
        record.idempotency_key,
        code,
        record.expires_at_ms,
    )


class CompletedIndex:
    """Rows of the newest `max_rows` retained completed invocations, oldest created
    first, with their counts by outcome kept as rows come and go.

    Once it has dropped rows it holds exactly the completed invocations created after
    the newest one it dropped: one created before that which completes later is left
    out too, so that a listing has no gap.

    Attributes:
        truncated: Rows were dropped past `max_rows`: older completed invocations are
            retained but neither listed nor counted.
    """

    def __init__(self, partition: Partition, max_rows: int = ADMIN_INDEX_ROWS) -> None:
        self._p = partition
        self._max = max(1, max_rows)
        self._rows: list[Row] = []
        self.ready = False
        self._built = asyncio.Event()
        self.truncated = False
        # (created_at_ms, id) of the newest row dropped: rows up to it are left out.
        self._floor: tuple[int, str] | None = None
        self._early: list[Row] = []
        self.by_code: collections.Counter[int] = collections.Counter()
        self._pruned_at = 0
        # Purged while the index was being built (a slice read before may hold them).
        self._purged: set[str] = set()
        partition.completion_listeners.append(self._completed)

    def _completed(self, record: Invocation) -> None:
        row = _row(record)
        if self.ready:
            if self._floor is not None and row[:2] <= self._floor:
                return
            bisect.insort(self._rows, row)
            self.by_code[row[6]] += 1
            if len(self._rows) > self._max:
                self._drop_oldest()
        else:
            self._early.append(row)

    def _drop_oldest(self) -> None:
        """Cuts the rows to the bound less a sixteenth: one row at a time would move the
        whole list at every completion."""
        keep = self._max - self._max // 16
        dropped, self._rows = self._rows[:-keep], self._rows[-keep:]
        self.by_code.subtract(r[6] for r in dropped)
        self.by_code = +self.by_code  # no outcome left at zero
        self._drop_up_to(dropped[-1][:2])

    def _drop_up_to(self, key: tuple[int, str]) -> None:
        if self._floor is None or key > self._floor:
            self._floor = key
        self.truncated = True

    async def build(self) -> None:
        """Reads the table once, a slice at a time (the loop serves calls between),
        keeping the newest `max_rows`."""
        newest: list[Row] = []  # a heap: its smallest (oldest) row goes first
        seen = 0
        scan = invocations.scan(self._p.kv)
        while True:
            chunk = list(itertools.islice(scan, _SLICE))
            for r in chunk:
                if r.status != Status.COMPLETED:
                    continue
                seen += 1
                key = (r.created_at_ms, r.id)
                if len(newest) < self._max:
                    heapq.heappush(newest, _row(r))
                elif key > newest[0][:2]:
                    self._drop_up_to(heapq.heapreplace(newest, _row(r))[:2])
                else:
                    self._drop_up_to(key)
            if len(chunk) < _SLICE:
                break
            await asyncio.sleep(0)
        ids = {r[1] for r in newest}
        floor = self._floor
        early = [r for r in self._early if r[1] not in ids and (floor is None or r[:2] > floor)]
        rows = sorted(r for r in (*newest, *early) if r[1] not in self._purged)
        self._rows, self._early, self._purged, self.ready = rows, [], set(), True
        self._built.set()
        self.by_code = collections.Counter(r[6] for r in rows)
        if len(self._rows) > self._max:
            self._drop_oldest()
        log.info("indexed %d completed invocation(s) for the admin API", len(self._rows))
        if self.truncated:
            log.info(
                "the admin API lists and counts the newest %d completed invocations "
                "(--admin-index-rows); %d older ones stay retained, reachable by id",
                len(self._rows),
                seen - len(newest),
            )

    def forget(self, invocation_id: str) -> None:
        """Drops a purged invocation's row now (a whole scan: purges are rare), so that it
        is no longer counted; rows past their retention go by themselves (`rows`)."""
        if not self.ready:
            self._purged.add(invocation_id)
            self._early = [r for r in self._early if r[1] != invocation_id]
            return
        kept = [r for r in self._rows if r[1] != invocation_id]
        if len(kept) != len(self._rows):
            self._rows = kept
            self.by_code = collections.Counter(r[6] for r in kept)

    async def wait_built(self, timeout: float = INDEX_WAIT_S) -> bool:
        """Waits up to `timeout` seconds for the index to be built; whether it is."""
        if not self.ready:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._built.wait(), timeout)
        return self.ready

    def rows(self) -> list[Row]:
        """Rows whose retention has not ended, oldest first (do not modify). Rows past
        their retention are dropped at most every few seconds: the broker purges their
        records on its own schedule, and a row a moment late does no harm (a purged
        record is skipped when a page is read)."""
        now = now_ms()
        if now - self._pruned_at > _PRUNE_EVERY_MS:
            self._pruned_at = now
            kept = [r for r in self._rows if r[7] > now]
            if len(kept) != len(self._rows):
                self._rows = kept
                self.by_code = collections.Counter(r[6] for r in kept)
        return self._rows


def list_invocations(
    p: Partition,
    index: CompletedIndex,
    request: admin_pb2.ListInvocationsRequest,
    cap: int = ADMIN_ANSWER_BYTES,
) -> admin_pb2.ListInvocationsResponse:
    """The page of invocations the request asks for, newest created first; shorter than
    its limit (with a token for the rest) where the records would pass `cap` bytes (a
    record holds its result, unless `without_results`: 20 of 4 MiB each fill an answer).

    Raises:
        admin_paging.PagingError: A page the listing refuses (checked before any work).
    """
    page = admin_paging.check(request)
    live: list[Live] = []
    if not request.outcome and request.status != Status.COMPLETED:
        # Every invocation that has not completed is live: this reads memory only, and
        # only the fields filtered on (50,000 live invocations: 2-5x faster than reading
        # whole records, which stalled the loop for 120-200 ms per listing).
        live = _filter_live(p.listed(), request)
    rows: list[Row] = []
    lists_completed = bool(request.outcome) or request.status in (0, Status.COMPLETED)
    if lists_completed and index.ready:
        rows = _filter_rows(index.rows(), request)
    total = len(live) + len(rows)
    if page.after is not None:
        after = page.after
        live = [r for r in live if r.order < after]
        rows = rows[: bisect.bisect_left(rows, after, key=_key)]
    remaining = len(live) + len(rows)
    # Live ones are mostly in creation order already, which the sort's runs exploit.
    live.sort(key=_LIVE_KEY, reverse=True)
    items = _page(live, rows, page.offset, page.limit)
    out = admin_pb2.ListInvocationsResponse(
        total=total, partial=lists_completed and (index.truncated or not index.ready)
    )
    records = [
        p.live_record(item.id) if isinstance(item, Live) else invocations.get(p.kv, item[1])
        for item in items
    ]
    if request.without_results:
        # The stored records were read afresh above; a live one's is shared, for
        # reading only, and holds no result anyway.
        for item, r in zip(items, records, strict=True):
            if r is not None and not isinstance(item, Live) and r.result.HasField("value"):
                r.result.ClearField("value")
    # None: purged since the index was read (the token still goes on past it).
    taken = admin_paging.fitting([r.ByteSize() if r is not None else 0 for r in records], cap)
    out.invocations.extend(r for r in records[:taken] if r is not None)
    out.next_page_token = _next_token(items[:taken], remaining, page)
    return out


def _filter_live(lives: list[Live], request: admin_pb2.ListInvocationsRequest) -> list[Live]:
    """The live invocations that match, in no order: one comprehension per filter given,
    as `_filter_rows` does."""
    if request.status:
        lives = [r for r in lives if r.listed.status == request.status]
    for name in ("service", "method", "key", "idempotency_key"):
        value = getattr(request, name)
        if value:
            lives = [r for r in lives if getattr(r.listed, name) == value]
    after, before = request.created_after_ms, request.created_before_ms
    if after:
        lives = [r for r in lives if r.order[0] >= after]
    if before:
        lives = [r for r in lives if r.order[0] < before]
    return lives


_LIVE_KEY = operator.attrgetter("order")


def _key(item: Invocation | Live | Row) -> admin_paging.Key:
    if isinstance(item, Live):
        return item.order
    if isinstance(item, Invocation):
        return (item.created_at_ms, item.id)
    return (item[0], item[1])


def _next_token(
    items: Sequence[Invocation | Live | Row], remaining: int, page: admin_paging.Page
) -> str:
    """The token of the page after `items` (taken from `remaining` matches), empty when
    none follows. It names the last item even when its record was purged meanwhile, so
    that the walk goes on past it."""
    if items and remaining > page.offset + len(items):
        return admin_paging.encode_token(_key(items[-1]))
    return ""


def _filter_rows(rows: list[Row], request: admin_pb2.ListInvocationsRequest) -> list[Row]:
    """The rows that match, oldest first. One pass per filter given, each a plain
    comprehension over tuples: about a millisecond per 100,000 rows (a predicate
    reading the request per row took a second)."""
    service, method, key = request.service, request.method, request.key
    idem, code, outcome = request.idempotency_key, request.failure_code, request.outcome
    after, before = request.created_after_ms, request.created_before_ms
    if after or before:  # rows are sorted by creation time: cut, do not scan
        lo = bisect.bisect_left(rows, (after,)) if after else 0
        hi = bisect.bisect_left(rows, (before,)) if before else len(rows)
        rows = rows[lo:hi]
    if idem:
        rows = [r for r in rows if r[5] == idem]
    if key:
        rows = [r for r in rows if r[4] == key]
    if service:
        rows = [r for r in rows if r[2] == service]
    if method:
        rows = [r for r in rows if r[3] == method]
    if outcome == admin_pb2.OUTCOME_SUCCEEDED:
        rows = [r for r in rows if r[6] == 0]
    elif outcome == admin_pb2.OUTCOME_FAILED:
        rows = [r for r in rows if r[6] == code] if code else [r for r in rows if r[6]]
    return rows


def _merge(live: list[Live], rows: list[Row]) -> Iterator[Live | Row]:
    """Live invocations (newest first) and rows (oldest first) as one list, newest first."""
    i, j = 0, len(rows) - 1
    while i < len(live) or j >= 0:
        if j < 0 or (i < len(live) and live[i].order > (rows[j][0], rows[j][1])):
            yield live[i]
            i += 1
        else:
            yield rows[j]
            j -= 1


def _page(live: list[Live], rows: list[Row], offset: int, limit: int) -> list[Live | Row]:
    """Items offset..offset+limit of the merged list, without walking the rows before
    them when nothing live is listed (the usual case for deep pages)."""
    if not live:
        end = len(rows) - offset
        return list(reversed(rows[max(0, end - limit) : max(0, end)]))
    return list(itertools.islice(_merge(live, rows), offset, offset + limit))


def stats(p: Partition, index: CompletedIndex) -> admin_pb2.GetStatsResponse:
    """Counts by status and outcome, and the event counters."""
    out = admin_pb2.GetStatsResponse(at_ms=now_ms(), complete=index.ready and not index.truncated)
    # Counted by number, named once each: naming 50,000 took the loop 60 ms.
    for status, n in collections.Counter(r.listed.status for r in p.listed()).items():
        out.by_status[Status.Name(status)] = n
    if index.ready:
        rows = index.rows()
        for code, n in index.by_code.items():
            if code:
                out.failed_by_code[code] = n
        out.succeeded = index.by_code[0]
        out.failed = len(rows) - out.succeeded
        out.by_status["COMPLETED"] = len(rows)
    counters: dict[str, dict[str, int]] = {}
    for event, counter in p.metrics.counters.items():
        for service, n in counter.items():
            counters.setdefault(service, {})[event] = n
    for service in sorted(counters):
        out.counters.add(service=service, events=counters[service])
    return out


def _pending_promises(p: Partition, service: str = "", key: str = "") -> list[admin_pb2.Promise]:
    """Promises awaited by live invocations (of one workflow key, if given)."""
    waiting: dict[tuple[str, str, str], list[str]] = {}
    lives = [
        live
        for live in p.listed()
        if live.listed.status in _AWAITING_PROMISES
        and (not service or live.listed.service == service)
        and (not key or live.listed.key == key)
    ]
    for live in sorted(lives, key=_LIVE_KEY):
        record, journal = p.record(live.id)
        for entry in journal:
            if entry.HasField("get_promise") and not entry.HasField("result"):
                ident = (record.service, record.key, entry.get_promise.name)
                waiting.setdefault(ident, []).append(record.id)
    out = []
    for (s, k, name), ids in sorted(waiting.items()):
        promise = admin_pb2.Promise(service=s, key=k, name=name, waiting=ids)
        done = p.waits.promise(s, k, name)
        if done is not None:
            promise.result.CopyFrom(done)
        out.append(promise)
    return out


class TooBig(Exception):
    """An answer over the admin API's message cap, with the sentence that says so."""


def check_fits(answer: Message, what: str, cap: int = ADMIN_ANSWER_BYTES) -> None:
    """Raises `TooBig` when `answer` (about `what`) is over `cap` bytes: gRPC would
    refuse to send it with a message about its transport, not about the answer."""
    size = answer.ByteSize()
    if size > cap:
        raise TooBig(
            f"{what} take {size / 2**20:.1f} MiB, over the {MAX_SEND_BYTES / 2**20:g} MiB "
            "an admin answer can carry"
        )


def describe_key(
    p: Partition, service: str, key: str, cap: int = ADMIN_ANSWER_BYTES
) -> admin_pb2.DescribeKeyResponse:
    """A keyed service's key: state, holder, inbox (its first `INBOX_SHOWN`) and
    promises.

    Raises:
        TooBig: its state values and promises' results are over `cap` bytes together.
    """
    inbox = p.inbox(service, key)
    out = admin_pb2.DescribeKeyResponse(
        service=service,
        key=key,
        state=p.current_state(service, key),
        holder=p.lock_holder(service, key) or "",
        inbox=inbox[:INBOX_SHOWN],
        inbox_length=len(inbox),
    )
    pending = {pr.name: pr for pr in _pending_promises(p, service, key)}
    for name, result in promises.scan(p.kv, service, key):
        promise = pending.pop(name, None) or admin_pb2.Promise(service=service, key=key, name=name)
        promise.result.CopyFrom(result)
        out.promises.append(promise)
    out.promises.extend(pending.values())
    check_fits(out, f"{service} key {key!r}'s state values and promises", cap)
    return out


async def awaiting(p: Partition, limit: int) -> admin_pb2.ListAwaitingResponse:
    """Pending awakeables (oldest invocation first, then by entry) and awaited promises
    (by service, key and name), at most `limit` of each (coerced as a page's limit),
    with how many there are of each.

    Only journals say what is pending, and a suspended invocation's journal is read
    back from storage: each journal is read once, and the loop serves other calls after
    every `_JOURNAL_SLICE` of them, so that 100,000 waiting invocations do not stall
    the broker for a second or more.
    """
    limit = admin_paging.coerce_limit(limit)
    out = admin_pb2.ListAwaitingResponse()
    candidates = sorted(
        (live for live in p.listed() if live.listed.status not in _NOTHING_PENDING),
        key=_LIVE_KEY,
    )
    # Promises awaited and not completed, with their waiters in invocation age order.
    waiting: dict[tuple[str, str, str], list[str]] = {}
    completed: set[tuple[str, str, str]] = set()
    for n, live in enumerate(candidates):
        if n and not n % _JOURNAL_SLICE:
            await asyncio.sleep(0)
        try:
            record, journal = p.record(live.id)
        except UnknownInvocation:  # purged after completing while the loop served others
            continue
        if record.status in _NOTHING_PENDING:  # it moved on meanwhile
            continue
        awaits_promises = record.status in _AWAITING_PROMISES
        for i, entry in enumerate(journal):
            if entry.HasField("result"):
                continue
            if entry.HasField("awakeable"):
                out.total_awakeables += 1
                if len(out.awakeables) < limit:
                    out.awakeables.add(
                        awakeable_id=entry.awakeable.awakeable_id,
                        invocation_id=record.id,
                        service=record.service,
                        method=record.method,
                        key=record.key,
                        entry_index=i,
                        created_at_ms=record.created_at_ms,
                    )
            elif awaits_promises and entry.HasField("get_promise"):
                ident = (record.service, record.key, entry.get_promise.name)
                if ident in completed:
                    continue
                if ident not in waiting and p.waits.promise(*ident) is not None:
                    # Completed, its result on the way to the waiters: not awaited.
                    completed.add(ident)
                    continue
                waiting.setdefault(ident, []).append(record.id)
    out.total_promises = len(waiting)
    for ident in sorted(waiting)[:limit]:
        out.promises.add(service=ident[0], key=ident[1], name=ident[2], waiting=waiting[ident])
    return out
