"""Unit tests of brokerctl's pure formatting helpers (no broker, no network)."""

from __future__ import annotations

import pytest
from durable.v1 import admin_pb2, invocation_pb2, journal_pb2

from broker import _cli_format as fmt

NOW_MS = 1_700_000_000_123  # 2023-11-14T22:13:20.123Z


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (invocation_pb2.PENDING, "pending"),
        (invocation_pb2.RUNNING, "running"),
        (invocation_pb2.SUSPENDED, "suspended"),
        (invocation_pb2.BACKING_OFF, "backing-off"),
        (invocation_pb2.COMPLETED, "completed"),
        (invocation_pb2.INVOCATION_STATUS_UNSPECIFIED, "unspecified"),
    ],
)
def test_status_name_is_lowercase_and_hyphenated(status: int, name: str) -> None:
    assert fmt.status_name(status) == name


def test_status_name_of_an_unknown_value_does_not_crash() -> None:
    assert fmt.status_name(99) == "unknown(99)"


def test_every_cli_status_choice_round_trips() -> None:
    for choice in fmt.STATUS_CHOICES:
        assert fmt.status_name(fmt.parse_status(choice)) == choice
    assert fmt.parse_status("backing-off") == invocation_pb2.BACKING_OFF


def test_code_name() -> None:
    assert fmt.code_name(0) == "OK"
    assert fmt.code_name(5) == "NOT_FOUND"
    assert fmt.code_name(9) == "FAILED_PRECONDITION"
    assert fmt.code_name(42) == "42"


def test_format_timestamp_is_iso_utc_and_unset_is_a_dash() -> None:
    assert fmt.format_timestamp(NOW_MS) == "2023-11-14T22:13:20.123Z"
    assert fmt.format_timestamp(0) == "-"


def test_format_bytes_text_hex_and_truncation() -> None:
    assert fmt.format_bytes(b"hello") == '"hello"'
    assert fmt.format_bytes(b"two\nlines") == '"two\\nlines"'
    assert fmt.format_bytes("café".encode()) == '"café"'
    assert fmt.format_bytes(b"") == '""'
    # A serialized protobuf starts with a field tag byte: not printable, so hex.
    assert fmt.format_bytes(b"\x0a\x02t1") == "0x0a027431"
    assert fmt.format_bytes(b"\xff\xfe") == "0xfffe"
    assert fmt.format_bytes(b"abcdefgh", limit=3) == '"abc"... (8 bytes)'
    assert fmt.format_bytes(b"\x00" * 8, limit=4) == "0x0000... (8 bytes)"


def test_format_result_cases() -> None:
    assert fmt.format_result(journal_pb2.Result(value=b"ok")) == 'value "ok"'
    failure = journal_pb2.Result(failure=journal_pb2.Failure(code=10, message="sold out"))
    assert fmt.format_result(failure) == "failure code ABORTED: sold out"
    assert fmt.format_result(journal_pb2.Result(empty=journal_pb2.Empty())) == "empty"
    assert fmt.format_result(journal_pb2.Result()) == "(unset)"


def test_format_table_aligns_columns() -> None:
    table = fmt.format_table(["ID", "STATUS"], [["inv_a", "running"], ["inv_long_id", "x"]])
    assert table.splitlines() == [
        "ID           STATUS",
        "inv_a        running",
        "inv_long_id  x",
    ]


def test_format_table_flattens_multiline_cells_and_pads_short_rows() -> None:
    table = fmt.format_table(["A", "B", "C"], [["one\ntwo", "b"], ["x", "y", "z"]])
    lines = table.splitlines()
    assert lines[1] == "one two  b"
    assert lines[2] == "x        y  z"
    # Each column starts at the same offset on every line.
    assert lines[0].index("B") == lines[1].index("b") == lines[2].index("y")


def test_format_services_marks_shared_handlers() -> None:
    resp = admin_pb2.ListServicesResponse(
        services=[
            admin_pb2.Service(
                name="flights.Flights",
                kind="virtual_object",
                deployment_id="dp_1",
                key_field="trip_id",
                handlers=[
                    admin_pb2.Handler(name="Reserve"),
                    admin_pb2.Handler(name="Get", shared=True),
                ],
            )
        ]
    )
    out = fmt.format_services(resp)
    assert "flights.Flights  virtual_object  trip_id" in out
    assert "Reserve, Get (shared)" in out


def test_empty_listings_say_so() -> None:
    assert (
        fmt.format_deployments(admin_pb2.ListDeploymentsResponse()) == "no deployments registered"
    )
    assert fmt.format_services(admin_pb2.ListServicesResponse()) == "no services registered"
    assert fmt.format_invocations(admin_pb2.ListInvocationsResponse()) == "no invocations found"


def test_format_invocations_row() -> None:
    resp = admin_pb2.ListInvocationsResponse(
        invocations=[
            invocation_pb2.Invocation(
                id="inv_a",
                service="flights.Flights",
                method="Reserve",
                key="trip-1",
                status=invocation_pb2.BACKING_OFF,
                attempts=3,
                last_error="connection reset\nby peer",
                created_at_ms=NOW_MS,
                modified_at_ms=NOW_MS,
            )
        ]
    )
    header, row = fmt.format_invocations(resp).splitlines()
    assert header.split() == "ID STATUS TARGET KEY ATTEMPTS CREATED MODIFIED LAST ERROR".split()
    assert row.split()[:7] == [
        "inv_a",
        "backing-off",
        "flights.Flights/Reserve",
        "trip-1",
        "3",
        "2023-11-14T22:13:20.123Z",
        "2023-11-14T22:13:20.123Z",
    ]
    assert row.endswith("connection reset by peer")


def _describe_response() -> admin_pb2.DescribeInvocationResponse:
    return admin_pb2.DescribeInvocationResponse(
        invocation=invocation_pb2.Invocation(
            id="inv_trip",
            service="trips.Trips",
            method="Reserve",
            status=invocation_pb2.COMPLETED,
            deployment_id="dp_4",
            attempts=2,
            last_error="payment flaked",
            created_at_ms=NOW_MS,
            modified_at_ms=NOW_MS + 1000,
            result=journal_pb2.Result(
                failure=journal_pb2.Failure(code=9, message="successfully applied 2 compensations")
            ),
        ),
        journal=[
            journal_pb2.JournalEntry(input=journal_pb2.InputCommand(request=b"\x0a\x01x")),
            journal_pb2.JournalEntry(
                call=journal_pb2.CallCommand(
                    service="flights.Flights", method="Reserve", invocation_id="inv_f"
                ),
                result=journal_pb2.Result(value=b"\x08\x01"),
            ),
            journal_pb2.JournalEntry(
                run=journal_pb2.RunCommand(name="notify"), result=journal_pb2.Result(value=b"sent")
            ),
            journal_pb2.JournalEntry(
                sleep=journal_pb2.SleepCommand(wake_up_at_ms=NOW_MS + 60_000),
                result=journal_pb2.Result(empty=journal_pb2.Empty()),
            ),
            journal_pb2.JournalEntry(
                set_state=journal_pb2.SetStateCommand(key="status", value=b"reserved")
            ),
            journal_pb2.JournalEntry(get_state=journal_pb2.GetStateCommand(key="missing")),
            journal_pb2.JournalEntry(
                output=journal_pb2.OutputCommand(),
                result=journal_pb2.Result(
                    failure=journal_pb2.Failure(
                        code=9, message="successfully applied 2 compensations"
                    )
                ),
            ),
        ],
    )


def test_format_describe_header_fields() -> None:
    out = fmt.format_describe(_describe_response())
    fields = dict(
        (label.strip(), value.strip())
        for label, _, value in (line.partition(":") for line in out.split("\n\n")[0].splitlines())
    )
    assert fields == {
        "invocation": "inv_trip",
        "status": "completed",
        "target": "trips.Trips/Reserve",
        "deployment": "dp_4",
        "attempts": "2",
        "last error": "payment flaked",
        "created": "2023-11-14T22:13:20.123Z",
        "modified": "2023-11-14T22:13:21.123Z",
        "result": "failure code FAILED_PRECONDITION: successfully applied 2 compensations",
    }


def test_format_describe_journal_entries() -> None:
    out = fmt.format_describe(_describe_response())
    journal = out.split("\n\n")[1].splitlines()
    assert journal[0] == "journal (7 entries):"
    assert journal[1].split() == ["INDEX", "COMMAND", "DETAILS", "RESULT"]
    entries = [line.strip() for line in journal[2:]]
    assert len(entries) == 7
    assert entries[0].startswith("0") and "input" in entries[0] and "request 3 bytes" in entries[0]
    assert "flights.Flights/Reserve -> inv_f" in entries[1] and entries[1].endswith("value 0x0801")
    assert 'name "notify"' in entries[2] and entries[2].endswith('value "sent"')
    assert "wake up at 2023-11-14T22:14:20.123Z" in entries[3] and entries[3].endswith("empty")
    assert 'key "status" = "reserved"' in entries[4] and entries[4].endswith("-")
    assert 'key "missing"' in entries[5]
    assert entries[6].startswith("6") and "output" in entries[6]
    assert entries[6].endswith(
        "failure code FAILED_PRECONDITION: successfully applied 2 compensations"
    )
    # The RESULT column starts at the same offset on every entry line.
    result_col = journal[1].index("RESULT")
    assert journal[3][result_col:] == "value 0x0801"
    assert journal[4][result_col:] == 'value "sent"'


def test_format_describe_shows_key_and_optional_context() -> None:
    resp = admin_pb2.DescribeInvocationResponse(
        invocation=invocation_pb2.Invocation(
            id="inv_p",
            service="payments.Payments",
            method="Process",
            key="trip-9",
            status=invocation_pb2.SUSPENDED,
            idempotency_key="idem-1",
            caller=invocation_pb2.Caller(invocation_id="inv_trip", entry_index=3),
            waiting_on=[4, 5],
        )
    )
    out = fmt.format_describe(resp)
    assert "target:" in out and "payments.Payments/Process (key trip-9)" in out
    assert "status:          suspended" in out
    assert "idempotency key: idem-1" in out
    assert "caller:          inv_trip entry 3" in out
    assert "waiting on:      entries 4, 5" in out
    assert "result:          -" in out
    assert out.endswith("journal (0 entries):")
