"""An ingress call's `traceparent` is kept only when it is one (W3C trace context): with
tracing off an attack's 7,000-byte value, and one of markup, were stored on the record,
listed by ListInvocations and passed to every endpoint."""

from __future__ import annotations

import pytest

from broker.tracing import ingress, valid_traceparent

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_traceparent_is_kept() -> None:
    assert valid_traceparent(GOOD) == GOOD
    with ingress("s.S", "M", GOOD) as continued:
        assert continued == GOOD  # tracing is off in unit tests


def test_of_a_later_version_only_the_known_fields_are_kept() -> None:
    # A second attack stored 7,000 bytes of markup after a version 01 header.
    later = "01" + GOOD[2:]
    assert valid_traceparent(later + "-" + "<script>" * 900) == later


@pytest.mark.parametrize(
    "value",
    [
        "x" * 7000,
        "00-<b>zz</b>-../../x-01",
        GOOD.upper(),
        GOOD + "-extra",  # version 00 has exactly four fields
        "ff" + GOOD[2:],
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        GOOD + "\n",
        "",
    ],
)
def test_anything_else_is_dropped(value: str) -> None:
    assert valid_traceparent(value) == ""
    with ingress("s.S", "M", value) as continued:
        assert continued == ""
