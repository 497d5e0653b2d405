"""Which writes a follower applies for each message of a partition's log
(`tail.entry_writes`): a leader's entries, its markers, and messages no broker wrote."""

from __future__ import annotations

import logging

import pytest

from broker.replication import codec
from broker.replication.log import APPEND_ID_HEADER, MARKER_HEADER
from broker.replication.tail import entry_writes

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
