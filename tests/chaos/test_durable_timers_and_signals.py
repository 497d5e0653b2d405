"""Timers, signals and combinators survive crashes: SIGKILL the broker or the service while
an invocation waits, and it still completes as if nothing had happened.

One cluster (the broker and `services.playground`) per broker `--suspend-after`: "1s" (the
handler holds its stream while it waits, so a crash breaks a live attempt) and "0" (it has
suspended; the broker alone remembers what it waits for). Every test leaves the cluster
running; an autouse fixture restarts whatever a failed test left down.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from playground import playground_pb2 as pb

from tests.support import PLAYGROUND, Cluster, Status, invocation_id_of

BROKER_ARGS = ["--retry-initial", "100ms", "--retry-max", "500ms"]
CALL_TIMEOUT_S = 60.0
WAITER = "playground.Waiter"

pytestmark = pytest.mark.parametrize(
    "cluster",
    [
        pytest.param(
            {"suspend_after": after, "services": (PLAYGROUND,), "broker_args": BROKER_ARGS},
            id=f"suspend-after-{after}",
        )
        for after in ("1s", "0")
    ],
    indirect=True,
)


@pytest.fixture(autouse=True)
def revive(cluster: Cluster) -> Iterator[None]:
    """Every test starts with every process up, whatever the previous one left behind."""
    cluster.ensure_running()
    yield


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def idempotent(key: str) -> tuple[tuple[str, str], ...]:
    return (("idempotency-key", key),)


def started(cluster: Cluster, service: str, key: str, method: str = "") -> str:
    """The id of the invocation started with idempotency key `key` (waits for it)."""
    found = cluster.wait_for(
        lambda: cluster.by_idempotency_key(service, key, method),
        message=f"the {service} invocation with idempotency key {key}",
    )
    assert len(found) == 1, found
    return found[0].id


def broker_crash(cluster: Cluster, *pending: grpc.Future[Any]) -> None:
    """SIGKILLs the broker; the calls in flight through it fail UNAVAILABLE."""
    cluster.kill_broker()
    for call in pending:
        error = call.exception(timeout=30)  # type: ignore[call-arg]  # grpc-stubs lacks it
        assert isinstance(error, grpc.RpcError), f"the call did not fail: {error!r}"
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error


def no_non_determinism(cluster: Cluster, invocation_id: str) -> None:
    record = cluster.invocation(invocation_id)
    assert "determinis" not in record.last_error.lower(), record


def test_durable_sleep_spans_a_broker_crash(cluster: Cluster) -> None:
    key = unique("sleep")
    started_at = time.monotonic()
    pending = cluster.waiter.Sleep.future(
        pb.SleepRequest(millis=2000), metadata=idempotent(key), timeout=CALL_TIMEOUT_S
    )
    try:
        invocation_id = started(cluster, WAITER, key)
        cluster.wait_for(
            lambda: (
                cluster.invocation(invocation_id).status in (Status.RUNNING, Status.SUSPENDED)
                and cluster.journal_entries(invocation_id, "sleep")
            ),
            message=lambda: f"the timer to be journaled: {cluster.describe(invocation_id)}",
        )
        wake_up_at_ms = cluster.journal_entries(invocation_id, "sleep")[0].sleep.wake_up_at_ms
        wait_until = started_at + 0.5
        # Let the handler settle into its wait (suspended, or holding its stream).
        time.sleep(max(0.0, wait_until - time.monotonic()))
        assert cluster.invocation(invocation_id).status != Status.COMPLETED

        broker_crash(cluster, pending)
    finally:
        pending.cancel()
    cluster.start_broker()

    reply = cluster.waiter.Sleep(
        pb.SleepRequest(millis=2000), metadata=idempotent(key), timeout=CALL_TIMEOUT_S
    )
    elapsed = time.monotonic() - started_at

    assert (reply.text, reply.number) == ("slept", 2000)
    assert elapsed >= 2.0, f"the timer fired early: {elapsed:.2f} s"
    assert [i.id for i in cluster.by_idempotency_key(WAITER, key)] == [invocation_id]
    sleeps = cluster.journal_entries(invocation_id, "sleep")
    assert len(sleeps) == 1 and sleeps[0].sleep.wake_up_at_ms == wake_up_at_ms, sleeps
    assert cluster.invocation(invocation_id).status == Status.COMPLETED


def test_late_timer_fires_at_broker_start_up(cluster: Cluster) -> None:
    """The broker is down when the timer is due: it fires as soon as the broker is back,
    with no client call to prompt it."""
    key = unique("late")
    pending = cluster.waiter.Sleep.future(
        pb.SleepRequest(millis=800), metadata=idempotent(key), timeout=CALL_TIMEOUT_S
    )
    try:
        invocation_id = started(cluster, WAITER, key)
        sleeps = cluster.wait_for(
            lambda: cluster.journal_entries(invocation_id, "sleep"),
            message=lambda: f"the timer to be journaled: {cluster.describe(invocation_id)}",
        )
        wake_up_at_ms = sleeps[0].sleep.wake_up_at_ms
        broker_crash(cluster, pending)
    finally:
        pending.cancel()
    # Waiting for wall-clock time to pass is the point here: the timer must be overdue.
    time.sleep(max(0.0, wake_up_at_ms / 1000 + 0.3 - time.time()))
    cluster.start_broker()

    record = cluster.wait_status(invocation_id, Status.COMPLETED, timeout=15)
    reply = pb.Reply.FromString(record.result.value)
    assert (reply.text, reply.number) == ("slept", 800)


def test_workflow_signalled_after_a_broker_crash(cluster: Cluster) -> None:
    user = unique("user")
    pending = cluster.signup.Run.future(
        pb.SignupRequest(user=user, email="crash@example.com"), timeout=CALL_TIMEOUT_S
    )
    try:

        def waiting() -> bool:
            status = cluster.signup.Status(pb.UserRef(user=user), timeout=10)
            return status.text == "waiting for verification"

        cluster.wait_for(waiting, message=f"{user}'s Run to wait for verification")
        runs = cluster.invocations(service="playground.Signup", key=user, method="Run")
        assert len(runs) == 1, runs

        broker_crash(cluster, pending)
    finally:
        pending.cancel()
    cluster.start_broker()
    status = cluster.signup.Status(pb.UserRef(user=user), timeout=30)
    assert (status.text, list(status.items)) == ("waiting for verification", ["null"])

    assert cluster.signup.Verify(pb.VerifyRequest(user=user, code="9876"), timeout=30).text == "ok"

    # Submitting Run again attaches to the one that began before the crash.
    reply = cluster.signup.Run(
        pb.SignupRequest(user=user, email="other@example.com"), timeout=CALL_TIMEOUT_S
    )
    assert (reply.text, list(reply.items)) == ("welcome crash@example.com", ["9876"])
    after = cluster.invocations(service="playground.Signup", key=user, method="Run")
    assert [i.id for i in after] == [runs[0].id], after
    assert after[0].status == Status.COMPLETED
    no_non_determinism(cluster, runs[0].id)


def test_awakeable_resolved_after_a_broker_crash(cluster: Cluster) -> None:
    key = unique("awk")
    pending = cluster.waiter.Await.future(
        pb.AwaitRequest(), metadata=idempotent(key), timeout=CALL_TIMEOUT_S
    )
    try:
        invocation_id = started(cluster, WAITER, key)
        awakeable_id: str = cluster.wait_for(
            lambda: cluster.awakeable_id(invocation_id),
            message=lambda: f"an awakeable in {cluster.describe(invocation_id)}",
        )
        broker_crash(cluster, pending)
    finally:
        pending.cancel()
    cluster.start_broker()
    assert cluster.awakeable_id(invocation_id) == awakeable_id

    cluster.resolve_awakeable(awakeable_id, {"after": "restart"})

    reply = cluster.waiter.Await(
        pb.AwaitRequest(), metadata=idempotent(key), timeout=CALL_TIMEOUT_S
    )
    assert json.loads(reply.text) == {"after": "restart"}
    assert [i.id for i in cluster.by_idempotency_key(WAITER, key)] == [invocation_id]
    no_non_determinism(cluster, invocation_id)


def journal_shape(cluster: Cluster, invocation_id: str) -> list[tuple[str, str, str]]:
    """Each entry's command and, for calls, the callee: what replay must reproduce."""
    return [
        (str(e.WhichOneof("command")), e.call.service, e.call.method)
        for e in cluster.describe(invocation_id).journal
    ]


def test_gather_and_select_replay_identically_after_a_service_crash(cluster: Cluster) -> None:
    gather_request = pb.RaceRequest(a_millis=1500, b_millis=300)
    race_request = pb.RaceRequest(a_millis=300, b_millis=1500)
    # The same calls without faults, for comparison.
    _, gather_call = cluster.waiter.Gather.with_call(gather_request, timeout=CALL_TIMEOUT_S)
    _, race_call = cluster.waiter.Race.with_call(race_request, timeout=CALL_TIMEOUT_S)
    gather_reference = journal_shape(cluster, invocation_id_of(gather_call))
    race_reference = journal_shape(cluster, invocation_id_of(race_call))

    gather_key, race_key = unique("gather"), unique("race")
    gather = cluster.waiter.Gather.future(
        gather_request, metadata=idempotent(gather_key), timeout=CALL_TIMEOUT_S
    )
    race = cluster.waiter.Race.future(
        race_request, metadata=idempotent(race_key), timeout=CALL_TIMEOUT_S
    )
    try:
        gather_id = started(cluster, WAITER, gather_key, method="Gather")
        race_id = started(cluster, WAITER, race_key, method="Race")

        def in_flight() -> bool:
            calls = cluster.journal_entries(gather_id, "call")
            return (
                len(calls) == 2
                and all(c.call.invocation_id for c in calls)
                and len(cluster.journal_entries(race_id, "sleep")) == 2
            )

        cluster.wait_for(
            in_flight,
            message=lambda: (
                f"both waits journaled: {cluster.describe(gather_id)} {cluster.describe(race_id)}"
            ),
        )
        assert not gather.done() and not race.done()
        callee_ids = [c.call.invocation_id for c in cluster.journal_entries(gather_id, "call")]

        cluster.kill_service(PLAYGROUND)
        cluster.start_service(PLAYGROUND)

        # The broker never went away: the original callers get the results.
        gathered = gather.result(timeout=CALL_TIMEOUT_S)
        raced = race.result(timeout=CALL_TIMEOUT_S)
    finally:
        gather.cancel()
        race.cancel()

    assert (gathered.text, list(gathered.items)) == ("gathered", ["1500", "300"])
    assert raced.text == "a"
    # Re-calling with the same keys gets the same answers from the same invocations.
    assert cluster.waiter.Gather(gather_request, metadata=idempotent(gather_key), timeout=30) == (
        gathered
    )
    assert cluster.waiter.Race(race_request, metadata=idempotent(race_key), timeout=30) == raced
    assert [i.id for i in cluster.by_idempotency_key(WAITER, gather_key)] == [gather_id]
    assert [i.id for i in cluster.by_idempotency_key(WAITER, race_key)] == [race_id]

    for invocation_id in (gather_id, race_id, *callee_ids):
        record = cluster.invocation(invocation_id)
        assert record.status == Status.COMPLETED and record.result.HasField("value"), record
        no_non_determinism(cluster, invocation_id)
    # The handlers were re-invoked (after the crash, or after suspending) and replayed.
    assert cluster.invocation(race_id).attempts >= 2
    assert cluster.invocation(gather_id).attempts >= 2
    assert journal_shape(cluster, gather_id) == gather_reference
    assert journal_shape(cluster, race_id) == race_reference
    for process in (cluster.broker, cluster.services[PLAYGROUND]):
        log = process.log_path.read_text(encoding="utf-8", errors="replace").lower()
        assert "non-determinism" not in log, process.log_tail()
