"""`rendering.fill` pages a journal under the admin API's size cap, and `brokerctl`'s
`_cli_journal.whole` puts the pages back together."""

from __future__ import annotations

import random
from typing import Any

import pytest
from durable.v1 import admin_pb2, invocation_pb2, journal_pb2

from broker import _cli_journal, rendering

FRAMING = 64 * 1024
LIMIT = FRAMING + 20_000  # 20,000 bytes of answer per page

KINDS = [admin_pb2.DescribeInvocationResponse, admin_pb2.ExportInvocationResponse]


def _journal(sizes: list[int]) -> list[journal_pb2.JournalEntry]:
    out = [journal_pb2.JournalEntry(input=journal_pb2.InputCommand(request=b"i" * sizes[0]))]
    for n, size in enumerate(sizes[1:-1], 1):
        out.append(
            journal_pb2.JournalEntry(
                run=journal_pb2.RunCommand(name=f"step{n}"),
                result=journal_pb2.Result(value=b"r" * size),
            )
        )
    out.append(
        journal_pb2.JournalEntry(
            output=journal_pb2.OutputCommand(), result=journal_pb2.Result(value=b"o" * sizes[-1])
        )
    )
    return out


def _renderings(
    journal: list[journal_pb2.JournalEntry], size: int
) -> list[admin_pb2.RenderedEntry]:
    return [admin_pb2.RenderedEntry(result_json=f"{i}:" + "j" * size) for i in range(len(journal))]


def _record(result: bytes) -> invocation_pb2.Invocation:
    return invocation_pb2.Invocation(id="inv_1", result=journal_pb2.Result(value=result))


def _page(
    kind: type[rendering.Answer],
    record: invocation_pb2.Invocation,
    journal: list[journal_pb2.JournalEntry],
    rendered: list[admin_pb2.RenderedEntry],
    first: int,
    max_entries: int,
) -> rendering.Answer:
    """What the servicers do for a paged request."""
    entries = journal[first : first + max_entries]
    answer = kind(invocation=record)
    if isinstance(answer, admin_pb2.DescribeInvocationResponse):
        answer.result_json = "result as json"
    reason = rendering.fill(
        answer, entries, rendered[first : first + max_entries], first, len(journal), LIMIT
    )
    assert reason is None
    return answer


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("max_entries", [1, 3, 1000])
def test_pages_hold_every_entry_once_in_order_each_under_the_cap(
    kind: type[rendering.Answer], max_entries: int
) -> None:
    sizes = [random.Random(seed).randrange(10, 6_000) for seed in range(40)]
    journal = _journal(sizes)
    rendered = _renderings(journal, 500)
    got: list[journal_pb2.JournalEntry] = []
    got_rendered: list[admin_pb2.RenderedEntry] = []
    first, pages = 0, 0
    while True:
        page = _page(kind, _record(b"small"), journal, rendered, first, max_entries)
        pages += 1
        assert page.ByteSize() <= LIMIT - FRAMING
        assert 1 <= len(page.journal) <= max_entries
        assert len(page.rendered) == len(page.journal)
        assert page.journal_length == len(journal)
        assert not page.result_omitted and page.invocation.result.value == b"small"
        got.extend(page.journal)
        got_rendered.extend(page.rendered)
        if not page.next_entry:
            break
        assert page.next_entry == first + len(page.journal)
        first = page.next_entry
    assert got == journal
    assert got_rendered == rendered
    assert pages >= len(journal) // max_entries


@pytest.mark.parametrize("kind", KINDS)
def test_an_entry_too_big_with_its_rendering_comes_alone_without_it(
    kind: type[rendering.Answer],
) -> None:
    journal = _journal([100, 12_000, 100])
    rendered = _renderings(journal, 12_000)
    first = _page(kind, _record(b""), journal, rendered, 0, 10)
    # The input with its rendering fits; the big entry with its rendering would not.
    assert len(first.journal) == 1 and first.next_entry == 1
    assert not first.rendering_omitted
    second = _page(kind, _record(b""), journal, rendered, 1, 10)
    assert list(second.journal) == journal[1:2]
    assert second.rendering_omitted and second.rendered[0] == admin_pb2.RenderedEntry()
    assert second.next_entry == 2
    third = _page(kind, _record(b""), journal, rendered, 2, 10)
    assert list(third.rendered) == rendered[2:] and not third.rendering_omitted
    assert third.next_entry == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_result_that_leaves_no_room_for_an_entry_is_left_out_and_said_so(
    kind: type[rendering.Answer],
) -> None:
    journal = _journal([100, 15_000])  # the output holds the result
    rendered = _renderings(journal, 10)
    page = _page(kind, _record(b"o" * 15_000), journal, rendered, 1, 10)
    assert page.result_omitted
    assert not page.invocation.HasField("result") and page.invocation.id == "inv_1"
    if isinstance(page, admin_pb2.DescribeInvocationResponse):
        assert not page.result_json
    assert list(page.journal) == journal[1:]
    # Where it fits, it stays.
    assert not _page(kind, _record(b"o" * 15_000), journal, rendered, 0, 1).result_omitted


def test_an_entry_over_the_cap_alone_is_refused_naming_it() -> None:
    journal = _journal([100, 30_000, 100])
    answer = admin_pb2.DescribeInvocationResponse(invocation=_record(b""))
    reason = rendering.fill(answer, journal[1:], _renderings(journal, 1)[1:], 1, 3, LIMIT)
    assert reason is not None
    assert reason.startswith("entry 1 of invocation inv_1's journal takes 0.0 MiB, over the ")


@pytest.mark.parametrize(
    ("first", "length", "says"),
    [(0, 1, None), (4, 5, None), (5, 5, "5 entries (0 to 4)"), (1, 1, "1 entry (0 to 0)")],
)
def test_a_first_entry_past_the_end_is_refused(first: int, length: int, says: str | None) -> None:
    reason = rendering.first_entry_error("inv_1", first, length)
    if says is None:
        assert reason is None
    else:
        past = f"first_entry {first} is past its end"
        assert reason == f"invocation inv_1's journal has {says}: {past}"


@pytest.mark.parametrize("kind", KINDS)
def test_brokerctl_reads_every_page_into_one_answer_with_the_result_back(
    kind: type[rendering.Answer],
) -> None:
    # The first page cannot hold the record's result with the input: it is left out.
    sizes = [6_000] + [5_000] * 12 + [15_000]
    journal = _journal(sizes)
    rendered = _renderings(journal, 300)
    record = _record(b"o" * 15_000)
    asked: list[tuple[int, int]] = []

    def call(request: Any) -> Any:  # either request type, with its answer type
        asked.append((request.first_entry, request.max_entries))
        return _page(kind, record, journal, rendered, request.first_entry, request.max_entries)

    request: Any = (
        admin_pb2.DescribeInvocationRequest(invocation_id="inv_1")
        if kind is admin_pb2.DescribeInvocationResponse
        else admin_pb2.ExportInvocationRequest(invocation_id="inv_1")
    )
    whole = _cli_journal.whole(call, request)
    assert list(whole.journal) == journal
    assert list(whole.rendered) == rendered
    assert whole.invocation.result.value == b"o" * 15_000 and not whole.result_omitted
    if isinstance(whole, admin_pb2.DescribeInvocationResponse):
        assert whole.result_json == rendered[-1].result_json
    assert whole.next_entry == 0
    assert len(asked) > 3 and all(m == _cli_journal.PAGE_ENTRIES for _, m in asked)
    assert _page(kind, record, journal, rendered, 0, 1).result_omitted  # as the test meant


def test_brokerctl_stops_at_a_page_that_does_not_move_on() -> None:
    def call(request: admin_pb2.DescribeInvocationRequest) -> admin_pb2.DescribeInvocationResponse:
        return admin_pb2.DescribeInvocationResponse(
            journal=_journal([1, 1]), next_entry=max(request.first_entry, 1), journal_length=9
        )

    with pytest.raises(_cli_journal.BadPage, match="from entry 1 says the next starts at 1"):
        _cli_journal.whole(call, admin_pb2.DescribeInvocationRequest(invocation_id="inv_1"))


def test_brokerctl_stops_at_a_page_that_points_past_the_journal() -> None:
    def call(request: admin_pb2.DescribeInvocationRequest) -> admin_pb2.DescribeInvocationResponse:
        return admin_pb2.DescribeInvocationResponse(
            journal=_journal([1, 1]), next_entry=request.first_entry + 2, journal_length=4
        )

    with pytest.raises(_cli_journal.BadPage, match="from entry 2 says the next starts at 4"):
        _cli_journal.whole(call, admin_pb2.DescribeInvocationRequest(invocation_id="inv_1"))


def _growing(lengths: list[int], finished: int) -> Any:
    """A broker's answers for a journal that holds `lengths[n]` entries when page n is
    read; the invocation ends (its output the last entry) once it holds `finished`."""
    journal = _journal([10] * finished)
    running = invocation_pb2.Invocation(id="inv_1", status=invocation_pb2.RUNNING)
    done = invocation_pb2.Invocation(
        id="inv_1", status=invocation_pb2.COMPLETED, result=journal[-1].result
    )
    reads: list[int] = []

    def call(request: admin_pb2.DescribeInvocationRequest) -> admin_pb2.DescribeInvocationResponse:
        now = journal[: lengths[len(reads)]]
        reads.append(request.first_entry)
        page = admin_pb2.DescribeInvocationResponse(
            invocation=done if len(now) == finished else running,
            result_json="the result" if len(now) == finished else "",
            journal=now[request.first_entry : request.first_entry + request.max_entries],
            journal_length=len(now),
        )
        end = request.first_entry + len(page.journal)
        page.next_entry = end if end < len(now) else 0
        return page

    return call, journal, reads


def test_brokerctl_reads_a_journal_that_grows_between_pages() -> None:
    # 1,502 entries at the first page; past 3,000 by the second (an attack found
    # brokerctl checking later pages against the first page's length).
    call, journal, reads = _growing([1_502, 3_003, 3_500, 3_500], finished=4_000)
    whole = _cli_journal.whole(call, admin_pb2.DescribeInvocationRequest(invocation_id="inv_1"))
    assert reads == [0, 1_000, 2_000, 3_000]
    assert list(whole.journal) == journal[:3_500]
    assert whole.journal_length == 3_500 and whole.next_entry == 0
    assert whole.invocation.status == invocation_pb2.RUNNING


def test_brokerctl_shows_the_record_of_its_last_page_when_the_invocation_ends_meanwhile() -> None:
    call, journal, _ = _growing([1_502, 1_603], finished=1_603)
    whole = _cli_journal.whole(call, admin_pb2.DescribeInvocationRequest(invocation_id="inv_1"))
    assert list(whole.journal) == journal and whole.journal[-1].HasField("output")
    assert whole.invocation.status == invocation_pb2.COMPLETED
    assert whole.invocation.result == journal[-1].result and whole.result_json == "the result"
    assert whole.journal_length == 1_603


def test_the_results_rendering_goes_before_the_result() -> None:
    journal = _journal([100, 8_000])
    answer = admin_pb2.DescribeInvocationResponse(
        invocation=_record(b"o" * 8_000), result_json="j" * 12_000
    )
    # Record, rendering and input fit nowhere together; record and input do.
    assert rendering.fill(answer, journal[:1], _renderings(journal, 10)[:1], 0, 2, LIMIT) is None
    assert answer.rendering_omitted and not answer.result_json
    assert not answer.result_omitted and answer.invocation.result.value == b"o" * 8_000
    assert len(answer.journal) == 1


def test_a_result_that_would_not_make_room_stays() -> None:
    # A killed invocation: its failure is in no output entry, and is small.
    journal = _journal([100, 19_000, 100])
    killed = invocation_pb2.Invocation(
        id="inv_1", result=journal_pb2.Result(failure=journal_pb2.Failure(code=10, message="k"))
    )
    answer = admin_pb2.DescribeInvocationResponse(invocation=killed)
    rendered = _renderings(journal, 2_000)
    assert rendering.fill(answer, journal[1:], rendered[1:], 1, 3, LIMIT) is None
    assert not answer.result_omitted and answer.invocation.result.failure.message == "k"
    assert answer.rendering_omitted and list(answer.journal) == journal[1:2]
