"""What an endpoint sends is held to --max-payload-bytes, as callers' requests are: an
entry or a side effect's result over it ends the invocation (RESOURCE_EXHAUSTED)."""

from __future__ import annotations

import pytest
from durable.v1 import journal_pb2

from broker import codes
from broker.core import actions
from broker.core.attempts import ENTRY_HEADROOM
from broker.core.events import Proposed, RanResult
from broker.core.partition import Partition
from tests.unit.test_partition import (
    Entry,
    Result,
    Status,
    answers,
    commit,
    make_partition,
    of_type,
    output,
    propose,
    start_trip,
    stored,
)

LIMIT = 1000
OVER = b"x" * (LIMIT + ENTRY_HEADROOM + 1)


def test_an_output_at_the_limit_is_journaled() -> None:
    p = make_partition(max_payload_bytes=LIMIT)
    inv_id = start_trip(p)
    propose(p, inv_id, output(b"x" * LIMIT))
    assert [r.value for r in answers(commit(p), inv_id)] == [b"x" * LIMIT]


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        (output(OVER), "sent entry 1 (output) of"),
        (
            Entry(run=journal_pb2.RunCommand(name="pay"), result=Result(value=OVER)),
            "sent entry 1 (run) of",
        ),
    ],
    ids=["output", "run-with-its-result"],
)
def test_an_entry_over_the_limit_ends_the_invocation(entry: Entry, says: str) -> None:
    p = make_partition(max_payload_bytes=LIMIT)
    inv_id = start_trip(p)
    assert p.on_attempt(inv_id, 1, Proposed(1, entry)) is None
    _ends_over_the_limit(p, inv_id, says)


def test_a_run_result_over_the_limit_ends_the_invocation() -> None:
    p = make_partition(max_payload_bytes=LIMIT)
    inv_id = start_trip(p)
    propose(p, inv_id, Entry(run=journal_pb2.RunCommand(name="pay")))
    commit(p)
    assert p.on_attempt(inv_id, 1, RanResult(1, Result(value=OVER))) is None
    _ends_over_the_limit(p, inv_id, "sent the result of run entry 1 of")


def _ends_over_the_limit(p: Partition, inv_id: str, says: str) -> None:
    found = commit(p)
    assert of_type(found, actions.ScheduleRetry) == []  # terminal: a retry hits it again
    (answer,) = answers(found, inv_id)
    assert answer.failure.code == codes.RESOURCE_EXHAUSTED
    assert "payload limit reached: trips.Trips/Reserve " + says in answer.failure.message
    assert f"over the {LIMIT}-byte limit (--max-payload-bytes)" in answer.failure.message
    record = stored(p, inv_id)
    assert record.status == Status.COMPLETED and record.journal_length <= 2
