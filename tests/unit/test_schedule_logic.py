"""Schedules as pure logic: next fire times (cron in a time zone, across DST; intervals),
catch-up after downtime, and the schedule state machine fed with clock readings against
a fake partition (overlap policies, pause/resume, recovery after a crash)."""

from __future__ import annotations

import argparse
import datetime
import itertools
import random
from zoneinfo import ZoneInfo

import pytest
from durable.v1 import admin_pb2

from broker import _cli_schedules as sched
from broker import admin_schedules
from broker.core import actions
from broker.core import schedule_times as times
from broker.core.model import IdempotencyConflict, Live
from broker.core.schedules import Schedule, Schedules, name_of
from broker.storage import Batch, MemoryKV, keys
from broker.storage import schedules as table
from broker.storage.kv import KV

BERLIN = ZoneInfo("Europe/Berlin")


def ms(y: int, mo: int, d: int, h: int, mi: int, tz: datetime.tzinfo = datetime.UTC) -> int:
    return int(datetime.datetime(y, mo, d, h, mi, tzinfo=tz).timestamp() * 1000)


def utc(at_ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(at_ms / 1000, datetime.UTC)


# ---- Next fire times


def test_every_slots_are_multiples_of_the_interval() -> None:
    spec = times.Spec(every_ms=5000)
    assert times.next_after(spec, 12_345) == 15_000
    assert times.next_after(spec, 15_000) == 20_000
    assert times.upcoming(spec, 0, 3) == [5000, 10_000, 15_000]


def test_cron_in_a_time_zone() -> None:
    spec = times.Spec(cron="0 9 * * 1-5", timezone="Europe/Berlin")
    # Friday 2026-01-02 10:00 Berlin: next is Monday 09:00 Berlin (08:00 UTC, CET).
    after = ms(2026, 1, 2, 10, 0, tz=BERLIN)
    assert utc(times.next_after(spec, after)) == datetime.datetime(
        2026, 1, 5, 8, 0, tzinfo=datetime.UTC
    )


def test_hourly_cron_across_the_spring_dst_change_in_berlin() -> None:
    # 2026-03-29: at 02:00 CET clocks jump to 03:00 CEST; an hourly schedule fires once
    # an hour of real time, never twice, never with a gap of two hours.
    spec = times.Spec(cron="0 * * * *", timezone="Europe/Berlin")
    fires = times.upcoming(spec, ms(2026, 3, 28, 23, 30), 4)
    assert [utc(f).hour for f in fires] == [0, 1, 2, 3]
    assert [datetime.datetime.fromtimestamp(f / 1000, BERLIN).hour for f in fires] == [
        1,
        3,
        4,
        5,
    ]


def test_daily_cron_at_a_local_time_keeps_the_local_time_across_dst() -> None:
    spec = times.Spec(cron="0 8 * * *", timezone="Europe/Berlin")
    fires = times.upcoming(spec, ms(2026, 3, 28, 12, 0), 2)
    # 08:00 CEST on the 29th is 06:00 UTC; the day before it was 07:00 UTC.
    assert [utc(f) for f in fires] == [
        datetime.datetime(2026, 3, 29, 6, 0, tzinfo=datetime.UTC),
        datetime.datetime(2026, 3, 30, 6, 0, tzinfo=datetime.UTC),
    ]
    # 02:30 does not exist on the 29th in Berlin: it fires once, at the first moment after.
    skipped = times.Spec(cron="30 2 * * *", timezone="Europe/Berlin")
    first, second = times.upcoming(skipped, ms(2026, 3, 28, 12, 0), 2)
    assert utc(first) == datetime.datetime(2026, 3, 29, 1, 0, tzinfo=datetime.UTC)
    assert utc(second) == datetime.datetime(2026, 3, 30, 0, 30, tzinfo=datetime.UTC)


def test_hourly_cron_across_the_autumn_dst_change_fires_each_real_hour_once() -> None:
    spec = times.Spec(cron="0 * * * *", timezone="Europe/Berlin")
    fires = times.upcoming(spec, ms(2026, 10, 24, 23, 30), 4)
    assert len(set(fires)) == 4
    assert all(b - a == 3_600_000 for a, b in itertools.pairwise(fires))


@pytest.mark.parametrize(
    ("cron", "zone", "day", "per_day"),
    [
        # Fixed times: once on the night the clocks go back (at the first coming).
        ("30 2 * * *", "Europe/Berlin", (2024, 10, 26), [27, 28, 29, 30]),
        ("30 1 * * *", "Australia/Lord_Howe", (2024, 4, 6), [7, 8, 9, 10]),
        # A wildcard fires in both hours: they are two real hours.
        ("*/30 2 * * *", "Europe/Berlin", (2024, 10, 26), [27, 27, 27, 27]),
    ],
)
def test_a_fixed_time_fires_once_the_night_the_clocks_go_back(
    cron: str, zone: str, day: tuple[int, int, int], per_day: list[int]
) -> None:
    # An attack found "30 2 * * *" firing twice that night; cron runs it once.
    tz = ZoneInfo(zone)
    start = datetime.datetime(*day, 12, 0, tzinfo=tz)
    slots = times.upcoming(times.Spec(cron=cron, timezone=zone), int(start.timestamp() * 1000), 4)
    local = [datetime.datetime.fromtimestamp(s / 1000, tz) for s in slots]
    assert [t.day for t in local] == per_day
    assert len(set(slots)) == 4 and slots == sorted(slots)


@pytest.mark.parametrize(
    ("spec", "overlap", "catch_up", "says"),
    [
        (times.Spec(cron="61 * * * *"), "skip", "latest", "malformed cron"),
        (times.Spec(cron="* * *"), "skip", "latest", "expected 5 fields"),
        (times.Spec(cron="not a cron at all"), "skip", "latest", "malformed cron"),
        (times.Spec(cron="* * * * *", timezone="Mars/Base"), "skip", "latest", "time zone"),
        (times.Spec(), "skip", "latest", "exactly one"),
        (times.Spec(cron="* * * * *", every_ms=1000), "skip", "latest", "exactly one"),
        (times.Spec(every_ms=1000, timezone="UTC"), "skip", "latest", "cron expression only"),
        (times.Spec(every_ms=1000), "sometimes", "latest", "overlap"),
        (times.Spec(every_ms=1000), "skip", "some", "catch-up"),
        (times.Spec(every_ms=1), "skip", "latest", r"at least 1s \(1000 ms\), not 1 ms"),
        (times.Spec(every_ms=999), "skip", "latest", "at least 1s"),
        (times.Spec(every_ms=-1000), "skip", "latest", "at least 1s"),
        (times.Spec(every_ms=2**62), "skip", "latest", r"at most 366d \(31622400000 ms\)"),
        (times.Spec(every_ms=2**63 - 1), "skip", "latest", "at most 366d"),
        (times.Spec(cron="0 0 31 2 *"), "skip", "latest", "never fires"),
        (times.Spec(cron="R 3 * * *"), "skip", "latest", r"random fields \(R\)"),
        (times.Spec(cron="0 r * * *"), "skip", "latest", "random fields"),
        (times.Spec(cron="R(0-29) 3 * * *"), "skip", "latest", "random fields"),
        (times.Spec(cron="R/5 * * * *"), "skip", "latest", "random fields"),
        (times.Spec(cron=",".join(["5"] * 600) + " * * * *"), "skip", "latest", "over the limit"),
        (times.Spec(cron="0 0 30 2 *"), "skip", "latest", "never fires"),
        (times.Spec(cron="0 0 31 4,6,9,11 *"), "skip", "latest", "never fires"),
        (times.Spec(cron="* * * * *", timezone="x" * 300), "skip", "latest", "unknown time zone"),
        (times.Spec(cron="* * * * *", timezone="Europe"), "skip", "latest", "unknown time zone"),
        (times.Spec(cron="* * * * *", timezone="zone.tab"), "skip", "latest", "unknown time"),
        (times.Spec(cron="* * * * *", timezone="a\x00b"), "skip", "latest", "unknown time zone"),
        (times.Spec(cron="* * * * *", timezone="/etc/passwd"), "skip", "latest", "unknown time"),
    ],
)
def test_bad_specs_are_refused(spec: times.Spec, overlap: str, catch_up: str, says: str) -> None:
    with pytest.raises(times.BadSpec, match=says):
        times.check(spec, overlap, catch_up)


@pytest.mark.parametrize("zone", ["x" * 300, "Europe", "zone.tab", "../../etc/passwd"])
def test_a_bad_time_zone_is_named_without_a_file_path(zone: str) -> None:
    with pytest.raises(times.BadSpec) as refused:
        times.check(times.Spec(cron="* * * * *", timezone=zone))
    message = str(refused.value)
    assert "Errno" not in message and "zoneinfo" not in message and "site-packages" not in message
    assert len(message) < 200


def test_the_interval_bounds_and_odd_but_working_cron_steps_are_accepted() -> None:
    every_minute = ",".join(str(m) for m in range(60))
    times.check(times.Spec(cron=f"{every_minute} * * * *"))
    times.check(times.Spec(every_ms=times.MIN_EVERY_MS))
    times.check(times.Spec(every_ms=times.MAX_EVERY_MS))
    times.check(times.Spec(cron="0 0 29 2 *"))  # every four years (eight across 2100)
    # croniter caps a step at the field's range: this is "at minute 0", hourly.
    huge_step = times.Spec(cron="*/1000000000000000000000 * * * *")
    times.check(huge_step)
    assert utc(times.next_after(huge_step, ms(2026, 1, 2, 10, 30))) == datetime.datetime(
        2026, 1, 2, 11, 0, tzinfo=datetime.UTC
    )


def test_upcoming_stops_before_a_slot_past_int64() -> None:
    # As stored by an older version that took any interval: listing it must not fail.
    assert times.upcoming(times.Spec(every_ms=2**62), 2**62, 2) == []
    assert times.upcoming(times.Spec(every_ms=2**63 - 1), 2**63 - 1, 2) == []
    assert times.upcoming(times.Spec(every_ms=2**61), 2**61, 3) == [2**62, 3 * 2**61]


def test_catch_up_latest_fires_the_last_missed_slot_only() -> None:
    spec = times.Spec(every_ms=1000)
    assert times.due(spec, 5000, 9500, "latest") == ([9000], 10_000)
    assert times.due(spec, 5000, 9500, "all") == ([5000, 6000, 7000, 8000, 9000], 10_000)
    assert times.due(spec, 5000, 4999, "all") == ([], 5000)


def test_catch_up_all_is_bounded() -> None:
    slots, nxt = times.due(times.Spec(every_ms=1), 1, 10 * times.MAX_CATCH_UP, "all")
    assert len(slots) == times.MAX_CATCH_UP
    assert slots[-1] == 10 * times.MAX_CATCH_UP
    assert nxt == 10 * times.MAX_CATCH_UP + 1


def _due_by_walking(
    spec: times.Spec, next_fire_ms: int, now_ms: int, catch_up: str
) -> tuple[list[int], int]:
    """`due` as it was: every slot from the first missed one walked (the reference)."""
    slots: list[int] = []
    at = next_fire_ms
    while at <= now_ms:
        slots.append(at)
        if len(slots) > times.MAX_CATCH_UP:
            del slots[0]
        at = times.next_after(spec, at)
    return (slots[-1:] if catch_up == "latest" else slots), at


_CASES = [
    (times.Spec(every_ms=1000), 3_000_000),
    (times.Spec(every_ms=7000), 30_000_000),
    (times.Spec(every_ms=86_400_000), 20 * 86_400_000),
    (times.Spec(cron="* * * * *"), 86_400_000),
    (times.Spec(cron="*/7 * * * *"), 2 * 86_400_000),
    # Daylight-saving changes skip and repeat 02:30 in Berlin (late March, late October).
    (times.Spec(cron="30 2 * * *", timezone="Europe/Berlin"), 400 * 86_400_000),
    (times.Spec(cron="0 12 * * 1-5", timezone="America/New_York"), 60 * 86_400_000),
    (times.Spec(cron="0 0 29 2 *"), 9 * 366 * 86_400_000),
]


@pytest.mark.parametrize(("spec", "span_ms"), _CASES)
@pytest.mark.parametrize("catch_up", ["latest", "all"])
def test_due_looks_back_only_as_far_as_it_must_and_agrees_with_a_full_walk(
    spec: times.Spec, span_ms: int, catch_up: str
) -> None:
    rng = random.Random(f"{spec}{catch_up}")
    base = 1_767_225_600_000  # 2026-01-01 UTC
    for _ in range(6):
        first = times.next_after(spec, base + rng.randrange(span_ms))
        now = first + rng.choice([0, 1, rng.randrange(span_ms), span_ms])
        assert times.due(spec, first, now, catch_up) == _due_by_walking(
            spec, first, now, catch_up
        ), (first, now)
    # A first slot that is no multiple of the interval (as a trigger can leave) is due too.
    if spec.every_ms:
        odd = base + spec.every_ms // 3
        assert times.due(spec, odd, odd + 5 * spec.every_ms, catch_up) == _due_by_walking(
            spec, odd, odd + 5 * spec.every_ms, catch_up
        )


def test_due_after_a_year_down_is_quick() -> None:
    # Walked slot by slot this took seconds on the event loop (31.6 million slots).
    year = 366 * 86_400_000
    slots, after = times.due(times.Spec(every_ms=1000), 1000, year, "all")
    assert len(slots) == times.MAX_CATCH_UP and slots[-1] == year and after == year + 1000
    minutely = times.Spec(cron="* * * * *")
    slots, after = times.due(minutely, 60_000, year, "latest")
    assert slots == [year] and after == year + 60_000


def test_schedules_have_a_table_prefix_of_their_own() -> None:
    others = [v for k, v in vars(keys).items() if k.isupper() and isinstance(v, bytes)]
    assert len(keys.SCHEDULES) == 2
    assert others.count(keys.SCHEDULES) == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"every_ms": 2**62, "next_fire_ms": 2**62},
        {"every_ms": 2**63 - 1, "next_fire_ms": 2**63 - 1},
        {"every_ms": 0, "cron": "0 0 1 1 *", "timezone": "Gone/Zone", "next_fire_ms": 5000},
    ],
)
def test_a_stored_schedule_out_of_todays_bounds_still_shows_its_next_slot(
    fields: dict[str, object],
) -> None:
    # Stored by an older version: the listing shows it (to be deleted), never fails.
    record = schedule("old", **fields)
    assert admin_schedules._next_fires(record) == [record.next_fire_ms]


# ---- The state machine


class FakeHost:
    """The partition as schedules see it: a store, live invocations, dedup by key."""

    def __init__(self, kv: KV) -> None:
        self.kv: KV = kv
        self.live: dict[str, Live] = {}
        self.bound: dict[str, str] = {}
        self.started: list[str] = []
        self.armed: list[int] = []
        self.conflicting: set[str] = set()

    def submit(self, batch: Batch) -> None:
        self.kv.write(batch.puts)  # "durable" at once
        for action in batch.actions:
            if isinstance(action, actions.ArmSchedule):
                self.armed.append(action.due_ms)

    def invoke_in(
        self, batch: Batch, service: str, method: str, key: str, request: bytes, ikey: str
    ) -> str:
        if ikey in self.conflicting:
            raise IdempotencyConflict("inv_other")
        if ikey in self.bound:
            return self.bound[ikey]
        invocation_id = f"inv_{len(self.bound)}"
        self.bound[ikey] = invocation_id
        self.started.append(ikey)
        self.live[invocation_id] = None  # type: ignore[assignment]  # running
        return invocation_id

    def end(self, invocation_id: str) -> None:
        del self.live[invocation_id]


def schedule(name: str = "tick", **fields: object) -> Schedule:
    base: dict[str, object] = {
        "service": "playground.Counter",
        "method": "Add",
        "key": "k",
        "every_ms": 1000,
        "overlap": "allow",
        "catch_up": "latest",
    }
    base.update(fields)
    return Schedule(name=name, **base)  # type: ignore[arg-type]


def test_fires_each_slot_once_with_its_idempotency_key() -> None:
    host = FakeHost(MemoryKV())
    book = Schedules(host)
    book.create(schedule(), now=10_500)
    assert host.armed == [11_000]
    book.on_due("tick", 10_999)
    assert host.started == []
    book.on_due("tick", 11_000)
    book.on_due("tick", 11_000)  # a stale clock entry: nothing more
    book.on_due("tick", 12_100)
    assert host.started == ["schedule:tick:11000", "schedule:tick:12000"]
    assert name_of("schedule:tick:11000") == "tick"
    record = table.get(host.kv, "tick")
    assert record is not None
    assert record.next_fire_ms == 13_000
    assert [f.fire_ms for f in record.recent] == [11_000, 12_000]


def test_recovery_after_a_crash_fires_the_missed_slots_by_policy() -> None:
    kv = MemoryKV()
    host = FakeHost(kv)
    book = Schedules(host)
    book.create(schedule("latest"), now=500)
    book.create(schedule("all", catch_up="all"), now=500)
    book.on_due("latest", 1000)
    book.on_due("all", 1000)
    # "Crash": a new partition on the same store, the clock 3.5 slots later.
    again = FakeHost(kv)
    again.bound = dict(host.bound)  # the idempotency table survives
    book = Schedules(again)
    book.recover()
    assert sorted(again.armed) == [2000, 2000]
    book.on_due("latest", 4500)
    book.on_due("all", 4500)
    assert again.started == [
        "schedule:latest:4000",
        "schedule:all:2000",
        "schedule:all:3000",
        "schedule:all:4000",
    ]


def test_a_firing_whose_batch_was_durable_is_not_started_again() -> None:
    host = FakeHost(MemoryKV())
    book = Schedules(host)
    book.create(schedule(), now=500)
    # The schedule's record lags (as if written in a batch lost to a crash).
    host.bound["schedule:tick:1000"] = "inv_earlier"
    book.on_due("tick", 1000)
    assert host.started == []
    assert book.get("tick").last_invocation_id == "inv_earlier"


def test_a_slot_whose_key_names_another_request_is_skipped_and_the_rest_fire() -> None:
    # An attack took a coming slot's key with another request: the conflict dropped the
    # batch of every slot fired with it, and the schedule never fired again.
    host = FakeHost(MemoryKV())
    book = Schedules(host)
    book.create(schedule(catch_up="all"), now=500)
    host.conflicting.add("schedule:tick:2000")
    book.on_due("tick", 3000)
    assert host.started == ["schedule:tick:1000", "schedule:tick:3000"]
    record = table.get(host.kv, "tick")
    assert record is not None
    assert (record.skipped, record.fired, record.next_fire_ms) == (1, 2, 4000)


def test_overlap_skip_and_queue_one() -> None:
    host = FakeHost(MemoryKV())
    book = Schedules(host)
    book.create(schedule("skip", overlap="skip"), now=500)
    book.create(schedule("q", overlap="queue-one"), now=500)
    for name in ("skip", "q"):
        book.on_due(name, 1000)
        book.on_due(name, 2000)  # the first still runs
        book.on_due(name, 3000)
    assert host.started == ["schedule:skip:1000", "schedule:q:1000"]
    assert book.get("skip").skipped == 2
    assert book.get("q").queued_fire_ms == 3000  # the newer slot replaced the older
    host.end(book.get("q").last_invocation_id)
    book.on_due("q", 3100)  # the firing ended (the driver looks again)
    assert host.started[-1] == "schedule:q:3000"
    assert book.get("q").queued_fire_ms == 0


def test_pause_resume_trigger_delete() -> None:
    host = FakeHost(MemoryKV())
    book = Schedules(host)
    book.create(schedule(), now=500)
    book.pause("tick")
    book.on_due("tick", 5000)
    assert host.started == []
    book.resume("tick", now=5500)  # paused slots are not caught up
    assert book.get("tick").next_fire_ms == 6000
    book.trigger("tick", now=5600)
    assert host.started == ["schedule:tick:5600"]
    book.delete("tick")
    book.on_due("tick", 9000)
    assert host.started == ["schedule:tick:5600"]
    assert table.get(host.kv, "tick") is None


# ---- brokerctl's arguments


def test_durations_and_targets_parse() -> None:
    assert sched.duration_ms("30s") == 30_000
    assert sched.duration_ms("1h30m") == 5_400_000
    assert sched.duration_ms("1500ms") == 1500
    assert sched.duration_ms("366d") == times.MAX_EVERY_MS
    for bad in ("", "30", "1x", "0s", "s30", "1s 2"):
        with pytest.raises(argparse.ArgumentTypeError):
            sched.duration_ms(bad)
    # The broker's bounds, said before a request is built (past int64 it could not be).
    for short in ("1ms", "999ms", "500ms"):
        with pytest.raises(argparse.ArgumentTypeError, match="at least 1s"):
            sched.duration_ms(short)
    for long in ("367d", "99999999999d", "999999999999999999999d"):
        with pytest.raises(argparse.ArgumentTypeError, match="at most 366d"):
            sched.duration_ms(long)
    assert sched.target("playground.Counter/Add") == ("playground.Counter", "Add")
    with pytest.raises(argparse.ArgumentTypeError, match="SERVICE/METHOD"):
        sched.target("playground.Counter")


def test_a_slot_past_year_9999_is_shown_as_a_number() -> None:
    info = admin_pb2.ScheduleInfo(next_fires_ms=[2**62])
    info.schedule.CopyFrom(schedule(every_ms=2**62, next_fire_ms=2**62))
    assert f"next:      {2**62} ms after the epoch" in sched.format_info(info)
