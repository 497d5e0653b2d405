"""Decoding journaled values: what cannot be read fails terminally, never retried."""

from __future__ import annotations

import grpc
import pytest
from durable import TerminalError
from durable._serde import decode
from playground import playground_pb2 as pg


def test_json_is_decoded() -> None:
    assert decode(b'{"a": [1, "x"]}', None, "state value 'v'") == {"a": [1, "x"]}


def test_bytes_that_are_not_json_are_a_terminal_error() -> None:
    with pytest.raises(TerminalError) as failed:
        decode(b"\\xff not json", None, "state value 'v'")
    assert failed.value.code == grpc.StatusCode.INTERNAL.value[0]
    assert "state value 'v' is not JSON" in str(failed.value)


def test_json_that_is_not_the_message_type_is_a_terminal_error() -> None:
    with pytest.raises(TerminalError) as failed:
        decode(b'"text"', pg.Reply, "state value 'v'")
    assert "state value 'v' is not a playground.Reply" in str(failed.value)
