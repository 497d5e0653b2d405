"""Durable schedules against a real broker and the playground service: firings across a
SIGKILL (once per slot, never twice), pause and resume, trigger, delete, overlap, bad
definitions refused through brokerctl and the admin API with nothing stored, and a record
an older version stored out of today's bounds still listed."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from durable.v1 import admin_pb2, invocation_pb2

from broker.storage import Batch, RocksKV
from broker.storage import schedules as table
from tests.integration.test_brokerctl import brokerctl, ok_json
from tests.support import PLAYGROUND, Cluster, wait_for

Status = invocation_pb2.InvocationStatus
COUNTER = "playground.Counter"
ADD_K = [COUNTER + "/Add", "--key", "k", "{}"]


def create(cluster: Cluster, name: str, key: str, **fields: object) -> admin_pb2.ScheduleInfo:
    request = admin_pb2.CreateScheduleRequest(
        name=name,
        service=COUNTER,
        method=str(fields.pop("method", "Add")),
        key=key,
        request_json=str(fields.pop("request_json", '{"amount": 1}')),
        **fields,  # type: ignore[arg-type]
    )
    info: admin_pb2.ScheduleInfo = cluster.admin.CreateSchedule(request, timeout=10)
    return info


def describe(cluster: Cluster, name: str) -> admin_pb2.ScheduleInfo:
    info: admin_pb2.ScheduleInfo = cluster.admin.DescribeSchedule(
        admin_pb2.ScheduleRequest(name=name), timeout=10
    )
    return info


def fire_times(cluster: Cluster, name: str) -> list[int]:
    """The slot of every invocation the schedule started, from their idempotency keys
    (duplicates kept, so that a test can assert there are none)."""
    prefix = f"schedule:{name}:"
    return sorted(
        int(i.idempotency_key[len(prefix) :])
        for i in cluster.invocations(service=COUNTER)
        if i.idempotency_key.startswith(prefix)
    )


def fired(cluster: Cluster, name: str, at_least: int) -> list[int]:
    """The schedule's fire times, once there are at least `at_least`."""

    def enough() -> list[int] | None:
        times = fire_times(cluster, name)
        return times if len(times) >= at_least else None

    return wait_for(
        enough,
        timeout=30,
        message=f"{name} to fire {at_least} time(s)",
    )


def test_every_second_fires_once_per_slot_across_a_broker_sigkill(tmp_path: Path) -> None:
    with Cluster(tmp_path, services=(PLAYGROUND,)) as cluster:
        create(cluster, "all", "all", every_ms=1000, catch_up="all", overlap="allow")
        create(cluster, "latest", "latest", every_ms=1000, catch_up="latest", overlap="allow")
        fired(cluster, "all", 3)
        fired(cluster, "latest", 3)
        cluster.kill_broker()
        down_from = int(time.time() * 1000)
        # The broker stays down across at least two slots (time passing is the test).
        time.sleep(2.5)
        restart_at = int(time.time() * 1000)
        cluster.start_broker()
        # Slots are missed until the restarted broker has recovered its schedules, which
        # it does before it answers health checks (seconds on a loaded machine).
        back_up = int(time.time() * 1000)
        fired(cluster, "all", len(fire_times(cluster, "all")) + 2)
        fired(cluster, "latest", len(fire_times(cluster, "latest")) + 2)
        for name in ("all", "latest"):
            cluster.admin.DeleteSchedule(admin_pb2.ScheduleRequest(name=name), timeout=10)

        every = fire_times(cluster, "all")
        latest = fire_times(cluster, "latest")
        for slots in (every, latest):
            assert len(slots) == len(set(slots)), f"a slot fired twice: {slots}"
            assert all(s % 1000 == 0 for s in slots)
        # catch-up all: every slot from the first to the last, the downtime's too.
        assert every == list(range(every[0], every[-1] + 1000, 1000))
        # catch-up latest: the slots missed while down collapse into one firing.
        missed = [s for s in range(latest[0], latest[-1] + 1000, 1000) if s not in latest]
        assert missed, f"expected a gap while the broker was down: {latest}"
        assert all(down_from - 1000 <= s <= back_up for s in missed), (missed, down_from, back_up)
        # Of the slots that passed while it was down, at most one fired (the latest).
        assert len([s for s in latest if down_from < s <= restart_at]) <= 1

        # Each firing ran exactly once: the counters add up to the firings.
        def totals() -> tuple[int, int] | None:
            done = {
                i.idempotency_key for i in cluster.invocations(status="COMPLETED", service=COUNTER)
            }
            if len(done) < len(every) + len(latest):
                return None
            return (
                cluster.state(COUNTER, "all")["total"],
                cluster.state(COUNTER, "latest")["total"],
            )

        assert wait_for(totals, message="every firing to complete") == (len(every), len(latest))


def test_pause_resume_trigger_and_delete(tmp_path: Path) -> None:
    with Cluster(tmp_path, services=(PLAYGROUND,)) as cluster:
        admin = cluster.admin_address
        out = ok_json(
            admin,
            "schedules", "create", "tick", "--every", "1s", COUNTER + "/Add",
            "--key", "tick", '{"amount": 1}',
        )  # fmt: skip
        assert out["schedule"]["every_ms"] == "1000"
        fired(cluster, "tick", 1)

        ok_json(admin, "schedules", "pause", "tick")
        paused_at = len(fire_times(cluster, "tick"))
        described = ok_json(admin, "schedules", "describe", "tick")
        assert described["schedule"]["paused"] is True
        assert described.get("next_fires_ms", []) == []
        time.sleep(2.5)  # slots pass while paused
        # A firing in flight when the pause landed may still be listed; none after it.
        assert len(fire_times(cluster, "tick")) <= paused_at + 1
        settled = len(fire_times(cluster, "tick"))

        ok_json(admin, "schedules", "resume", "tick")
        fired(cluster, "tick", settled + 1)
        ok_json(admin, "schedules", "pause", "tick")

        # A schedule that would not fire for a year runs now when triggered.
        ok_json(
            admin, "schedules", "create", "yearly", "--cron", "0 0 1 1 *",
            "--timezone", "Europe/Berlin", COUNTER + "/Add", "--key", "yearly", '{"amount": 5}',
        )  # fmt: skip
        before = int(time.time() * 1000)
        ok_json(admin, "schedules", "trigger", "yearly")
        [slot] = fired(cluster, "yearly", 1)
        assert slot >= before

        def completed() -> admin_pb2.ScheduleInfo | None:
            info = describe(cluster, "yearly")
            return info if info.last_status == Status.COMPLETED else None

        last = wait_for(completed, message="the triggered firing to complete")
        assert last.last_outcome == admin_pb2.OUTCOME_SUCCEEDED
        assert last.schedule.last_invocation_id
        assert len(last.next_fires_ms) == 3
        assert cluster.state(COUNTER, "yearly")["total"] == 5
        human = brokerctl(admin, "schedules", "describe", "yearly")
        assert human.returncode == 0
        assert "Europe/Berlin" in human.stdout and last.schedule.last_invocation_id in human.stdout

        # Delete stops it: resumed, then deleted, it fires no more.
        ok_json(admin, "schedules", "resume", "tick")
        ok_json(admin, "schedules", "delete", "tick")
        gone = brokerctl(admin, "schedules", "describe", "tick")
        assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr
        count = len(fire_times(cluster, "tick"))
        time.sleep(2.0)
        assert len(fire_times(cluster, "tick")) <= count + 1  # at most one already on its way
        listed = ok_json(admin, "schedules", "list")
        assert [s["schedule"]["name"] for s in listed["schedules"]] == ["yearly"]


def test_overlap_skip_does_not_start_a_firing_while_the_last_runs(tmp_path: Path) -> None:
    with Cluster(tmp_path, suspend_after="100ms", services=(PLAYGROUND,)) as cluster:
        # Hold keeps its key for 2.5 s: with skip, the slots in between are skipped.
        create(
            cluster, "slow", "slow", method="Hold",
            request_json='{"amount": 1, "millis": 2500}', every_ms=1000,
        )  # fmt: skip
        wait_for(lambda: describe(cluster, "slow").schedule.skipped >= 2, message="skips")
        info = describe(cluster, "slow")
        cluster.admin.DeleteSchedule(admin_pb2.ScheduleRequest(name="slow"), timeout=10)
        running = [
            i
            for i in cluster.invocations(service=COUNTER)
            if i.idempotency_key.startswith("schedule:slow:") and i.status != Status.COMPLETED
        ]
        assert len(running) <= 1
        assert info.schedule.fired >= 1


def test_overlap_queue_one_fires_a_waiting_slot_when_the_last_ends(tmp_path: Path) -> None:
    with Cluster(tmp_path, suspend_after="100ms", services=(PLAYGROUND,)) as cluster:
        create(
            cluster, "queued", "queued", method="Hold", overlap="queue-one",
            request_json='{"amount": 1, "millis": 2500}', every_ms=1000,
        )  # fmt: skip
        first, second = fired(cluster, "queued", 2)[:2]
        info = describe(cluster, "queued")
        cluster.admin.DeleteSchedule(admin_pb2.ScheduleRequest(name="queued"), timeout=10)
        # The second firing is a slot that waited for the first to end: not the
        # next slot, and slots in between were replaced by newer ones (it holds 2.5 s).
        assert second - first >= 2000
        assert info.schedule.skipped >= 1
        started = {
            i.idempotency_key: i
            for i in cluster.invocations(service=COUNTER)
            if i.idempotency_key.startswith("schedule:queued:")
        }
        one = started[f"schedule:queued:{first}"]
        two = started[f"schedule:queued:{second}"]
        # It started once the first was done (queued), not at its own slot.
        assert two.created_at_ms >= one.created_at_ms + 2000


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--cron", "61 * * * *", *ADD_K], "INVALID_ARGUMENT", "cron"),
        (["--cron", "* * *", *ADD_K], "INVALID_ARGUMENT", "5 fields"),
        (
            ["--cron", "* * * * *", "--timezone", "Mars/Base", *ADD_K],
            "INVALID_ARGUMENT",
            "time zone",
        ),
        (["--every", "1s", "playground.Nope/Add", "--key", "k", "{}"], "NOT_FOUND", "Nope"),
        (["--every", "1s", COUNTER + "/Nope", "--key", "k", "{}"], "NOT_FOUND", "Nope"),
        (["--every", "1s", COUNTER + "/Add", "{}"], "INVALID_ARGUMENT", "--key"),
        (
            ["--every", "1s", COUNTER + "/Add", "--key", "k", '{"amount": "lots"}'],
            "INVALID_ARGUMENT",
            "playground.AddRequest",
        ),
        (
            ["--every", "1s", COUNTER + "/Add", "--key", "k", "{}", "--cron", "* * * * *"],
            "INVALID_ARGUMENT",
            "exactly one",
        ),
        (["--every", "1s", *ADD_K], "ALREADY_EXISTS", "exists"),
        (["--cron", "0 0 31 2 *", *ADD_K], "INVALID_ARGUMENT", "never fires"),
        (
            ["--cron", "* * * * *", "--timezone", "x" * 300, *ADD_K],
            "INVALID_ARGUMENT",
            "unknown time zone",
        ),
    ],
)
def test_bad_definitions_are_refused_and_nothing_is_stored(
    shared_cluster: Cluster,
    args: list[str],
    code: str,
    says: str,
) -> None:
    # A valid definition under the name in use ("good") must be refused too.
    name = "good" if code == "ALREADY_EXISTS" else "bad"
    result = brokerctl(shared_cluster.admin_address, "schedules", "create", name, *args)
    assert result.returncode == 1, result.stdout
    assert code in result.stderr and says in result.stderr, result.stderr
    listed = ok_json(shared_cluster.admin_address, "schedules", "list")
    assert [s["schedule"]["name"] for s in listed["schedules"]] == ["good"]
    with pytest.raises(grpc.RpcError) as missing:
        describe(shared_cluster, "bad")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"every_ms": 2**62}, "at most 366d (31622400000 ms)"),
        ({"every_ms": 2**63 - 1}, "at most 366d"),
        ({"every_ms": 10**13}, "at most 366d"),
        ({"every_ms": 1}, "at least 1s (1000 ms)"),
        ({"every_ms": 999}, "at least 1s"),
        ({"cron": "0 0 31 2 *"}, "never fires"),
        ({"cron": "0 0 30 2 *"}, "never fires"),
        ({"cron": "* * * * *", "timezone": "x" * 300}, "unknown time zone"),
        ({"cron": "* * * * *", "timezone": "Europe"}, "unknown time zone"),
        ({"cron": "* * * * *", "timezone": "../../etc/passwd"}, "unknown time zone"),
    ],
)
def test_out_of_range_timings_are_refused_through_the_admin_api(
    shared_cluster: Cluster, fields: dict[str, object], says: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        create(shared_cluster, "bad", "bad", **fields)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    details = refused.value.details() or ""
    assert says in details
    assert "Errno" not in details and "site-packages" not in details, details
    listed = shared_cluster.admin.ListSchedules(admin_pb2.ListSchedulesRequest(), timeout=10)
    assert [i.schedule.name for i in listed.schedules] == ["good"]
    with pytest.raises(grpc.RpcError) as missing:
        describe(shared_cluster, "bad")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(("every", "says"), [("500ms", "at least 1s"), ("99999999999d", "366d")])
def test_brokerctl_refuses_an_out_of_range_interval_before_asking(
    shared_cluster: Cluster, every: str, says: str
) -> None:
    admin = shared_cluster.admin_address
    result = brokerctl(admin, "schedules", "create", "bad", "--every", every, *ADD_K)
    assert result.returncode == 2, result.stdout
    assert says in result.stderr and "Traceback" not in result.stderr, result.stderr
    listed = ok_json(admin, "schedules", "list")
    assert [s["schedule"]["name"] for s in listed["schedules"]] == ["good"]


def test_a_stored_interval_past_int64_slots_is_listed_and_can_be_deleted(tmp_path: Path) -> None:
    with Cluster(tmp_path, services=(PLAYGROUND,)) as cluster:
        create(cluster, "fine", "fine", cron="0 0 1 1 *")
        create(cluster, "huge", "huge", cron="0 0 1 1 *")
        assert cluster.broker.terminate() == 0
        # What an older version, which took any interval, stored for every_ms=2**62.
        kv = RocksKV(str(cluster.data_dir))
        try:
            record = table.get(kv, "huge")
            assert record is not None
            record.cron, record.every_ms, record.next_fire_ms = "", 2**62, 2**62
            batch = Batch()
            table.put(batch, record)
            kv.write(batch.puts)
            kv.sync()
        finally:
            kv.close()
        cluster.start_broker()

        listed = cluster.admin.ListSchedules(admin_pb2.ListSchedulesRequest(), timeout=10)
        by_name = {i.schedule.name: i for i in listed.schedules}
        assert sorted(by_name) == ["fine", "huge"]
        assert list(by_name["huge"].next_fires_ms) == [2**62]
        assert len(by_name["fine"].next_fires_ms) == 3
        assert list(describe(cluster, "huge").next_fires_ms) == [2**62]
        for verb in (["list"], ["describe", "huge"]):
            human = brokerctl(cluster.admin_address, "schedules", *verb)
            assert human.returncode == 0 and str(2**62) in human.stdout, human.stderr
        ok_json(cluster.admin_address, "schedules", "delete", "huge")
        listed = ok_json(cluster.admin_address, "schedules", "list")
        assert [s["schedule"]["name"] for s in listed["schedules"]] == ["fine"]


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("schedules"), services=(PLAYGROUND,)) as cluster:
        create(cluster, "good", "good", cron="0 0 1 1 *")
        yield cluster


def test_the_json_is_printed_as_json(shared_cluster: Cluster) -> None:
    out = json.loads(
        brokerctl(shared_cluster.admin_address, "--json", "schedules", "describe", "good").stdout
    )
    assert out["schedule"]["name"] == "good"


def test_the_human_listing(shared_cluster: Cluster) -> None:
    out = brokerctl(shared_cluster.admin_address, "schedules", "list")
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "TARGET", "WHEN", "STATE", "NEXT", "FIRED"]
    assert row.startswith("good") and "playground.Counter/Add" in row and "active" in row


def test_the_listing_pages_by_name_through_the_api_and_brokerctl(shared_cluster: Cluster) -> None:
    admin = shared_cluster.admin_address
    extra = ["page-a", "page-b", "page-c", "page-d"]
    try:
        for name in extra:
            create(shared_cluster, name, name, cron="0 0 1 1 *")
        names = ["good", *extra]
        walked: list[list[str]] = []
        request = admin_pb2.ListSchedulesRequest(limit=2)
        while True:
            page = shared_cluster.admin.ListSchedules(request, timeout=10)
            assert page.total == len(names)
            walked.append([i.schedule.name for i in page.schedules])
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        assert walked == [names[0:2], names[2:4], names[4:5]]
        whole = shared_cluster.admin.ListSchedules(
            admin_pb2.ListSchedulesRequest(limit=4_000_000_000), timeout=10
        )
        assert [i.schedule.name for i in whole.schedules] == names
        assert whole.next_page_token == ""

        # brokerctl prints one page and, on stderr, how to get the next.
        first = brokerctl(admin, "schedules", "list", "--limit", "3")
        assert first.returncode == 0, first.stderr
        assert [line.split()[0] for line in first.stdout.splitlines()[1:]] == names[:3]
        hint = "more follow: run the same command with --page-token "
        assert first.stderr.startswith(hint), first.stderr
        token = first.stderr.strip()[len(hint) :]
        rest = ok_json(admin, "schedules", "list", "--limit", "3", "--page-token", token)
        assert [s["schedule"]["name"] for s in rest["schedules"]] == names[3:]
        assert (rest["next_page_token"], rest["total"]) == ("", len(names))
        bad = brokerctl(admin, "schedules", "list", "--page-token", "nope")
        assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr, bad.stderr
    finally:
        for name in extra:  # the module's other tests list "good" alone
            with contextlib.suppress(grpc.RpcError):  # not created: the test failed first
                shared_cluster.admin.DeleteSchedule(
                    admin_pb2.ScheduleRequest(name=name), timeout=10
                )
