"""The admin API's queries for operators' tools (the web console): ListInvocations
pages and filters, GetStats, DescribeKey and ListAwaiting (and its limit), against a real
broker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from durable.v1 import admin_pb2
from playground import playground_pb2 as pb
from trips import trips_pb2

from tests.support import (
    PLAYGROUND,
    SERVICES,
    Cluster,
    invocation_id_of,
    running_cluster,
    wait_for,
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp: Path = tmp_path_factory.mktemp("admin-queries")
    with running_cluster(tmp, services=(*SERVICES, PLAYGROUND)) as running:
        yield running


def _list(cluster: Cluster, **fields: object) -> admin_pb2.ListInvocationsResponse:
    request = admin_pb2.ListInvocationsRequest(**fields)  # type: ignore[arg-type]
    response: admin_pb2.ListInvocationsResponse = cluster.admin.ListInvocations(request, timeout=10)
    return response


def _trips(cluster: Cluster) -> tuple[list[str], list[str]]:
    """Three trips that succeed and two that fail; their invocation ids, oldest first."""
    ok: list[str] = []
    failed: list[str] = []
    for run_type in ("", "failPayment", "", "failPayment", ""):
        request = (
            trips_pb2.ReserveTripRequest(run_type=run_type)
            if run_type
            else trips_pb2.ReserveTripRequest()
        )
        try:
            _, call = cluster.trips.Reserve.with_call(
                request,
                metadata=(("idempotency-key", f"trip-{len(ok) + len(failed)}"),),
                timeout=60,
            )
            ok.append(invocation_id_of(call))
        except grpc.RpcError as e:
            failed.append(invocation_id_of(e))
    return ok, failed


def test_pages_filters_and_outcomes_before_and_after_a_restart(cluster: Cluster) -> None:
    started = int(time.time() * 1000)
    ok, failed = _trips(cluster)
    everything = [*ok, *failed]
    for restarted in (False, True):
        if restarted:  # the index of completed invocations is rebuilt from storage
            cluster.restart_broker()
            wait_for(lambda: _list(cluster, service="trips.Trips").total == 5, message="index")
        listed = _list(cluster, service="trips.Trips")
        assert listed.total == 5
        ids = [i.id for i in listed.invocations]
        assert sorted(ids) == sorted(everything)
        created = [i.created_at_ms for i in listed.invocations]
        assert created == sorted(created, reverse=True), "newest first"
        pages = [
            [i.id for i in _list(cluster, service="trips.Trips", limit=2, offset=o).invocations]
            for o in (0, 2, 4, 6)
        ]
        assert pages == [ids[0:2], ids[2:4], ids[4:5], []]
        assert _list(cluster, service="trips.Trips", limit=2, offset=4).total == 5

        succeeded = _list(cluster, service="trips.Trips", outcome=admin_pb2.OUTCOME_SUCCEEDED)
        assert sorted(i.id for i in succeeded.invocations) == sorted(ok)
        fails = _list(cluster, service="trips.Trips", outcome=admin_pb2.OUTCOME_FAILED)
        assert sorted(i.id for i in fails.invocations) == sorted(failed)
        code = fails.invocations[0].result.failure.code
        assert _list(cluster, outcome=admin_pb2.OUTCOME_FAILED, failure_code=code).total >= 2
        other = 5 if code != 5 else 6
        assert (
            _list(
                cluster, service="trips.Trips", outcome=admin_pb2.OUTCOME_FAILED, failure_code=other
            ).total
            == 0
        )

        # Alone it was ignored: every invocation listed, as if no filter were given.
        for outcome in (0, admin_pb2.OUTCOME_SUCCEEDED):
            with pytest.raises(grpc.RpcError) as alone:
                _list(cluster, outcome=outcome, failure_code=code)
            assert alone.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "give it with outcome OUTCOME_FAILED" in (alone.value.details() or "")

        assert [i.id for i in _list(cluster, idempotency_key="trip-1").invocations] == [failed[0]]
        assert _list(cluster, service="trips.Trips", method="Nope").total == 0
        assert _list(cluster, service="trips.Trips", method="Reserve").total == 5
        assert _list(cluster, service="trips.Trips", created_after_ms=started).total == 5
        assert _list(cluster, service="trips.Trips", created_before_ms=started).total == 0

        stats: admin_pb2.GetStatsResponse = cluster.admin.GetStats(
            admin_pb2.GetStatsRequest(), timeout=10
        )
        assert stats.complete
        assert stats.succeeded >= 3 and stats.failed >= 2
        assert stats.failed_by_code[code] >= 2
        assert stats.by_status["COMPLETED"] == stats.succeeded + stats.failed


def test_pages_walk_with_page_tokens_and_the_limit_is_capped(cluster: Cluster) -> None:
    made = set()
    for amount in range(8):
        _, call = cluster.counter.Add.with_call(
            pb.AddRequest(name="pages", amount=amount), timeout=30
        )
        made.add(invocation_id_of(call))
    whole = _list(cluster, service="playground.Counter", key="pages")
    ids = [i.id for i in whole.invocations]
    order = [(i.created_at_ms, i.id) for i in whole.invocations]
    assert set(ids) == made and order == sorted(order, reverse=True)
    assert whole.next_page_token == ""

    walked: list[list[str]] = []
    token = ""
    while True:
        page = _list(cluster, service="playground.Counter", key="pages", limit=3, page_token=token)
        assert page.total == 8
        walked.append([i.id for i in page.invocations])
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in walked] == [3, 3, 2]
    assert [i for p in walked for i in p] == ids, "each once, newest first"
    # An offset page says whether more follow, and its token goes on from there.
    third = _list(cluster, service="playground.Counter", key="pages", limit=2, offset=2)
    assert [i.id for i in third.invocations] == ids[2:4]
    after = _list(
        cluster, service="playground.Counter", key="pages", page_token=third.next_page_token
    )
    assert [i.id for i in after.invocations] == ids[4:]
    last = _list(cluster, service="playground.Counter", key="pages", limit=2, offset=6)
    assert last.next_page_token == ""

    # More than 1000 asked: 1000 at most (here every invocation), no error.
    everything = _list(cluster, limit=4_000_000_000)
    assert len(everything.invocations) == min(everything.total, 1000)


def test_a_key_its_state_inbox_and_promises_and_what_awaits(cluster: Cluster) -> None:
    cluster.counter.Add(pb.AddRequest(name="q1", amount=5), timeout=30)
    holder = cluster.counter.Hold.future(
        pb.AddRequest(name="q1", amount=1, millis=60_000), timeout=120
    )
    queued = cluster.counter.Add.future(pb.AddRequest(name="q1", amount=2), timeout=120)

    def key() -> admin_pb2.DescribeKeyResponse:
        request = admin_pb2.DescribeKeyRequest(service="playground.Counter", key="q1")
        response: admin_pb2.DescribeKeyResponse = cluster.admin.DescribeKey(request, timeout=10)
        return response

    described = wait_for(lambda: key() if key().inbox else None, message="a queued invocation")
    assert described.state["total"] == b"5"
    assert described.holder and described.holder not in described.inbox
    assert described.inbox_length == len(described.inbox) == 1
    assert cluster.invocation(described.holder).method == "Hold"
    assert cluster.invocation(described.inbox[0]).method == "Add"
    cluster.kill(described.holder)
    assert queued.result(timeout=60).number == 7
    with pytest.raises(grpc.RpcError):
        holder.result(timeout=60)

    signup = cluster.signup.Run.future(pb.SignupRequest(user="ann", email="a@x"), timeout=120)
    waiter = cluster.waiter.Await.future(pb.AwaitRequest(), timeout=120)

    def awaiting() -> admin_pb2.ListAwaitingResponse | None:
        response: admin_pb2.ListAwaitingResponse = cluster.admin.ListAwaiting(
            admin_pb2.ListAwaitingRequest(), timeout=10
        )
        return response if response.awakeables and response.promises else None

    listed = wait_for(awaiting, message="an awakeable and a promise awaited")
    assert [(p.service, p.key, p.name) for p in listed.promises] == [
        ("playground.Signup", "ann", "verified")
    ]
    run_id = listed.promises[0].waiting[0]
    assert cluster.invocation(run_id).method == "Run"
    workflow = cluster.admin.DescribeKey(
        admin_pb2.DescribeKeyRequest(service="playground.Signup", key="ann"), timeout=10
    )
    assert [(p.name, p.HasField("result"), list(p.waiting)) for p in workflow.promises] == [
        ("verified", False, [run_id])
    ]
    awakeable = listed.awakeables[0]
    assert awakeable.service == "playground.Waiter" and awakeable.method == "Await"
    assert cluster.awakeable_id(awakeable.invocation_id) == awakeable.awakeable_id
    assert awakeable.created_at_ms == cluster.invocation(awakeable.invocation_id).created_at_ms
    assert (listed.total_awakeables, listed.total_promises) == (1, 1)

    cluster.complete_promise("playground.Signup", "ann", "verified", value="123")
    cluster.resolve_awakeable(awakeable.awakeable_id, {"ok": True})
    assert signup.result(timeout=60).text == "welcome a@x"
    assert waiter.result(timeout=60).text == '{"ok": true}'
    workflow = cluster.admin.DescribeKey(
        admin_pb2.DescribeKeyRequest(service="playground.Signup", key="ann"), timeout=10
    )
    assert [(p.name, p.result.value) for p in workflow.promises] == [("verified", b'"123"')]


def _awaiting(cluster: Cluster, limit: int = 0) -> admin_pb2.ListAwaitingResponse:
    response: admin_pb2.ListAwaitingResponse = cluster.admin.ListAwaiting(
        admin_pb2.ListAwaitingRequest(limit=limit), timeout=10
    )
    return response


def test_what_awaits_is_listed_oldest_first_cut_to_the_limit_and_counted(
    cluster: Cluster,
) -> None:
    calls = []
    for n in range(3):  # one at a time: each created after the last is listed
        calls.append(cluster.waiter.Await.future(pb.AwaitRequest(), timeout=120))
        wait_for(
            lambda: len(_awaiting(cluster).awakeables) == n + 1 or None,  # noqa: B023
            message=f"awakeable {n + 1}",
        )
    everything = _awaiting(cluster)
    created = [a.created_at_ms for a in everything.awakeables]
    assert everything.total_awakeables == 3 and created == sorted(created)

    for limit, listed in ((1, 1), (2, 2), (3, 3), (1000, 3), (4_000_000_000, 3)):
        cut = _awaiting(cluster, limit)
        assert list(cut.awakeables) == list(everything.awakeables)[:listed], limit
        assert cut.total_awakeables == 3, limit

    for n, awakeable in enumerate(everything.awakeables):
        cluster.resolve_awakeable(awakeable.awakeable_id, n)
    assert sorted(c.result(timeout=60).text for c in calls) == ["0", "1", "2"]
    assert _awaiting(cluster).total_awakeables == 0


def test_describe_key_refuses_what_is_not_a_key(cluster: Cluster) -> None:
    with pytest.raises(grpc.RpcError) as e:
        cluster.admin.DescribeKey(
            admin_pb2.DescribeKeyRequest(service="trips.Trips", key="k"), timeout=10
        )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        cluster.admin.DescribeKey(
            admin_pb2.DescribeKeyRequest(service="playground.Counter", key="k" * 70_000), timeout=10
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_broker_stamps_when_entries_were_journaled_and_completed(cluster: Cluster) -> None:
    before = int(time.time() * 1000)
    _, call = cluster.trips.Reserve.with_call(trips_pb2.ReserveTripRequest(), timeout=60)
    after = int(time.time() * 1000)
    journal = cluster.describe(invocation_id_of(call)).journal
    stamped = list(journal)[1:]  # the input is journaled with the record, which has the time
    assert [e.WhichOneof("command") for e in stamped][:2] == ["call", "call"]
    appended = [e.appended_at_ms for e in stamped]
    assert all(before <= t <= after for t in appended)
    assert appended == sorted(appended), "journaled in order"
    for entry in stamped:
        if entry.HasField("result"):
            assert entry.appended_at_ms <= entry.completed_at_ms <= after, entry
        else:
            assert not entry.HasField("completed_at_ms")
    calls = [e for e in stamped if e.HasField("call")]
    assert all(e.completed_at_ms >= e.appended_at_ms for e in calls)
