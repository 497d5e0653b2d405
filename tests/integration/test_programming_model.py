"""The programming model through real processes: the broker and `services.playground`.

Awakeables, timers and combinators (playground.Waiter), virtual-object state and shared
handlers (playground.Counter), workflows with durable promises (playground.Signup),
cancel and kill, retry policies (playground.Flaky), and the ingress's Attach/GetOutput.

Every test runs twice, against a module-scoped cluster per broker `--suspend-after`: "1s"
(handlers hold their stream through short waits) and "0" (they suspend at every await and
are replayed from the journal each time something completes).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import grpc
import pytest
from durable.v1 import ingress_pb2, invocation_pb2
from playground import playground_pb2 as pb

from tests.support import PLAYGROUND, Cluster, Status, invocation_id_of

BROKER_ARGS = ["--retry-initial", "100ms", "--retry-max", "500ms"]
CALL_TIMEOUT_S = 60.0

pytestmark = pytest.mark.parametrize(
    "cluster",
    [
        pytest.param(
            {"suspend_after": after, "services": (PLAYGROUND,), "broker_args": BROKER_ARGS},
            id=f"suspend-after-{after}",
        )
        for after in ("1s", "0")
    ]
    + [
        pytest.param(
            {
                "suspend_after": "1s",
                "services": (PLAYGROUND,),
                "broker_args": [*BROKER_ARGS, "--workers", "2"],
            },
            id="workers-2",
        )
    ],
    indirect=True,
)

WAITER = "playground.Waiter"
COUNTER = "playground.Counter"
SIGNUP = "playground.Signup"
FLAKY = "playground.Flaky"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def idempotent(key: str) -> tuple[tuple[str, str], ...]:
    return (("idempotency-key", key),)


def rpc_error(call: Any) -> grpc.RpcError:
    """The error of a finished call (a future or a callable), asserting it failed."""
    try:
        result = call.result(timeout=CALL_TIMEOUT_S) if hasattr(call, "result") else call()
    except grpc.RpcError as e:
        return e
    raise AssertionError(f"the call succeeded: {result!r}")


def started(cluster: Cluster, service: str, key: str, method: str = "") -> str:
    """The id of the invocation started with idempotency key `key` (waits for it)."""
    found = cluster.wait_for(
        lambda: cluster.by_idempotency_key(service, key, method),
        message=f"the {service} invocation with idempotency key {key}",
    )
    assert len(found) == 1, found
    return found[0].id


def wait_awakeable(cluster: Cluster, invocation_id: str) -> str:
    """Waits until the invocation journaled its awakeable; returns the awakeable's id."""
    awakeable_id: str = cluster.wait_for(
        lambda: cluster.awakeable_id(invocation_id),
        message=lambda: f"an awakeable in {cluster.describe(invocation_id)}",
    )
    assert awakeable_id.startswith("awk_"), awakeable_id
    return awakeable_id


def wait_completed(cluster: Cluster, invocation_id: str) -> invocation_pb2.Invocation:
    """Waits until the invocation is COMPLETED; returns its record."""
    return cluster.wait_status(invocation_id, Status.COMPLETED)


# -- awakeables ----------------------------------------------------------------------------


def test_awakeable_resolved_through_admin_returns_its_json_value(cluster: Cluster) -> None:
    key = unique("awk-resolve")
    pending = cluster.waiter.Await.future(
        pb.AwaitRequest(), metadata=idempotent(key), timeout=CALL_TIMEOUT_S
    )
    try:
        invocation_id = started(cluster, WAITER, key)
        awakeable_id = wait_awakeable(cluster, invocation_id)
        assert not pending.done(), "Await answered before its awakeable was resolved"
        value = {"approved": True, "by": "ops", "n": [1, 2]}
        # Its id with the index written another way names no awakeable: "-1" once
        # reached the journal's last entry, delivered the value and lost it (UNKNOWN).
        body = awakeable_id[4:]
        index = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode().rpartition(":")[2]
        for other in ("-1", f"+{index}", f"0{index}", f" {index}"):
            forged = _awakeable_id_for(invocation_id, other)
            error = rpc_error(lambda forged=forged: cluster.resolve_awakeable(forged, "forged"))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (other, error)
        assert not pending.done()

        cluster.resolve_awakeable(awakeable_id, value)

        reply = pending.result(timeout=CALL_TIMEOUT_S)
    finally:
        pending.cancel()
    assert json.loads(reply.text) == value
    # Resolving it a second time is refused; the handler's result stays as it was.
    error = rpc_error(lambda: cluster.resolve_awakeable(awakeable_id, "again"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
    error = rpc_error(lambda: cluster.reject_awakeable(awakeable_id, "too late"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
    again = cluster.waiter.Await(pb.AwaitRequest(), metadata=idempotent(key), timeout=10)
    assert json.loads(again.text) == value


def test_awakeable_rejected_through_admin_fails_the_caller_with_the_reason(
    cluster: Cluster,
) -> None:
    key = unique("awk-reject")
    pending = cluster.waiter.Await.future(
        pb.AwaitRequest(), metadata=idempotent(key), timeout=CALL_TIMEOUT_S
    )
    try:
        invocation_id = started(cluster, WAITER, key)
        awakeable_id = wait_awakeable(cluster, invocation_id)

        cluster.reject_awakeable(awakeable_id, "the reviewer said no")

        error = rpc_error(pending)
    finally:
        pending.cancel()
    assert "the reviewer said no" in (error.details() or ""), error
    assert error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN), error
    record = wait_completed(cluster, invocation_id)
    assert record.result.HasField("failure"), record
    assert "the reviewer said no" in record.result.failure.message


INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _awakeable_id_for(invocation_id: str, index: str) -> str:
    raw = f"{invocation_id}:{index}".encode()
    return "awk_" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_unknown_awakeable_is_not_found_and_a_malformed_one_invalid(cluster: Cluster) -> None:
    unknown = _awakeable_id_for("inv_doesnotexist", "1")
    for complete, code in (
        (lambda: cluster.resolve_awakeable(unknown, 1), grpc.StatusCode.NOT_FOUND),
        (lambda: cluster.reject_awakeable(unknown, "no"), grpc.StatusCode.NOT_FOUND),
        (lambda: cluster.resolve_awakeable("awk_doesnotexist123", 1), INVALID),
        (lambda: cluster.reject_awakeable("garbage", "no"), INVALID),
    ):
        error = rpc_error(complete)
        assert error.code() == code, error


# -- timers and combinators ----------------------------------------------------------------


def test_select_returns_the_first_timer_to_fire(cluster: Cluster) -> None:
    started_at = time.monotonic()
    reply = cluster.waiter.Race(pb.RaceRequest(a_millis=100, b_millis=2000), timeout=30)
    elapsed = time.monotonic() - started_at
    assert reply.text == "a"
    assert elapsed < 1.9, f"select waited for the slower timer: {elapsed:.2f} s"


def test_gather_returns_every_result_in_order(cluster: Cluster) -> None:
    started_at = time.monotonic()
    reply = cluster.waiter.Gather(pb.RaceRequest(a_millis=400, b_millis=200), timeout=30)
    elapsed = time.monotonic() - started_at
    assert (reply.text, list(reply.items)) == ("gathered", ["400", "200"])
    # Both calls ran at once: well under the sum of the two sleeps.
    assert 0.4 <= elapsed < 2.0, elapsed


def test_timeout_on_a_slow_call_is_deadline_exceeded(cluster: Cluster) -> None:
    started_at = time.monotonic()
    error = rpc_error(
        lambda: cluster.waiter.Timeout(
            pb.RaceRequest(a_millis=3000, timeout_millis=200), timeout=30
        )
    )
    elapsed = time.monotonic() - started_at
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    assert elapsed < 2.5, f"the timeout waited for the call: {elapsed:.2f} s"


def test_timeout_on_a_fast_call_returns_its_result(cluster: Cluster) -> None:
    reply = cluster.waiter.Timeout(pb.RaceRequest(a_millis=50, timeout_millis=3000), timeout=30)
    assert (reply.text, reply.number) == ("in time", 50)


# -- virtual objects -----------------------------------------------------------------------


def test_counter_state_keys_and_reset(cluster: Cluster) -> None:
    name = unique("counter")
    assert cluster.counter.Add(pb.AddRequest(name=name, amount=5), timeout=30).number == 5
    assert cluster.counter.Add(pb.AddRequest(name=name, amount=3), timeout=30).number == 8
    assert cluster.counter.Get(pb.CounterRef(name=name), timeout=30).number == 8
    keys = cluster.counter.Keys(pb.CounterRef(name=name), timeout=30)
    assert sorted(keys.items) == ["by-3", "by-5", "total"]
    assert cluster.state(COUNTER, name) == {"total": 8, "by-5": True, "by-3": True}

    assert cluster.counter.Reset(pb.CounterRef(name=name), timeout=30).text == "reset"

    assert cluster.counter.Get(pb.CounterRef(name=name), timeout=30).number == 0
    assert list(cluster.counter.Keys(pb.CounterRef(name=name), timeout=30).items) == []
    assert cluster.state(COUNTER, name) == {}


def test_shared_handler_reads_while_the_exclusive_one_holds_the_key(cluster: Cluster) -> None:
    name = unique("hold")
    cluster.counter.Add(pb.AddRequest(name=name, amount=2), timeout=30)
    key = unique("hold-call")
    hold = cluster.counter.Hold.future(
        pb.AddRequest(name=name, amount=1, millis=2500),
        metadata=idempotent(key),
        timeout=CALL_TIMEOUT_S,
    )
    try:
        hold_id = started(cluster, COUNTER, key)
        cluster.wait_for(
            lambda: cluster.journal_entries(hold_id, "sleep"),
            message=lambda: f"Hold to sleep: {cluster.describe(hold_id)}",
        )
        started_at = time.monotonic()
        reply = cluster.counter.Get(pb.CounterRef(name=name), timeout=30)
        elapsed = time.monotonic() - started_at
        assert not hold.done(), "Hold finished before the shared Get answered"
        assert reply.number == 2, reply
        assert elapsed < 1.5, f"the shared Get waited for the exclusive Hold: {elapsed:.2f} s"
        assert hold.result(timeout=CALL_TIMEOUT_S).number == 3
    finally:
        hold.cancel()
    assert cluster.counter.Get(pb.CounterRef(name=name), timeout=30).number == 3


def test_exclusive_handlers_on_one_key_run_one_at_a_time(cluster: Cluster) -> None:
    name = unique("serial")
    key = unique("serial-hold")
    hold = cluster.counter.Hold.future(
        pb.AddRequest(name=name, amount=1, millis=1000),
        metadata=idempotent(key),
        timeout=CALL_TIMEOUT_S,
    )
    add = None
    try:
        hold_id = started(cluster, COUNTER, key)
        cluster.wait_for(
            lambda: cluster.journal_entries(hold_id, "sleep"),
            message=lambda: f"Hold to sleep: {cluster.describe(hold_id)}",
        )
        add = cluster.counter.Add.future(
            pb.AddRequest(name=name, amount=10), timeout=CALL_TIMEOUT_S
        )
        # Had the Add run beside the sleeping Hold, it would read 0 and answer 10 and the
        # Hold would answer 11; serialized, the Hold answers 1 and the Add 11.
        assert hold.result(timeout=CALL_TIMEOUT_S).number == 1
        assert add.result(timeout=CALL_TIMEOUT_S).number == 11
    finally:
        hold.cancel()
        if add is not None:
            add.cancel()
    assert cluster.counter.Get(pb.CounterRef(name=name), timeout=30).number == 11
    assert cluster.state(COUNTER, name)["total"] == 11


# -- workflows -----------------------------------------------------------------------------


def wait_signup_waiting(cluster: Cluster, user: str) -> None:
    def waiting() -> bool:
        status = cluster.signup.Status(pb.UserRef(user=user), timeout=10)
        return status.text == "waiting for verification" and list(status.items) == ["null"]

    cluster.wait_for(
        waiting,
        message=lambda: f"{user} waiting: {cluster.signup.Status(pb.UserRef(user=user))}",
    )


def test_workflow_waits_for_its_signal_and_runs_once_per_key(cluster: Cluster) -> None:
    user = unique("user")
    run = cluster.signup.Run.future(
        pb.SignupRequest(user=user, email="ada@example.com"), timeout=CALL_TIMEOUT_S
    )
    keyed: grpc.Future[pb.Reply] | None = None
    try:
        wait_signup_waiting(cluster, user)
        assert not run.done(), "Run answered before it was verified"
        # Another caller's idempotency key names no other run: it waits on this one (it
        # started a second run once, which an attack found).
        keyed = cluster.signup.Run.future(
            pb.SignupRequest(user=user, email="evil@example.com"),
            metadata=(("idempotency-key", unique("k")),),
            timeout=CALL_TIMEOUT_S,
        )

        assert cluster.signup.Verify(pb.VerifyRequest(user=user, code="4711"), timeout=30).text == (
            "ok"
        )

        reply = run.result(timeout=CALL_TIMEOUT_S)
        assert keyed.result(timeout=CALL_TIMEOUT_S) == reply
    finally:
        run.cancel()
        if keyed is not None:
            keyed.cancel()
    assert (reply.text, list(reply.items)) == ("welcome ada@example.com", ["4711"])
    status = cluster.signup.Status(pb.UserRef(user=user), timeout=30)
    assert (status.text, list(status.items)) == ("verified", [json.dumps("4711")])

    # A second Run with the same key attaches to the first: its result, not a new run.
    again = cluster.signup.Run(
        pb.SignupRequest(user=user, email="someone-else@example.com"), timeout=30
    )
    assert again == reply
    again = cluster.signup.Run(
        pb.SignupRequest(user=user, email="someone-else@example.com"),
        metadata=(("idempotency-key", unique("k")),),
        timeout=30,
    )
    assert again == reply
    runs = cluster.invocations(service=SIGNUP, key=user, method="Run")
    assert len(runs) == 1, runs
    assert runs[0].status == Status.COMPLETED


def test_workflow_promise_completed_through_admin(cluster: Cluster) -> None:
    user = unique("user")
    run = cluster.signup.Run.future(
        pb.SignupRequest(user=user, email="bob@example.com"), timeout=CALL_TIMEOUT_S
    )
    try:
        wait_signup_waiting(cluster, user)

        cluster.complete_promise(SIGNUP, user, "verified", "from-admin")

        reply = run.result(timeout=CALL_TIMEOUT_S)
    finally:
        run.cancel()
    assert (reply.text, list(reply.items)) == ("welcome bob@example.com", ["from-admin"])
    # The promise is completed once.
    error = rpc_error(lambda: cluster.complete_promise(SIGNUP, user, "verified", "twice"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error


@pytest.mark.parametrize("how", ["verify", "admin"])
def test_workflow_promise_rejected_fails_the_run(cluster: Cluster, how: str) -> None:
    user = unique("user")
    run = cluster.signup.Run.future(
        pb.SignupRequest(user=user, email="eve@example.com"), timeout=CALL_TIMEOUT_S
    )
    try:
        wait_signup_waiting(cluster, user)
        if how == "verify":
            cluster.signup.Verify(pb.VerifyRequest(user=user, code="reject"), timeout=30)
            reason = "verification refused"
        else:
            reason = "refused by an operator"
            cluster.complete_promise(SIGNUP, user, "verified", rejection=reason)

        error = rpc_error(run)
    finally:
        run.cancel()
    assert reason in (error.details() or ""), error
    assert error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN), error
    # The handler recorded the failure in its state (Status itself peeks at the promise,
    # and peeking at a rejected promise raises, so it reports the rejection).
    assert cluster.state(SIGNUP, user)["status"] == f"failed: {reason}"
    status_error = rpc_error(lambda: cluster.signup.Status(pb.UserRef(user=user), timeout=30))
    assert reason in (status_error.details() or ""), status_error


def test_workflow_promise_with_timeout(cluster: Cluster) -> None:
    user = unique("user")
    error = rpc_error(
        lambda: cluster.signup.Run(
            pb.SignupRequest(user=user, email="late@example.com", timeout_millis=300),
            timeout=30,
        )
    )
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error


# -- cancel and kill -----------------------------------------------------------------------


def chain_waiting_on_sleep(cluster: Cluster, key: str) -> tuple[str, str]:
    """Waits until the Chain started with `key` waits on its Sleep call, and that Sleep
    invocation has journaled its timer. Returns (chain id, sleep id)."""
    chain_id = started(cluster, WAITER, key, method="Chain")

    def callee_sleeping() -> str:
        calls = cluster.journal_entries(chain_id, "call")
        if not calls or not calls[0].call.invocation_id:
            return ""
        callee = calls[0].call.invocation_id
        return callee if cluster.journal_entries(callee, "sleep") else ""

    sleep_id: str = cluster.wait_for(
        callee_sleeping,
        message=lambda: f"Chain's Sleep call to sleep: {cluster.describe(chain_id)}",
    )
    return chain_id, sleep_id


def run_names(cluster: Cluster, invocation_id: str) -> list[str]:
    return [e.run.name for e in cluster.journal_entries(invocation_id, "run")]


def test_cancel_runs_compensation_and_cancels_the_awaited_call(cluster: Cluster) -> None:
    key = unique("cancel")
    started_at = time.monotonic()
    pending = cluster.waiter.Chain.future(
        pb.RaceRequest(a_millis=10000), metadata=idempotent(key), timeout=CALL_TIMEOUT_S
    )
    try:
        chain_id, sleep_id = chain_waiting_on_sleep(cluster, key)

        cluster.cancel(chain_id)

        error = rpc_error(pending)
    finally:
        pending.cancel()
    assert time.monotonic() - started_at < 9, "the Chain ran its full sleep"
    assert error.code() == grpc.StatusCode.CANCELLED, error
    assert (error.details() or "").endswith("compensated"), error.details()
    assert (error.details() or "").startswith("chain stopped: "), error.details()

    chain = wait_completed(cluster, chain_id)
    assert chain.result.failure.code == grpc.StatusCode.CANCELLED.value[0], chain
    assert run_names(cluster, chain_id) == ["compensate"]
    callee = wait_completed(cluster, sleep_id)
    assert callee.result.HasField("failure"), callee
    assert callee.result.failure.code == grpc.StatusCode.CANCELLED.value[0], callee
    # Attach reports the handler's failure as the original call did.
    attach_error = rpc_error(
        lambda: cluster.ingress_api.Attach(
            ingress_pb2.AttachRequest(invocation_id=chain_id), timeout=10
        )
    )
    assert attach_error.code() == grpc.StatusCode.CANCELLED, attach_error
    assert attach_error.details() == error.details()


def test_kill_stops_at_once_without_compensation(cluster: Cluster) -> None:
    key = unique("kill")
    started_at = time.monotonic()
    pending = cluster.waiter.Chain.future(
        pb.RaceRequest(a_millis=10000), metadata=idempotent(key), timeout=CALL_TIMEOUT_S
    )
    try:
        chain_id, sleep_id = chain_waiting_on_sleep(cluster, key)

        cluster.kill(chain_id)

        error = rpc_error(pending)
    finally:
        pending.cancel()
    assert time.monotonic() - started_at < 9, "the Chain ran its full sleep"
    assert error.code() == grpc.StatusCode.ABORTED, error
    assert "invocation killed" in (error.details() or ""), error
    chain = wait_completed(cluster, chain_id)
    assert chain.result.failure.code == grpc.StatusCode.ABORTED.value[0], chain
    callee = wait_completed(cluster, sleep_id)
    assert callee.result.failure.code == grpc.StatusCode.ABORTED.value[0], callee
    assert "invocation killed" in callee.result.failure.message, callee
    assert run_names(cluster, chain_id) == [], cluster.describe(chain_id)


def test_cancel_kill_resume_of_unknown_or_completed_invocations(cluster: Cluster) -> None:
    for action in (cluster.cancel, cluster.kill, cluster.resume):
        error = rpc_error(lambda action=action: action("inv_doesnotexist123"))
        assert error.code() == grpc.StatusCode.NOT_FOUND, (action, error)

    _, call = cluster.waiter.Sleep.with_call(pb.SleepRequest(millis=1), timeout=30)
    done_id = invocation_id_of(call)
    wait_completed(cluster, done_id)
    for action in (cluster.cancel, cluster.kill, cluster.resume):
        error = rpc_error(lambda action=action: action(done_id))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, (action, error)
    record = cluster.invocation(done_id)
    assert record.result.HasField("value"), record


# -- retry policies ------------------------------------------------------------------------


def test_bounded_retry_policy_fails_after_its_attempts(cluster: Cluster) -> None:
    key = unique("bounded")
    error = rpc_error(
        lambda: cluster.flaky.Bounded(
            pb.FlakyRequest(key=key, fail_times=5), metadata=idempotent(key), timeout=30
        )
    )
    assert "gave up after 3 attempts" in (error.details() or ""), error
    record = cluster.by_idempotency_key(FLAKY, key)[0]
    assert record.status == Status.COMPLETED and record.attempts == 3, record


def test_bounded_retry_policy_succeeds_within_its_attempts(cluster: Cluster) -> None:
    key = unique("bounded-ok")
    reply = cluster.flaky.Bounded(pb.FlakyRequest(key=key, fail_times=1), timeout=30)
    assert (reply.text, reply.number) == ("ok", 2)


def test_pausing_retry_policy_pauses_until_resumed(cluster: Cluster) -> None:
    key = unique("pausing")
    pending = cluster.flaky.Pausing.future(
        pb.FlakyRequest(key=key, fail_times=2), metadata=idempotent(key), timeout=CALL_TIMEOUT_S
    )
    try:
        invocation_id = started(cluster, FLAKY, key)
        paused = cluster.wait_status(invocation_id, Status.PAUSED)
        assert paused.attempts == 2, paused
        assert paused.last_error, paused
        assert not pending.done(), "the caller got an answer while the invocation was paused"
        assert [i.id for i in cluster.invocations(status="PAUSED", service=FLAKY)].count(
            invocation_id
        ) == 1

        cluster.resume(invocation_id)

        reply = pending.result(timeout=CALL_TIMEOUT_S)
    finally:
        pending.cancel()
    assert (reply.text, reply.number) == ("ok", 3)
    assert wait_completed(cluster, invocation_id).attempts == 3


def test_run_retry_policy_retries_in_process(cluster: Cluster) -> None:
    reply = cluster.flaky.RunRetries(pb.FlakyRequest(key=unique("run"), fail_times=2), timeout=30)
    assert reply.text == "done"


def test_run_retry_policy_exhausted_is_terminal(cluster: Cluster) -> None:
    key = unique("run-exhausted")
    error = rpc_error(
        lambda: cluster.flaky.RunRetries(
            pb.FlakyRequest(key=key, fail_times=5), metadata=idempotent(key), timeout=30
        )
    )
    assert error.code() == grpc.StatusCode.ABORTED, error
    record = cluster.by_idempotency_key(FLAKY, key)[0]
    assert record.status == Status.COMPLETED and record.result.HasField("failure"), record


def test_retryable_error_with_retry_after(cluster: Cluster) -> None:
    key = unique("retry-after")
    started_at = time.monotonic()
    reply, call = cluster.flaky.RetryAfter.with_call(
        pb.FlakyRequest(key=key, retry_after_millis=300), timeout=30
    )
    elapsed = time.monotonic() - started_at
    assert (reply.text, reply.number) == ("ok", 2)
    assert elapsed >= 0.3, f"retried before retry_after: {elapsed:.3f} s"
    record = cluster.invocation(invocation_id_of(call))
    assert record.attempts == 2, record


# -- attach and output ---------------------------------------------------------------------


def test_attach_and_get_output(cluster: Cluster) -> None:
    key = unique("attach")
    target = ingress_pb2.AttachRequest(
        idempotent=ingress_pb2.IdempotentTarget(service=WAITER, method="Sleep", idempotency_key=key)
    )
    pending = cluster.waiter.Sleep.future(
        pb.SleepRequest(millis=1500), metadata=idempotent(key), timeout=CALL_TIMEOUT_S
    )
    try:
        invocation_id = started(cluster, WAITER, key)
        output = cluster.ingress_api.GetOutput(target, timeout=10)
        assert (output.ready, output.invocation_id) == (False, invocation_id), output

        attached = cluster.ingress_api.Attach(
            ingress_pb2.AttachRequest(invocation_id=invocation_id), timeout=CALL_TIMEOUT_S
        )
        original = pending.result(timeout=CALL_TIMEOUT_S)
    finally:
        pending.cancel()
    assert attached.ready and attached.invocation_id == invocation_id, attached
    reply = pb.Reply.FromString(attached.value)
    assert (reply.text, reply.number) == ("slept", 1500)
    assert reply == original

    for request in (target, ingress_pb2.AttachRequest(invocation_id=invocation_id)):
        output = cluster.ingress_api.GetOutput(request, timeout=10)
        assert output.ready and pb.Reply.FromString(output.value) == reply, output
        assert not output.failure.message, output
    by_key = cluster.ingress_api.Attach(target, timeout=10)
    assert pb.Reply.FromString(by_key.value) == reply


def test_attach_and_get_output_of_unknown_invocations(cluster: Cluster) -> None:
    unknown_target = ingress_pb2.AttachRequest(
        idempotent=ingress_pb2.IdempotentTarget(
            service=WAITER, method="Sleep", idempotency_key=unique("never-used")
        )
    )
    for request in (ingress_pb2.AttachRequest(invocation_id="inv_doesnotexist123"), unknown_target):
        for method in (cluster.ingress_api.Attach, cluster.ingress_api.GetOutput):
            error = rpc_error(lambda method=method, request=request: method(request, timeout=10))
            assert error.code() == grpc.StatusCode.NOT_FOUND, (method, request, error)
