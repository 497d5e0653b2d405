"""`rendering.fit`: an admin answer over the size cap loses its JSON renderings first,
and is refused with a reason only when the journal alone is over it."""

from __future__ import annotations

import pytest
from durable.v1 import admin_pb2, invocation_pb2, journal_pb2

from broker import rendering

LIMIT = 200_000  # with rendering's 64 KiB of room for framing: 134,464 bytes of answer


def _answer(kind: type[rendering.Answer], payload: int, rendering_size: int) -> rendering.Answer:
    entry = journal_pb2.JournalEntry(
        output=journal_pb2.OutputCommand(), result=journal_pb2.Result(value=b"v" * payload)
    )
    answer = kind(
        invocation=invocation_pb2.Invocation(id="inv_1"),
        journal=[entry],
        rendered=[admin_pb2.RenderedEntry(result_json="j" * rendering_size)],
    )
    if isinstance(answer, admin_pb2.DescribeInvocationResponse):
        answer.result_json = "r" * rendering_size
    return answer


KINDS = [admin_pb2.DescribeInvocationResponse, admin_pb2.ExportInvocationResponse]


@pytest.mark.parametrize("kind", KINDS)
def test_an_answer_under_the_cap_is_left_whole(kind: type[rendering.Answer]) -> None:
    answer = _answer(kind, 50_000, 30_000)
    before = answer.SerializeToString()

    assert rendering.fit(answer, LIMIT) is None
    assert answer.SerializeToString() == before
    assert not answer.rendering_omitted


@pytest.mark.parametrize("kind", KINDS)
def test_renderings_go_first_and_the_answer_says_so(kind: type[rendering.Answer]) -> None:
    answer = _answer(kind, 100_000, 60_000)

    assert rendering.fit(answer, LIMIT) is None
    assert answer.rendering_omitted
    assert not answer.rendered
    if isinstance(answer, admin_pb2.DescribeInvocationResponse):
        assert not answer.result_json
    assert answer.journal[0].result.value == b"v" * 100_000, "the journal stays whole"
    assert answer.ByteSize() <= LIMIT


@pytest.mark.parametrize("kind", KINDS)
def test_a_journal_over_the_cap_alone_is_refused_with_its_size(
    kind: type[rendering.Answer],
) -> None:
    answer = _answer(kind, 150_000, 10)

    reason = rendering.fit(answer, LIMIT)

    assert reason is not None
    assert reason.startswith("invocation inv_1's journal (1 entry) takes 0.1 MiB, over the ")
    assert "an admin answer can carry" in reason
