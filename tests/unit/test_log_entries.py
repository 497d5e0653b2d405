"""Which writes a follower applies for each message of a partition's log
(`tail.entry_writes`, `tail.Parts`): a leader's entries, its markers, batches in parts,
and messages no broker wrote."""

from __future__ import annotations

import logging

import pytest

from broker.replication import codec
from broker.replication.log import APPEND_ID_HEADER, MARKER_HEADER, PART_HEADER, pieces
from broker.replication.tail import Parts, entry_writes

WRITES: list[codec.Write] = [(b"inv/1", b"record"), (b"gone", None)]
BROKER_ID = {APPEND_ID_HEADER: "0123456789abcdef0123456789abcdef-7"}
JUNK = b"hello"


def test_a_leaders_entry_gives_its_writes() -> None:
    assert entry_writes(0, 5, codec.encode(WRITES), BROKER_ID) == WRITES


def test_a_marker_gives_no_writes() -> None:
    assert entry_writes(0, 5, b"", {MARKER_HEADER: "node1", **BROKER_ID}) == []


@pytest.mark.parametrize(
    "headers",
    [None, {}, {APPEND_ID_HEADER: "my-tool-1"}, {APPEND_ID_HEADER: "0123-7"}],
    ids=["no-headers", "empty", "foreign-id", "short-id"],
)
@pytest.mark.parametrize("data", [JUNK, codec.encode(WRITES), b""], ids=["junk", "entry", "empty"])
def test_a_message_no_broker_wrote_is_skipped_loudly(
    headers: dict[str, str] | None, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # Even bytes that decode: applying them would let any NATS client write the journal.
    with caplog.at_level(logging.ERROR, logger="broker.replication"):
        assert entry_writes(3, 9, data, headers) == []
    assert "partition 3: entry 9 of the log was not appended by a broker" in caplog.text


def test_a_marker_no_broker_wrote_is_skipped_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="broker.replication"):
        assert entry_writes(3, 9, b"", {MARKER_HEADER: "node1"}) == []
    assert "not appended by a broker" in caplog.text


def test_a_damaged_entry_of_a_leader_stops_the_follower() -> None:
    # Passing over it would drop writes a leader acknowledged.
    with pytest.raises(codec.CorruptEntry, match="partition 3: entry 9, appended by a leader"):
        entry_writes(3, 9, JUNK, BROKER_ID)


# ---- Batches larger than an entry, in parts


def _part(k: int, n: int) -> dict[str, str]:
    return {**BROKER_ID, PART_HEADER: f"{k}/{n}"}


def test_pieces_cut_data_at_the_limit_and_keep_a_small_entry_whole() -> None:
    assert pieces(b"abcdefg", 3) == [b"abc", b"def", b"g"]
    assert pieces(b"abc", 3) == [b"abc"]
    assert pieces(b"", 3) == [b""]


def test_a_batch_in_parts_is_applied_whole_at_its_last_part() -> None:
    data = codec.encode(WRITES)
    parts = Parts(0)
    cut = pieces(data, 4)
    seen = [parts.writes(10 + k, piece, _part(k, len(cut))) for k, piece in enumerate(cut, 1)]
    assert seen[:-1] == [None] * (len(cut) - 1)
    assert seen[-1] == WRITES
    assert not parts.holding


def test_parts_cut_short_by_a_new_leaders_marker_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The leader stopped between two parts: it never acknowledged the batch.
    parts = Parts(2)
    assert parts.writes(5, b"half", _part(1, 2)) is None
    with caplog.at_level(logging.WARNING, logger="broker.replication"):
        assert parts.writes(6, b"", {MARKER_HEADER: "node2", **BROKER_ID}) == []
    assert "partition 2: 1 part(s) of a batch before entry 6 are dropped" in caplog.text
    assert not parts.holding
    assert parts.writes(7, codec.encode(WRITES), BROKER_ID) == WRITES


def test_a_message_no_broker_wrote_between_parts_leaves_them_held() -> None:
    # It fences the leader, which then never appends the last part; the next leader's
    # marker drops what is held.
    data = codec.encode(WRITES)
    parts = Parts(0)
    assert parts.writes(1, data[:5], _part(1, 2)) is None
    assert parts.writes(2, b"junk", None) == []
    assert parts.holding
    assert parts.writes(3, data[5:], _part(2, 2)) == WRITES


@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("2/2", "part 2/2 of a batch but 0 of 0"),
        ("x/2", "bad Durable-Part"),
        ("3/2", "bad"),
        ("1/²", "bad Durable-Part"),  # str.isdigit's, not int()'s
    ],
)
def test_parts_out_of_order_or_malformed_stop_the_follower(header: str, says: str) -> None:
    with pytest.raises(codec.CorruptEntry, match=says):
        Parts(0).writes(4, b"data", {**BROKER_ID, PART_HEADER: header})
