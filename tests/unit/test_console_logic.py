"""The console's pure parts: filter parsing, escaping, per-minute rates, a key's page
from an admin answer."""

from __future__ import annotations

import asyncio
import datetime
import json
from types import SimpleNamespace
from typing import cast
from unittest import mock

import pytest
from durable.v1 import admin_pb2, invocation_pb2

from broker import admin_paging
from broker.console import Console, _decode, _filters, _keys, _pages
from broker.console._html import Safe, esc, h, link, url
from broker.console._rates import Rates

NOW = 1_800_000_000_000


def test_filters_build_the_request() -> None:
    request, page, errors = _filters.parse(
        {
            "service": " trips.Trips ",
            "method": "Reserve",
            "status": "failed",
            "code": "failed_precondition",
            "since": "15m",
            "until": "2027-01-15T08:00",
            "page": "3",
            "idempotency_key": "k1",
        },
        NOW,
    )
    assert errors == []
    assert page == 3 and request.offset == 2 * _filters.PAGE_SIZE
    assert request.service == "trips.Trips" and request.method == "Reserve"
    assert request.outcome == admin_pb2.OUTCOME_FAILED and request.failure_code == 9
    assert request.created_after_ms == NOW - 15 * 60_000
    expected = datetime.datetime(2027, 1, 15, 8, 0, tzinfo=datetime.UTC).timestamp() * 1000
    assert request.created_before_ms == int(expected), "a time without a zone is UTC"
    assert request.idempotency_key == "k1"


def test_a_code_alone_means_failed_and_a_number_works() -> None:
    request, _, errors = _filters.parse({"code": "10"}, NOW)
    assert (
        errors == [] and request.outcome == admin_pb2.OUTCOME_FAILED and request.failure_code == 10
    )


def test_each_malformed_filter_says_what_to_write() -> None:
    _, _, errors = _filters.parse(
        {"status": "done", "since": "last tuesday", "page": "0", "until": "99999-1-1"}, NOW
    )
    assert any("unknown status 'done'" in e for e in errors)
    assert any("since: 'last tuesday' is not a time" in e for e in errors)
    assert any("until:" in e for e in errors)
    assert any("not a page number" in e for e in errors)
    _, _, errors = _filters.parse({"status": "running", "code": "ABORTED"}, NOW)
    assert errors == ["a failure code goes with the status 'failed'"]
    _, _, errors = _filters.parse({"code": "NOPE"}, NOW)
    assert "unknown failure code" in errors[0]


@pytest.mark.parametrize("text", ["²", "①", "\u0661"])  # the last: Arabic-Indic one
def test_digits_other_than_ascii_are_not_numbers(text: str) -> None:
    # str.isdigit takes them and int() refuses the first two (an attack got a 500).
    _, _, errors = _filters.parse({"page": text}, NOW)
    assert any("not a page number" in e for e in errors)
    _, _, errors = _filters.parse({"code": text}, NOW)
    assert any("unknown failure code" in e for e in errors)


def test_the_list_asks_for_no_results_and_fills_a_page_cut_short() -> None:
    # Records of large failure messages reach the admin API's cap: its answer ends
    # early, and the console reads the rest of its page from there, so that page 2
    # starts at match 51 and nothing between is out of reach.
    records = [
        invocation_pb2.Invocation(id=f"inv_{n:03d}", service="s.S", method="M") for n in range(120)
    ]
    asked: list[tuple[int, int, bool]] = []

    async def invocations(
        request: admin_pb2.ListInvocationsRequest,
    ) -> admin_pb2.ListInvocationsResponse:
        asked.append((request.offset, request.limit, request.without_results))
        taken = records[request.offset : request.offset + min(request.limit, 7)]
        end = request.offset + len(taken)
        return admin_pb2.ListInvocationsResponse(
            invocations=taken, total=len(records), next_page_token="t" if end < 120 else ""
        )

    console = cast(Console, SimpleNamespace(admin=SimpleNamespace(invocations=invocations)))
    body, status = asyncio.run(_pages.invocation_rows(console, {"page": "2"}))
    assert status == 200
    assert all(f"inv_{n:03d}" in body for n in range(50, 100))
    assert "inv_049" not in body and "inv_100" not in body
    assert "51&ndash;100 of 120" in body and 'rel="next"' in body
    assert asked[0] == (50, 50, True) and asked[1] == (57, 43, True)
    assert sum(1 for offset, _, _ in asked) == 8  # 7 a call, 50 in all


def test_pages_stop_where_the_admin_apis_offset_window_ends() -> None:
    request, page, errors = _filters.parse({"page": str(_filters.LAST_PAGE)}, NOW)
    assert errors == [] and page == _filters.LAST_PAGE
    assert request.offset + request.limit == admin_paging.MAX_LIST_WINDOW
    admin_paging.check(request)  # the broker takes it
    _, _, errors = _filters.parse({"page": str(_filters.LAST_PAGE + 1)}, NOW)
    assert errors == [
        "page 201 is past the last page listed (200): pages reach the newest 10,000 "
        "matches only; narrow the filters (an earlier 'until', say) to see older ones"
    ]


def test_values_are_escaped_unless_markup() -> None:
    evil = '<script>alert("x")</script>'
    assert "<script>" not in h("<td>{v}</td>", v=evil)
    assert h("<td>{v}</td>", v=Safe("<b>ok</b>")) == "<td><b>ok</b></td>"
    assert esc("a&b") == "a&amp;b"
    assert link('/x?a="1"', "<i>") == '<a href="/x?a=&quot;1&quot;">&lt;i&gt;</a>'
    assert (
        url("/invocations", {"service": "a b", "key": "", "page": 0}) == "/invocations?service=a+b"
    )


def test_rates_per_minute_from_counter_samples() -> None:
    def stats(started: int, failed: int) -> admin_pb2.GetStatsResponse:
        out = admin_pb2.GetStatsResponse()
        out.counters.add(service="s", events={"started": started, "failed": failed})
        return out

    rates = Rates(fetch=None)  # type: ignore[arg-type]
    rates.record(stats(0, 0), at=1000.0)
    rates.record(stats(10, 1), at=1030.0)
    rates.record(stats(25, 1), at=1090.0)
    minutes = rates.per_minute(now=1120.0, current=stats(40, 3))
    assert len(minutes) == 15
    # Each minute counts from the last sample before it (sample granularity): the
    # minutes add up to the counters' growth, and nothing is counted twice.
    assert minutes[-1] == {"started": 30, "completed": 0, "failed": 2}
    assert minutes[-2] == {"started": 10, "completed": 0, "failed": 1}
    assert all(m == {"started": 0, "completed": 0, "failed": 0} for m in minutes[:-2])


def test_a_restarted_workers_counters_count_no_negative_minute() -> None:
    # A worker's counters start again from zero: the chart showed -34 and drew a bar of
    # negative height.
    def stats(started: int) -> admin_pb2.GetStatsResponse:
        out = admin_pb2.GetStatsResponse()
        out.counters.add(service="s", events={"started": started})
        return out

    rates = Rates(fetch=None)  # type: ignore[arg-type]
    rates.record(stats(100), at=1000.0)
    rates.record(stats(134), at=1070.0)
    rates.record(stats(0), at=1080.0)  # restarted
    rates.record(stats(5), at=1100.0)
    minutes = rates.per_minute(now=1120.0)
    # 34 before the restart and 5 after it (the ends' difference was 5 - 100).
    assert minutes[-1]["started"] == 39
    assert all(m["started"] >= 0 for m in minutes)


def test_the_sampler_outlives_a_failed_sample() -> None:
    # One failed GetStats (a --workers partition down a few seconds) ended the sampling
    # for good, and stop() raised it again, which made the supervisor's SIGTERM a crash
    # that never told the workers to stop.
    calls = 0

    async def fetch() -> admin_pb2.GetStatsResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("partition 0 is unreachable")
        return admin_pb2.GetStatsResponse()

    async def scenario() -> int:
        rates = Rates(fetch)
        with mock.patch("broker.console._rates.SAMPLE_S", 0.001):
            rates.start()
            deadline = asyncio.get_running_loop().time() + 5
            while not rates.samples and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.001)
            await rates.stop()  # does not raise
        return len(rates.samples)

    assert asyncio.run(scenario()) >= 1
    assert calls >= 2


def test_a_long_inbox_shows_its_head_and_how_many_wait() -> None:
    described = admin_pb2.DescribeKeyResponse(
        service="s.S", key="k", inbox=["inv_1", "inv_2"], inbox_length=5000
    )

    async def key(service: str, key: str) -> admin_pb2.DescribeKeyResponse:
        return described

    console = cast(Console, SimpleNamespace(admin=SimpleNamespace(key=key)))

    cut = asyncio.run(_keys.key_page(console, "s.S", "k"))
    described.inbox_length = 2
    whole = asyncio.run(_keys.key_page(console, "s.S", "k"))

    assert "Inbox (5000 waiting)" in cut and "The first 2 of 5000 in line." in cut
    assert "inv_2" in cut
    assert "Inbox (2 waiting)" in whole and "in line." not in whole


def test_a_key_with_many_values_shows_the_first_ones_and_how_many_more() -> None:
    # 18,145 values made an 11.4 MB page that held the broker's loop 0.65 s per view.
    many = _keys.MAX_STATE_ROWS + 100
    described = admin_pb2.DescribeKeyResponse(
        service="s.S", key="k", state={f"v{i:05d}": b"1" for i in range(many)}
    )

    async def key(service: str, key: str) -> admin_pb2.DescribeKeyResponse:
        return described

    console = cast(Console, SimpleNamespace(admin=SimpleNamespace(key=key)))
    cut = asyncio.run(_keys.key_page(console, "s.S", "k"))
    assert f"State ({many} values)" in cut
    assert f"The first {_keys.MAX_STATE_ROWS} values by name; 100 more" in cut
    assert "v00499" in cut and "v00500" not in cut


def test_payloads_are_shown_cut_to_what_a_page_holds() -> None:
    assert _decode.json_bytes(b'{"a": 1}') == '{"a": 1}'
    long = {"items": [f"item {i}" for i in range(50)]}  # over 140 characters: indented
    assert _decode.json_bytes(json.dumps(long).encode()).startswith('{\n  "items": [\n')
    huge = json.dumps(["x" * 100] * 100_000).encode()  # 10 MB of JSON: cut, on one line
    shown = _decode.json_bytes(huge)
    assert len(shown) == 4001 and shown.startswith('["xxx') and shown.endswith("…")
    binary = b"\xff" * 5_000_000
    shown = _decode.json_bytes(binary)
    assert shown == "0x" + "ff" * 1999 + "… (5000000 bytes)"
    assert _decode.json_bytes(b"\xff\x01") == "0xff01"
