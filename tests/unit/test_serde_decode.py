"""`durable._serde.decode`: journaled JSON bytes back to values, whatever encoding JSON allows."""

from __future__ import annotations

import pytest
from durable import TerminalError, _serde


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"41", 41),
        ('{"name": "Zoë", "seats": [1, 2]}'.encode(), {"name": "Zoë", "seats": [1, 2]}),
        # JSON's other encodings (RFC 8259 allowed them once; json.loads detects them).
        ('"Zoë"'.encode("utf-16"), "Zoë"),
        ('["Zoë"]'.encode("utf-32"), ["Zoë"]),
    ],
)
def test_decodes_json_in_any_of_its_encodings(raw: bytes, value: object) -> None:
    assert _serde.decode(raw, None, "state value 'x'") == value


@pytest.mark.parametrize("raw", [b"\xff\xfe\xfd", b"not json", b'{"open": ', b""])
def test_bytes_that_are_not_json_are_a_terminal_error_naming_the_value(raw: bytes) -> None:
    with pytest.raises(TerminalError, match="state value 'cart' is not JSON"):
        _serde.decode(raw, None, "state value 'cart'")
