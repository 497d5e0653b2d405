"""Unit tests of brokerctl's pure formatting helpers and its argument parsing (no broker,
no network)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from durable.v1 import admin_pb2, invocation_pb2, journal_pb2

from broker import _cli_cluster, cli
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
        (invocation_pb2.PAUSED, "paused"),
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
    assert fmt.parse_status("paused") == invocation_pb2.PAUSED
    # Every status the broker knows can be filtered on (except the unset value).
    known = set(invocation_pb2.InvocationStatus.values()) - {0}
    assert {fmt.parse_status(c) for c in fmt.STATUS_CHOICES} == known


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


def test_a_payload_is_truncated_from_the_bytes_the_limit_can_show() -> None:
    big = b"x" * 10_000_000
    assert fmt.format_bytes(big, limit=5) == '"xxxxx"... (10000000 bytes)'
    # Exactly as many characters as the limit, read from a cut of the payload: truncated.
    assert fmt.format_bytes(b"y" * 5 + b"z" * 100, limit=5) == '"yyyyy"... (105 bytes)'
    # The cut ends inside a three-byte character (4 * 2 + 4 = 12 bytes of euros, 4 of them
    # whole): text still, the broken one dropped.
    euros = "€".encode() * 1000
    assert fmt.format_bytes(euros, limit=2) == '"€€"... (3000 bytes)'
    # Not UTF-8 within the cut: hex, from the cut too.
    assert fmt.format_bytes(b"\xff" + big, limit=6) == "0xff7878... (10000001 bytes)"
    # Binary past the cut is not looked at: the part shown is text.
    assert fmt.format_bytes(b"abcdefgh" + b"\x00" * 100, limit=1) == '"a"... (108 bytes)'


def test_describe_cuts_a_large_result_and_says_where_it_is_whole() -> None:
    value = b"v" * 100_000
    resp = admin_pb2.DescribeInvocationResponse(
        invocation=invocation_pb2.Invocation(id="inv_1", result=journal_pb2.Result(value=value))
    )
    shown = fmt.format_describe(resp)
    assert "... (100000 bytes)" in shown and len(shown) < 10_000
    resp.result_json = json.dumps({"text": "v" * 100_000})
    shown = fmt.format_describe(resp)
    assert "(protobuf, 100000 bytes; whole in --json)" in shown and len(shown) < 10_000


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
    assert header.split() == (
        "ID STATUS OUTCOME TARGET KEY ATTEMPTS CREATED MODIFIED LAST ERROR".split()
    )
    assert row.split()[:8] == [
        "inv_a",
        "backing-off",
        "-",
        "flights.Flights/Reserve",
        "trip-1",
        "3",
        "2023-11-14T22:13:20.123Z",
        "2023-11-14T22:13:20.123Z",
    ]
    assert row.endswith("connection reset by peer")


def test_outcome_of_completed_invocations() -> None:
    ok = invocation_pb2.Invocation(
        status=invocation_pb2.COMPLETED, result=journal_pb2.Result(value=b"\x08\x01")
    )
    failed = invocation_pb2.Invocation(
        status=invocation_pb2.COMPLETED,
        result=journal_pb2.Result(failure=journal_pb2.Failure(code=9, message="no")),
    )
    running = invocation_pb2.Invocation(status=invocation_pb2.RUNNING)
    assert [fmt.format_outcome(i) for i in (ok, failed, running)] == [
        "succeeded",
        "failed FAILED_PRECONDITION",
        "-",
    ]
    listed = fmt.invocations_to_json(
        admin_pb2.ListInvocationsResponse(invocations=[ok, failed, running])
    )
    assert [(i["outcome"], i["failure_code"]) for i in listed["invocations"]] == [
        ("succeeded", ""),
        ("failed", "FAILED_PRECONDITION"),
        ("", ""),
    ]


def test_status_filter_refines_completed_by_outcome() -> None:
    assert fmt.parse_status_filter("failed") == (invocation_pb2.COMPLETED, admin_pb2.OUTCOME_FAILED)
    assert fmt.parse_status_filter("succeeded") == (
        invocation_pb2.COMPLETED,
        admin_pb2.OUTCOME_SUCCEEDED,
    )
    assert fmt.parse_status_filter("completed") == (
        invocation_pb2.COMPLETED,
        admin_pb2.INVOCATION_OUTCOME_UNSPECIFIED,
    )
    args = cli.build_parser().parse_args(["invocations", "list", "--status", "failed"])
    assert args.status == "failed"


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


def test_format_describe_shows_next_retry_only_while_backing_off() -> None:
    inv = invocation_pb2.Invocation(
        id="inv_r", status=invocation_pb2.BACKING_OFF, next_retry_at_ms=NOW_MS
    )
    out = fmt.format_describe(admin_pb2.DescribeInvocationResponse(invocation=inv))
    assert "next retry:" in out and "2023-11-14T22:13:20.123Z" in out
    inv.status = invocation_pb2.PAUSED
    out = fmt.format_describe(admin_pb2.DescribeInvocationResponse(invocation=inv))
    assert "status:     paused" in out
    assert "next retry" not in out


def test_format_describe_shows_a_pending_cancellation() -> None:
    inv = invocation_pb2.Invocation(id="inv_c", status=invocation_pb2.RUNNING, cancel_pending=True)
    out = fmt.format_describe(admin_pb2.DescribeInvocationResponse(invocation=inv))
    assert "cancellation: requested, delivered at its next await" in out


# -- JSON values ------------------------------------------------------------------------


def test_parse_json_is_strict() -> None:
    assert fmt.parse_json('{"a": [1, null]}') == {"a": [1, None]}
    assert fmt.parse_json(b'"x"') == "x"
    for bad in ("NaN", "-Infinity", "{a: 1}", "", "'single'", "[1,]"):
        with pytest.raises(ValueError):
            fmt.parse_json(bad)
    with pytest.raises(ValueError):
        fmt.parse_json(b"\xff")


def test_json_text_keeps_single_line_json_as_written() -> None:
    assert fmt.json_text(b"42") == "42"
    assert fmt.json_text(b"1.50") == "1.50"
    assert fmt.json_text(b'{"ok": true}') == '{"ok": true}'
    assert fmt.json_text('  "café" '.encode()) == '"café"'
    assert fmt.json_text(b'{\n  "a": 1\n}') == '{"a": 1}'
    assert fmt.json_text(b"sent") is None
    assert fmt.json_text(b"\x0a\x02t1") is None
    assert fmt.json_text(b"") is None


def test_format_json_bytes_falls_back_and_truncates() -> None:
    assert fmt.format_json_bytes(b'"undone"') == '"undone"'
    assert fmt.format_json_bytes(b"null") == "null"
    assert fmt.format_json_bytes(b"sent") == '"sent"'
    assert fmt.format_json_bytes(b"\x08\x01") == "0x0801"
    assert fmt.format_json_bytes(b"[1, 2, 3, 4]", limit=5) == "[1, 2... (12 bytes)"


def test_format_result_json_value_only_when_asked() -> None:
    result = journal_pb2.Result(value=b'{"n": 1}')
    assert fmt.format_result(result) == 'value "{\\"n\\": 1}"'
    assert fmt.format_result(result, json_value=True) == 'value {"n": 1}'
    failure = journal_pb2.Result(failure=journal_pb2.Failure(code=10, message="no"))
    assert fmt.format_result(failure, json_value=True) == "failure code ABORTED: no"


# -- the journal's commands -------------------------------------------------------------


def _entry(**fields: Any) -> journal_pb2.JournalEntry:
    return journal_pb2.JournalEntry(**fields)


def _value(data: bytes) -> journal_pb2.Result:
    return journal_pb2.Result(value=data)


def test_entry_details_of_the_newer_commands() -> None:
    awk = _entry(awakeable=journal_pb2.AwakeableCommand(awakeable_id="awk_abc"))
    assert fmt.entry_details(awk) == "id awk_abc"
    assert fmt.entry_details(_entry(awakeable=journal_pb2.AwakeableCommand())) == (
        "id (not yet assigned)"
    )
    complete = _entry(
        complete_awakeable=journal_pb2.CompleteAwakeableCommand(
            awakeable_id="awk_x", completion=_value(b'{"ok": true}')
        )
    )
    assert fmt.entry_details(complete) == 'awk_x <- value {"ok": true}'
    rejected = _entry(
        complete_awakeable=journal_pb2.CompleteAwakeableCommand(
            awakeable_id="awk_y",
            completion=journal_pb2.Result(failure=journal_pb2.Failure(code=10, message="nope")),
        )
    )
    assert fmt.entry_details(rejected) == "awk_y <- failure code ABORTED: nope"
    get = _entry(get_promise=journal_pb2.GetPromiseCommand(name="verified"))
    assert fmt.entry_details(get) == 'name "verified"'
    peek = _entry(peek_promise=journal_pb2.PeekPromiseCommand(name="verified"))
    assert fmt.entry_details(peek) == 'name "verified"'
    resolve = _entry(
        complete_promise=journal_pb2.CompletePromiseCommand(name="done", completion=_value(b"7"))
    )
    assert fmt.entry_details(resolve) == 'name "done" <- value 7'
    attach = _entry(attach=journal_pb2.AttachCommand(invocation_id="inv_t"))
    assert fmt.entry_details(attach) == "-> inv_t"
    output = _entry(get_output=journal_pb2.GetOutputCommand(invocation_id="inv_u"))
    assert fmt.entry_details(output) == "-> inv_u"
    assert fmt.entry_details(_entry(get_state_keys=journal_pb2.GetStateKeysCommand())) == ""
    clear_all = _entry(clear_all_state=journal_pb2.ClearAllStateCommand())
    assert fmt.entry_details(clear_all) == "every key"
    assert fmt.entry_kind(clear_all) == "clear_all_state"


def test_set_state_details_show_json_values() -> None:
    entry = _entry(set_state=journal_pb2.SetStateCommand(key="total", value=b"5"))
    assert fmt.entry_details(entry) == 'key "total" = 5'
    entry = _entry(set_state=journal_pb2.SetStateCommand(key="s", value=b'"verified"'))
    assert fmt.entry_details(entry) == 'key "s" = "verified"'


def test_entry_result_decodes_json_only_for_json_valued_commands() -> None:
    # b"85" is valid JSON, but also the protobuf encoding of field 7 = 53: a call's result
    # is a protobuf message and stays a byte string.
    run = _entry(run=journal_pb2.RunCommand(name="n"), result=_value(b"85"))
    assert fmt.entry_result(run) == "value 85"
    call = _entry(call=journal_pb2.CallCommand(service="s.S", method="M"), result=_value(b"85"))
    assert fmt.entry_result(call) == 'value "85"'
    awk = _entry(awakeable=journal_pb2.AwakeableCommand(), result=_value(b'{"a": [1]}'))
    assert fmt.entry_result(awk) == 'value {"a": [1]}'
    state = _entry(get_state=journal_pb2.GetStateCommand(key="k"), result=_value(b"true"))
    assert fmt.entry_result(state) == "value true"
    promise = _entry(get_promise=journal_pb2.GetPromiseCommand(name="p"), result=_value(b'"c"'))
    assert fmt.entry_result(promise) == 'value "c"'
    peek = _entry(
        peek_promise=journal_pb2.PeekPromiseCommand(name="p"),
        result=journal_pb2.Result(empty=journal_pb2.Empty()),
    )
    assert fmt.entry_result(peek) == "empty"
    # Not JSON after all (written by something else): shown as bytes, never dropped.
    odd = _entry(run=journal_pb2.RunCommand(name="n"), result=_value(b"\xff\x00"))
    assert fmt.entry_result(odd) == "value 0xff00"
    assert fmt.entry_result(_entry(run=journal_pb2.RunCommand(name="n"))) == "-"


def test_entry_result_of_get_state_keys_lists_the_names() -> None:
    keys = journal_pb2.StateKeys(keys=["by-5", "total"]).SerializeToString()
    entry = _entry(get_state_keys=journal_pb2.GetStateKeysCommand(), result=_value(keys))
    assert fmt.entry_result(entry) == 'keys ["by-5", "total"]'
    many = journal_pb2.StateKeys(keys=[f"name-{i}" for i in range(20)]).SerializeToString()
    entry = _entry(get_state_keys=journal_pb2.GetStateKeysCommand(), result=_value(many))
    # The limit applies to the list's text, as it does to values.
    assert fmt.entry_result(entry, limit=20) == 'keys ["name-0", "name-1",... (20 keys)'
    garbage = _entry(get_state_keys=journal_pb2.GetStateKeysCommand(), result=_value(b"\xff"))
    assert fmt.entry_result(garbage) == "value 0xff"


def _workflow_describe() -> admin_pb2.DescribeInvocationResponse:
    keys = journal_pb2.StateKeys(keys=["status"]).SerializeToString()
    return admin_pb2.DescribeInvocationResponse(
        invocation=invocation_pb2.Invocation(
            id="inv_w", service="p.Signup", method="Run", key="u1", status=invocation_pb2.SUSPENDED
        ),
        journal=[
            _entry(input=journal_pb2.InputCommand(request=b"\x0a\x02u1")),
            _entry(set_state=journal_pb2.SetStateCommand(key="status", value=b'"waiting"')),
            _entry(
                awakeable=journal_pb2.AwakeableCommand(awakeable_id="awk_1"),
                result=_value(b'{"ok": true}'),
            ),
            _entry(get_promise=journal_pb2.GetPromiseCommand(name="verified")),
            _entry(
                complete_promise=journal_pb2.CompletePromiseCommand(
                    name="other", completion=_value(b"[1, 2]")
                ),
                result=journal_pb2.Result(empty=journal_pb2.Empty()),
            ),
            _entry(get_state_keys=journal_pb2.GetStateKeysCommand(), result=_value(keys)),
            _entry(attach=journal_pb2.AttachCommand(invocation_id="inv_t"), result=_value(b"85")),
            _entry(run=journal_pb2.RunCommand(name="effect"), result=_value(b"not json")),
        ],
    )


def test_format_describe_renders_the_newer_commands() -> None:
    out = fmt.format_describe(_workflow_describe())
    journal = out.split("\n\n")[1].splitlines()
    assert journal[0] == "journal (8 entries):"
    rows = [line.split(None, 2) for line in journal[2:]]
    assert [(r[0], r[1]) for r in rows] == [
        ("0", "input"),
        ("1", "set_state"),
        ("2", "awakeable"),
        ("3", "get_promise"),
        ("4", "complete_promise"),
        ("5", "get_state_keys"),
        ("6", "attach"),
        ("7", "run"),
    ]
    lines = [line.strip() for line in journal[2:]]
    assert 'key "status" = "waiting"' in lines[1] and lines[1].endswith("-")
    assert "id awk_1" in lines[2] and lines[2].endswith('value {"ok": true}')
    assert 'name "verified"' in lines[3] and lines[3].endswith("-")
    assert 'name "other" <- value [1, 2]' in lines[4] and lines[4].endswith("empty")
    assert lines[5].endswith('keys ["status"]')
    assert "-> inv_t" in lines[6] and lines[6].endswith('value "85"')
    assert 'name "effect"' in lines[7] and lines[7].endswith('value "not json"')


def test_describe_to_json_adds_decoded_values() -> None:
    out = fmt.describe_to_json(_workflow_describe())
    # Still the proto JSON mapping: field names as in the .proto, bytes as base64.
    assert out["invocation"]["id"] == "inv_w"
    assert out["invocation"]["status"] == "SUSPENDED"
    journal = out["journal"]
    assert len(journal) == 8
    assert journal[0]["input"]["request"] == base64.b64encode(b"\x0a\x02u1").decode()
    assert "value_json" not in journal[0]["input"]
    assert journal[1]["set_state"]["value_json"] == "waiting"
    assert journal[1]["set_state"]["value"] == base64.b64encode(b'"waiting"').decode()
    assert journal[2]["awakeable"]["awakeable_id"] == "awk_1"
    assert journal[2]["result"]["value_json"] == {"ok": True}
    assert journal[3] == {"get_promise": {"name": "verified"}}
    assert journal[4]["complete_promise"]["completion"]["value_json"] == [1, 2]
    assert journal[4]["result"] == {"empty": {}}
    assert journal[5]["result"]["state_keys"] == ["status"]
    assert "value_json" not in journal[6]["result"]  # a protobuf response, not JSON
    assert "value_json" not in journal[7]["result"]  # not valid JSON
    json.dumps(out)  # serializable as is


# -- services ---------------------------------------------------------------------------


def _services() -> admin_pb2.ListServicesResponse:
    return admin_pb2.ListServicesResponse(
        services=[
            admin_pb2.Service(
                name="playground.Counter",
                kind="virtual_object",
                deployment_id="dp_1",
                key_field="name",
                handlers=[
                    admin_pb2.Handler(
                        name="Add",
                        input_type="playground.AddRequest",
                        output_type="playground.Reply",
                    ),
                    admin_pb2.Handler(
                        name="Get",
                        input_type="playground.CounterRef",
                        output_type="playground.Reply",
                        shared=True,
                    ),
                ],
            ),
            admin_pb2.Service(name="playground.Waiter", kind="service", deployment_id="dp_1"),
        ]
    )


def test_find_and_suggest_services() -> None:
    services = _services()
    found = fmt.find_service(services, "playground.Counter")
    assert found is not None and found.key_field == "name"
    assert fmt.find_service(services, "Counter") is None
    assert fmt.suggest_services(services, "Counter") == ["playground.Counter"]
    assert fmt.suggest_services(services, "playground.Countr") == ["playground.Counter"]
    assert fmt.suggest_services(services, "counter") == ["playground.Counter"]
    assert fmt.suggest_services(services, "Countr") == ["playground.Counter"]
    assert fmt.suggest_services(services, "zzz") == []


def test_format_service() -> None:
    svc = _services().services[0]
    out = fmt.format_service(svc, "http://127.0.0.1:9110")
    head, handlers = out.split("\n\n")
    assert head.splitlines() == [
        "service:    playground.Counter",
        "kind:       virtual_object",
        "deployment: dp_1 (http://127.0.0.1:9110)",
        "key field:  name",
    ]
    lines = handlers.splitlines()
    assert lines[0] == "handlers (2):"
    assert lines[1].split() == ["HANDLER", "INPUT", "OUTPUT", "SHARED"]
    assert lines[2].split() == ["Add", "playground.AddRequest", "playground.Reply", "-"]
    assert lines[3].split() == ["Get", "playground.CounterRef", "playground.Reply", "shared"]
    plain = fmt.format_service(_services().services[1])
    assert "deployment: dp_1\n" in plain and "key field:  -" in plain
    assert plain.endswith("handlers (0):")


# -- operator actions -------------------------------------------------------------------


def test_format_invocation_action() -> None:
    running = invocation_pb2.Invocation(id="inv_a", status=invocation_pb2.RUNNING)
    assert fmt.format_invocation_action("resume", running) == "resumed inv_a: status running"
    running.cancel_pending = True
    assert fmt.format_invocation_action("cancel", running) == (
        "cancelled inv_a: status running (the cancellation is delivered at its next await)"
    )
    killed = invocation_pb2.Invocation(
        id="inv_b",
        status=invocation_pb2.COMPLETED,
        result=journal_pb2.Result(
            failure=journal_pb2.Failure(code=10, message="invocation killed")
        ),
    )
    assert fmt.format_invocation_action("kill", killed) == (
        "killed inv_b: status completed (failure code ABORTED: invocation killed)"
    )


def test_format_completion() -> None:
    assert fmt.format_completion("awakeable awk_1", _value(b'{"ok": true}')) == (
        'resolved awakeable awk_1 with {"ok": true}'
    )
    assert fmt.format_completion("awakeable awk_1", _value(b"")) == (
        "resolved awakeable awk_1 with null"
    )
    rejected = journal_pb2.Result(failure=journal_pb2.Failure(message="bounced"))
    assert fmt.format_completion("promise 'p'", rejected) == "rejected promise 'p': bounced"


# -- state ------------------------------------------------------------------------------


def test_format_state_is_a_sorted_table_of_json_values() -> None:
    state = {"total": b"5", "by-5": b"true", "label": b'{"a": "x y"}'}
    lines = fmt.format_state("p.Counter", "c1", state).splitlines()
    assert lines[0].split() == ["NAME", "VALUE"]
    assert lines[1:] == ["by-5   true", 'label  {"a": "x y"}', "total  5"]
    assert fmt.format_state("p.Counter", "c1", {}) == "no state for p.Counter key 'c1'"
    long = fmt.format_state("p.Counter", "c1", {"big": json.dumps("x" * 100).encode()})
    assert long.splitlines()[1].endswith("... (102 bytes)")


def test_format_state_value_is_the_whole_json_text() -> None:
    assert fmt.format_state_value(json.dumps("x" * 100).encode()) == json.dumps("x" * 100)
    assert fmt.format_state_value(b"\xff") == "0xff"


def test_state_to_json_decodes_values() -> None:
    state = {"total": b"5", "label": b'"hi"', "odd": b"\xff"}
    assert fmt.state_to_json("p.Counter", "c1", state) == {
        "service": "p.Counter",
        "key": "c1",
        "state": {"label": "hi", "total": 5},
        "raw_state": {"odd": "/w=="},
    }


# -- the command line (parsing only: these fail before any connection) -------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["awakeables", "resolve", "awk_1", "hello"],
        ["awakeables", "resolve", "awk_1", "NaN"],
        ["promises", "resolve", "p.Signup", "u1", "verified", "{bad"],
        ["state", "set", "p.Counter", "c1", "total", "forty"],
        ["state", "set", "p.Counter", "c1", "total"],
        ["invocations", "list", "--status", "sleeping"],
        ["invocations", "cancel"],
        ["services", "describe"],
        ["deployments", "remove"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--admin", "127.0.0.1:1", *argv]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "usage: brokerctl" in err


def test_invalid_json_message_says_how_to_quote(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["awakeables", "resolve", "awk_1", "hello"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "argument JSON: not valid JSON: 'hello'" in err
    assert "quote strings" in err


def test_parser_defaults_and_json_after_the_verb() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["awakeables", "resolve", "awk_1"])
    assert args.value == b"null" and args.json is False
    args = parser.parse_args(["awakeables", "resolve", "awk_1", ' {"a": 1} ', "--json"])
    assert args.value == b'{"a": 1}' and args.json is True
    args = parser.parse_args(["--json", "invocations", "kill", "inv_1"])
    assert args.json is True and args.invocation_id == "inv_1"
    args = parser.parse_args(["awakeables", "reject", "awk_1"])
    assert args.reason == "rejected"
    args = parser.parse_args(["state", "set", "p.C", "k", "total", "-5"])
    assert args.value == b"-5"
    args = parser.parse_args(["state", "get", "p.C", "k"])
    assert args.name is None
    args = parser.parse_args(["invocations", "list", "--status", "paused"])
    assert args.status == "paused"
    args = parser.parse_args(["deployments", "remove", "dp_1", "--force"])
    assert args.deployment_id == "dp_1" and args.force is True


# -- deployments ------------------------------------------------------------------------


def test_format_deployments_table() -> None:
    resp = admin_pb2.ListDeploymentsResponse(
        deployments=[
            admin_pb2.Deployment(
                id="dp_1",
                uri="http://127.0.0.1:9101",
                services=["flights.Flights"],
                created_at_ms=NOW_MS,
                mode="request_response",
                in_flight=2,
            )
        ]
    )
    header, row = fmt.format_deployments(resp).splitlines()
    assert header.split() == ["ID", "URI", "MODE", "IN", "FLIGHT", "SERVICES", "CREATED"]
    assert row.split() == [
        "dp_1",
        "http://127.0.0.1:9101",
        "request_response",
        "2",
        "flights.Flights",
        "2023-11-14T22:13:20.123Z",
    ]


def test_format_deployment_and_removal() -> None:
    dep = admin_pb2.Deployment(id="dp_1", uri="http://h:1", services=["a.A", "b.B"], mode="stream")
    assert fmt.format_deployment(dep).splitlines() == [
        "registered deployment dp_1 at http://h:1",
        "services: a.A, b.B",
        "mode: stream",
    ]
    assert fmt.format_removed_deployment("dp_1", 0) == "removed deployment dp_1"
    assert fmt.format_removed_deployment("dp_1", 1) == (
        "removed deployment dp_1 (1 invocation still in flight on it: their attempts fail "
        "and back off until its URI is registered again, which gives the endpoint this id "
        "back and resumes them there)"
    )
    assert "(3 invocations still" in fmt.format_removed_deployment("dp_1", 3)


def _rendered_response() -> admin_pb2.DescribeInvocationResponse:
    resp = _describe_response()
    resp.rendered.extend([admin_pb2.RenderedEntry() for _ in resp.journal])
    resp.rendered[0].request_json = '{"runType": "x"}'
    resp.rendered[1].request_json = '{"tripId": "t1"}'
    resp.rendered[1].result_json = '{"state": "reserved"}'
    return resp


def test_format_describe_shows_rendered_payloads_as_json() -> None:
    lines = fmt.format_describe(_rendered_response()).splitlines()
    input_line = next(line for line in lines if " input " in line)
    call_line = next(line for line in lines if " call " in line)
    assert 'request {"runType": "x"}' in input_line, input_line
    assert 'flights.Flights/Reserve {"tripId": "t1"} -> inv_f' in call_line, call_line
    assert call_line.endswith('value {"state": "reserved"}'), call_line


def test_format_describe_hex_keeps_the_bytes() -> None:
    lines = fmt.format_describe(_rendered_response(), hex_payloads=True).splitlines()
    call_line = next(line for line in lines if " call " in line)
    assert call_line.endswith("value 0x0801"), call_line
    assert "request 3 bytes" in next(line for line in lines if " input " in line)
    # Without renderings (an older broker, an unknown type) it is hex as well.
    assert fmt.format_describe(_describe_response()) == fmt.format_describe(
        _rendered_response(), hex_payloads=True
    )


def test_describe_to_json_folds_in_the_renderings() -> None:
    resp = _rendered_response()
    resp.invocation.result.value = b"\x0a\x02ok"
    resp.result_json = '{"status": "ok"}'
    out = fmt.describe_to_json(resp)
    assert "rendered" not in out and "result_json" not in out
    assert out["invocation"]["result"]["value_json"] == {"status": "ok"}
    assert out["journal"][0]["input"]["request_json"] == {"runType": "x"}
    assert out["journal"][1]["call"]["request_json"] == {"tripId": "t1"}
    assert out["journal"][1]["result"]["value_json"] == {"state": "reserved"}


def _cluster_status() -> admin_pb2.ClusterStatusResponse:
    resp = admin_pb2.ClusterStatusResponse(mode="cluster")
    resp.nodes.add(name="n1", pid=11, alive=True, partitions=[0], ingress="h:1", admin="h:2")
    resp.nodes.add(name="n2", pid=12, alive=False, partitions=[], ingress="h:3", admin="h:4")
    p0 = resp.partitions.add(id=0, owner="n1", serving=True, applied=9, log_last=9)
    p0.preferred = "n1"
    p0.followers.add(node="n2", applied=7, lag=2)
    resp.partitions.add(id=1, owner="n1", serving=True, applied=3, log_last=4, preferred="n2")
    resp.partitions.add(id=2, owner="", serving=False, applied=0, log_last=5, preferred="n1")
    return resp


def test_cluster_status_text_in_cluster_mode() -> None:
    assert _cli_cluster.format_status(_cluster_status()).splitlines() == [
        "mode: cluster",
        "nodes:",
        "  n1: alive (pid 11), ingress h:1, admin h:2, leads 0",
        "  n2: DOWN, ingress h:3, admin h:4, leads none",
        "partitions:",
        "  0: leader n1, serving, applied 9, log end 9, followers n2 lag 2",
        "  1: leader n1, serving, applied 3, log end 4, followers none; moving to n2",
        "  2: no leader, NOT SERVING, applied 0, log end 5, followers none; moving to n1",
    ]


def test_cluster_status_text_in_workers_mode_is_unchanged() -> None:
    resp = admin_pb2.ClusterStatusResponse(mode="workers")
    resp.nodes.add(name="worker-0", pid=5, alive=True, restarts=1, partitions=[0, 1])
    resp.partitions.add(id=0, owner="worker-0", serving=True, admin="h:1", ingress="h:2")
    resp.partitions.add(id=1, owner="worker-0", serving=False)
    assert _cli_cluster.format_status(resp).splitlines() == [
        "mode: workers",
        "nodes:",
        "  worker-0: pid 5, 1 restart(s), partitions 0, 1",
        "partitions:",
        "  0: worker-0, serving, admin h:1, ingress h:2",
        "  1: worker-0, NOT SERVING",
    ]


def test_cluster_status_json_carries_positions_and_followers() -> None:
    printed = json.loads(cli._render_json(_cluster_status()))
    assert printed["nodes"][0]["ingress"] == "h:1" and printed["nodes"][1]["admin"] == "h:4"
    first = printed["partitions"][0]
    # uint64 fields are strings in proto3's JSON mapping.
    assert (first["applied"], first["log_last"], first["preferred"]) == ("9", "9", "n1")
    assert first["followers"] == [{"node": "n2", "applied": "7", "lag": "2"}]
    assert printed["partitions"][1]["followers"] == []


# -- control characters in user-supplied text --------------------------------------------

# A key an attacker chose: clears the screen, turns the text red and forges a line.
HOSTILE = "esc\x1b[2J\x1b[31mRED\nfake line"
HOSTILE_SHOWN = "esc\\x1b[2J\\x1b[31mRED\\nfake line"


def _raw_controls(text: str) -> list[str]:
    return [ch for ch in text if ch != "\n" and (ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F)]


def test_escape_control_shows_c0_del_and_c1_escaped() -> None:
    assert fmt.escape_control(HOSTILE) == HOSTILE_SHOWN
    assert fmt.escape_control("a\x00b\tc\rd\x7fe\x9bf") == "a\\x00b\\tc\\rd\\x7fe\\x9bf"
    assert fmt.escape_control("one\ntwo\x1b", keep="\n") == "one\ntwo\\x1b"
    # Printable text, non-ASCII included, is left alone.
    assert fmt.escape_control("trip-1 é ✓ \\n") == "trip-1 é ✓ \\n"


def test_escape_json_controls_keeps_the_json_and_its_values() -> None:
    value = {"k": "a\x7fb\x85c\x9b2J"}
    text = json.dumps(value, ensure_ascii=False)
    escaped = fmt.escape_json_controls(text)
    assert escaped == '{"k": "a\\u007fb\\u0085c\\u009b2J"}'
    assert json.loads(escaped) == value


def test_format_invocations_escapes_a_hostile_key() -> None:
    resp = admin_pb2.ListInvocationsResponse(
        invocations=[
            invocation_pb2.Invocation(
                id="inv_a",
                service="playground.Counter",
                method="Add",
                key=HOSTILE,
                status=invocation_pb2.COMPLETED,
                last_error="boom\x1b[2K\nsecond line",
            )
        ]
    )
    out = fmt.format_invocations(resp)
    assert _raw_controls(out) == []
    _header, row = out.splitlines()
    assert HOSTILE_SHOWN in row
    # An error message is prose: its line breaks are flattened, the rest escaped.
    assert row.endswith("boom\\x1b[2K second line")


def test_format_table_escapes_control_characters_left_in_cells() -> None:
    table = fmt.format_table(["A", "B"], [["x\x1b]0;title\x07", "\x9b31m"]])
    assert _raw_controls(table) == []
    assert table.splitlines()[1] == "x\\x1b]0;title\\x07  \\x9b31m"


def test_format_describe_escapes_keys_and_indents_a_multiline_error() -> None:
    resp = admin_pb2.DescribeInvocationResponse(
        invocation=invocation_pb2.Invocation(
            id="inv_h",
            service="playground.Counter",
            method="Add",
            key=HOSTILE,
            idempotency_key="idem\x1b[8m",
            status=invocation_pb2.BACKING_OFF,
            last_error="Traceback:\n  boom\x1b[2K",
        ),
        journal=[
            journal_pb2.JournalEntry(
                set_state=journal_pb2.SetStateCommand(key="n\x1b\x9b", value=b'"v\xc2\x9b"')
            )
        ],
    )
    out = fmt.format_describe(resp)
    assert _raw_controls(out) == []
    lines = out.splitlines()
    assert f"playground.Counter/Add (key {HOSTILE_SHOWN})" in lines[2]
    error_at = next(i for i, line in enumerate(lines) if line.startswith("last error:"))
    width = lines[error_at].index("Traceback")
    assert lines[error_at + 1] == " " * width + "  boom\\x1b[2K"
    assert any(line.startswith("idempotency key:") and "idem\\x1b[8m" in line for line in lines)
    assert 'key "n\\u001b\\u009b" = "v\\u009b"' in out


def test_format_state_escapes_names_and_keeps_values_json() -> None:
    out = fmt.format_state("playground.Counter", "k", {"name\x1b[2J": b'"\xc2\x9b2J"'})
    assert _raw_controls(out) == []
    assert out.splitlines()[1].split() == ["name\\x1b[2J", '"\\u009b2J"']
    # One value in full is JSON text still, with the same value.
    one = fmt.format_state_value(b'"\xc2\x9b2J\xc2\x85"')
    assert json.loads(one) == "\x9b2J\x85" and _raw_controls(one) == []


def test_json_output_escapes_del_and_c1_and_stays_the_same_json() -> None:
    inv = invocation_pb2.Invocation(id="inv_a", key="k\x1b\x9b\x7f\n")
    printed = cli._render_json(inv)
    assert _raw_controls(printed.replace("\n", "")) == []
    assert json.loads(printed)["key"] == "k\x1b\x9b\x7f\n"


# -- services limit(s) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [("trips.Trips", ("trips.Trips", "")), ("trips.Trips/Reserve", ("trips.Trips", "Reserve"))],
)
def test_limit_target_is_service_or_service_slash_method(
    target: str, expected: tuple[str, str]
) -> None:
    args = cli.build_parser().parse_args(["services", "limit", target, "--concurrency", "1"])
    assert args.target == expected


@pytest.mark.parametrize(
    ("target", "empty"),
    [("playground.Busy/", "the method after /"), ("/Run", "the service before /")],
)
def test_limit_target_with_an_empty_part_is_a_usage_error(
    target: str, empty: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--admin", "127.0.0.1:1", "services", "limit", target, "--concurrency", "1"]
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "SERVICE or SERVICE/METHOD" in err and f"{empty} is empty" in err


class _LimitsStub:
    """The two admin calls `services limits` makes: no limits, and one service."""

    def GetLimits(self, request: Any, timeout: float) -> admin_pb2.GetLimitsResponse:
        return admin_pb2.GetLimitsResponse()

    def ListServices(self, request: Any, timeout: float) -> admin_pb2.ListServicesResponse:
        return admin_pb2.ListServicesResponse(services=[admin_pb2.Service(name="trips.Trips")])


def test_limits_of_an_unknown_service_is_not_found() -> None:
    args = cli.build_parser().parse_args(["services", "limits", "nope.Nope"])
    with pytest.raises(cli.CommandError) as raised:
        args.handler(_LimitsStub(), args, 1.0)
    assert raised.value.code == "NOT_FOUND"
    assert raised.value.message == "no service 'nope.Nope' is registered"
    known = cli.build_parser().parse_args(["services", "limits", "trips.Trips"])
    assert known.handler(_LimitsStub(), known, 1.0)[1] == "no limits set"


# -- connection options -----------------------------------------------------------------


def test_tls_ca_that_cannot_be_read_is_a_usage_error(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nonexistent.pem")
    assert cli.main(["--tls-ca", missing, "deployments", "list"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"argument --tls-ca: cannot read {missing!r}: No such file or directory" in err


def test_tls_ca_that_is_not_pem_is_a_usage_error(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    not_pem = tmp_path / "hostname"
    not_pem.write_text("myhost\n")
    assert cli.main(["--tls-ca", str(not_pem), "deployments", "list"]) == cli.EXIT_USAGE
    assert f"{str(not_pem)!r} is not a PEM certificate" in capsys.readouterr().err
    # From the environment, the same.
    monkeypatch.setenv("BROKER_TLS_CA", str(not_pem))
    assert cli.main(["deployments", "list"]) == cli.EXIT_USAGE
    assert "is not a PEM certificate" in capsys.readouterr().err


def test_tls_ca_pem_is_read_once_at_parse_time(tmp_path: Any) -> None:
    pem = tmp_path / "ca.pem"
    pem.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    args = cli.build_parser().parse_args(["--tls-ca", str(pem), "deployments", "list"])
    assert args.tls_ca_pem == pem.read_bytes()


@pytest.mark.parametrize("token", ["a\nb", "tok\x00", "tok\x7f", "tøken"])
def test_token_outside_printable_ascii_is_a_usage_error(
    token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--token", token, "deployments", "list"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "not allowed in a gRPC header" in err and "printable ASCII" in err
    # The token is a secret: the message does not repeat it.
    assert token not in err


def test_channel_receives_whatever_the_broker_may_send() -> None:
    # The broker sends up to its 64 MiB send limit (state alone may be 16 MiB).
    assert ("grpc.max_receive_message_length", -1) in cli.CHANNEL_OPTIONS
