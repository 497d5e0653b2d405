"""The asyncio runtime and the handler context, driven by hand-built start messages.

No network: the runtime's `send` callback appends to a list, completions are fed with
`on_completion`. pytest-asyncio is not installed, so every test drives its own loop
with `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import durable
import grpc
import pytest
from durable import Context, ObjectContext, TerminalError
from durable._runtime import Runtime
from durable.v1 import journal_pb2, protocol_pb2
from flights import flights_pb2

Entry = journal_pb2.JournalEntry
Result = journal_pb2.Result
Sent = list[protocol_pb2.InvokeResponse]

REQUEST = flights_pb2.ReserveRequest(trip_id="t1", to="LIS", date="2030-01-01")
RESPONSE = flights_pb2.BookingStatus(trip_id="t1", state="RESERVED", booking_id="bk_1")


def input_entry() -> Entry:
    return Entry(input=journal_pb2.InputCommand(request=REQUEST.SerializeToString()))


def reserve_entry(result: Result | None = None) -> Entry:
    entry = Entry(
        call=journal_pb2.CallCommand(
            service="flights.Flights", method="Reserve", request=REQUEST.SerializeToString()
        )
    )
    if result is not None:
        entry.result.CopyFrom(result)
    return entry


def make_start(
    journal: list[Entry] | None = None,
    *,
    suspend_after_ms: int = 0,
    random_seed: int = 7,
    key: str = "",
    state: dict[str, bytes] | None = None,
) -> protocol_pb2.StartMessage:
    return protocol_pb2.StartMessage(
        invocation_id="inv_x",
        service="s.S",
        method="M",
        key=key,
        attempt=1,
        journal=journal if journal is not None else [input_entry()],
        state=state or {},
        suspend_after_ms=suspend_after_ms,
        random_seed=random_seed,
    )


def new_runtime(start: protocol_pb2.StartMessage) -> tuple[Runtime, Sent]:
    sent: Sent = []
    return Runtime(start, sent.append), sent


def kinds(sent: Sent) -> list[str | None]:
    return [m.WhichOneof("message") for m in sent]


def proposed(sent: Sent) -> list[protocol_pb2.ProposedEntry]:
    return [m.entry for m in sent if m.WhichOneof("message") == "entry"]


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Yields to the loop until `predicate` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


def has(sent: Sent, kind: str) -> Callable[[], bool]:
    return lambda: kind in kinds(sent)


# ctx.call


def test_call_not_completed_suspends_immediately() -> None:
    runtime, sent = new_runtime(make_start(suspend_after_ms=0))
    ctx = Context(runtime)
    unwound: list[BaseException] = []

    async def handler() -> bytes:
        future = ctx.call("flights.Flights", "Reserve", REQUEST, flights_pb2.BookingStatus)
        assert future.entry_index == 1
        try:
            await future
        except BaseException as e:
            unwound.append(e)
            raise
        raise AssertionError("the handler must not get past an incomplete call")

    asyncio.run(runtime.execute(handler))  # swallows Suspended

    assert kinds(sent) == ["entry", "suspension"]
    entry = sent[0].entry
    assert entry.index == 1
    assert entry.entry.call.service == "flights.Flights"
    assert entry.entry.call.method == "Reserve"
    assert entry.entry.call.request == REQUEST.SerializeToString()
    assert list(sent[1].suspension.waiting_on) == [1]
    assert len(unwound) == 1 and isinstance(unwound[0], durable.Suspended)
    assert runtime.done


def test_replayed_completed_call_returns_response_and_ends() -> None:
    journal = [input_entry(), reserve_entry(Result(value=RESPONSE.SerializeToString()))]
    runtime, sent = new_runtime(make_start(journal, suspend_after_ms=0))
    ctx = Context(runtime)
    got: list[flights_pb2.BookingStatus] = []

    async def handler() -> bytes:
        response = await ctx.call("flights.Flights", "Reserve", REQUEST, flights_pb2.BookingStatus)
        got.append(response)
        return response.SerializeToString()

    asyncio.run(runtime.execute(handler))

    assert got == [RESPONSE]
    assert kinds(sent) == ["entry", "end"]
    output = sent[0].entry
    assert output.index == 2
    assert output.entry.WhichOneof("command") == "output"
    assert output.entry.result.value == RESPONSE.SerializeToString()
    assert not any(p.entry.HasField("call") for p in proposed(sent))


def test_replayed_failed_call_raises_terminal_error() -> None:
    failed = Result(failure=journal_pb2.Failure(code=5, message="no such flight"))
    runtime, sent = new_runtime(make_start([input_entry(), reserve_entry(failed)]))
    ctx = Context(runtime)
    caught: list[TerminalError] = []

    async def handler() -> bytes:
        try:
            await ctx.call("flights.Flights", "Reserve", REQUEST, flights_pb2.BookingStatus)
        except TerminalError as e:
            caught.append(e)
        return b"compensated"

    asyncio.run(runtime.execute(handler))

    assert len(caught) == 1
    assert caught[0].message == "no such flight"
    assert caught[0].code == 5
    assert caught[0].status_code == grpc.StatusCode.NOT_FOUND
    assert kinds(sent) == ["entry", "end"]
    assert sent[0].entry.entry.result.value == b"compensated"


def test_call_completed_while_waiting_resumes_the_handler() -> None:
    runtime, sent = new_runtime(make_start(suspend_after_ms=60000))
    ctx = Context(runtime)

    async def handler() -> bytes:
        response = await ctx.call("flights.Flights", "Reserve", REQUEST, flights_pb2.BookingStatus)
        return response.SerializeToString()

    async def main() -> None:
        task = asyncio.create_task(runtime.execute(handler))
        await until(has(sent, "entry"))
        await asyncio.sleep(0.01)
        assert not task.done()
        runtime.on_completion(
            protocol_pb2.CompletionMessage(
                entry_index=1, result=Result(value=RESPONSE.SerializeToString())
            )
        )
        await asyncio.wait_for(task, 5)

    asyncio.run(main())

    assert kinds(sent) == ["entry", "entry", "end"]
    assert sent[1].entry.index == 2
    assert sent[1].entry.entry.result.value == RESPONSE.SerializeToString()


def test_concurrent_calls_completed_in_any_order() -> None:
    runtime, sent = new_runtime(make_start(suspend_after_ms=60000))
    ctx = Context(runtime)

    async def handler() -> bytes:
        first = ctx.call("flights.Flights", "Reserve", REQUEST, flights_pb2.BookingStatus)
        second = ctx.call("flights.Flights", "Get", REQUEST, flights_pb2.BookingStatus)
        a, b = await asyncio.gather(first, second)
        return (a.booking_id + "," + b.booking_id).encode()

    async def main() -> None:
        task = asyncio.create_task(runtime.execute(handler))
        await until(lambda: len(sent) == 2)
        for index, booking in ((2, "b2"), (1, "b1")):
            status = flights_pb2.BookingStatus(booking_id=booking)
            runtime.on_completion(
                protocol_pb2.CompletionMessage(
                    entry_index=index, result=Result(value=status.SerializeToString())
                )
            )
            await asyncio.sleep(0)
        await asyncio.wait_for(task, 5)

    asyncio.run(main())

    assert kinds(sent) == ["entry", "entry", "entry", "end"]
    assert sent[2].entry.entry.result.value == b"b1,b2"


def test_send_is_proposed_without_waiting() -> None:
    runtime, sent = new_runtime(make_start())
    ctx = Context(runtime)

    async def handler() -> bytes:
        ctx.send("flights.Flights", "Cancel", flights_pb2.TripRef(trip_id="t1"))
        ctx.send("flights.Flights", "Cancel", flights_pb2.TripRef(trip_id="t2"), delay=60)
        return b"ok"

    before = int(time.time() * 1000)
    asyncio.run(runtime.execute(handler))

    assert kinds(sent) == ["entry", "entry", "entry", "end"]
    now, later = sent[0].entry.entry.send, sent[1].entry.entry.send
    assert (now.service, now.method, now.invoke_at_ms) == ("flights.Flights", "Cancel", 0)
    assert flights_pb2.TripRef.FromString(now.request).trip_id == "t1"
    assert later.invoke_at_ms >= before + 60000


@pytest.mark.parametrize("bad_id", ["not-an-id", "awk_", "awk_aW52X3g6LTE", "inv_x"])
@pytest.mark.parametrize("how", ["resolve", "reject"])
def test_completing_something_that_is_no_awakeable_id_is_invalid_argument(
    bad_id: str, how: str
) -> None:
    # It was journaled, completed nothing and said nothing: the handler succeeded.
    runtime, sent = new_runtime(make_start())
    ctx = Context(runtime)

    async def handler() -> bytes:
        if how == "resolve":
            ctx.resolve_awakeable(bad_id, {"ok": True})
        else:
            ctx.reject_awakeable(bad_id, "no")
        return b"ok"

    asyncio.run(runtime.execute(handler))

    assert kinds(sent) == ["entry", "end"]  # the failed output only: nothing journaled
    result = sent[0].entry.entry.result
    assert result.failure.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert result.failure.message == (
        f"{bad_id!r} is not an awakeable id: ids are what ctx.awakeable() returns (awk_...)"
    )


def test_sleep_proposes_a_timer_and_suspends() -> None:
    runtime, sent = new_runtime(make_start(suspend_after_ms=0))
    ctx = Context(runtime)

    async def handler() -> bytes:
        await ctx.sleep(30)
        return b"woke"

    before = int(time.time() * 1000)
    asyncio.run(runtime.execute(handler))

    assert kinds(sent) == ["entry", "suspension"]
    assert sent[0].entry.entry.sleep.wake_up_at_ms >= before + 30000
    assert list(sent[1].suspension.waiting_on) == [1]


# ctx.run


def test_run_on_fresh_journal_runs_once_and_waits_for_durability() -> None:
    runtime, sent = new_runtime(make_start(suspend_after_ms=60000))
    ctx = Context(runtime)
    calls: list[int] = []
    got: list[Any] = []

    def pay() -> dict[str, Any]:
        calls.append(1)
        return {"payment_id": "pay_1", "amount": 42}

    async def handler() -> bytes:
        got.append(await ctx.run("pay", pay))
        return b"done"

    async def main() -> None:
        task = asyncio.create_task(runtime.execute(handler))
        await until(lambda: ran(sent))
        await asyncio.sleep(0.01)
        # The handler only sees the result once the broker made it durable.
        assert not task.done() and got == []
        proposed = sent[0].entry
        runtime.on_completion(
            protocol_pb2.CompletionMessage(entry_index=proposed.index, result=proposed.entry.result)
        )
        await asyncio.wait_for(task, 5)

    asyncio.run(main())

    assert calls == [1]
    assert got == [{"payment_id": "pay_1", "amount": 42}]
    # The run's entry waited for its outcome and carries it: one message, one commit.
    assert kinds(sent) == ["entry", "entry", "end"]
    assert sent[0].entry.index == 1
    assert sent[0].entry.entry.run.name == "pay"
    assert json.loads(sent[0].entry.entry.result.value) == {"payment_id": "pay_1", "amount": 42}
    assert sent[1].entry.index == 2
    assert sent[1].entry.entry.WhichOneof("command") == "output"


def ran(sent: list[protocol_pb2.InvokeResponse]) -> bool:
    """Whether a run's entry has left with its outcome (they travel together)."""
    return any(m.HasField("entry") and m.entry.entry.HasField("result") for m in sent)


def test_run_with_async_fn() -> None:
    runtime, sent = new_runtime(make_start(suspend_after_ms=60000))
    ctx = Context(runtime)

    async def fetch() -> str:
        await asyncio.sleep(0)
        return "fetched"

    async def handler() -> bytes:
        return (await ctx.run("fetch", fetch)).encode()

    async def main() -> None:
        task = asyncio.create_task(runtime.execute(handler))
        await until(lambda: ran(sent))
        runtime.on_completion(
            protocol_pb2.CompletionMessage(entry_index=1, result=sent[0].entry.entry.result)
        )
        await asyncio.wait_for(task, 5)

    asyncio.run(main())

    assert json.loads(sent[0].entry.entry.result.value) == "fetched"
    assert sent[1].entry.entry.result.value == b"fetched"


def test_run_with_zero_suspend_after_suspends_on_its_own_result() -> None:
    runtime, sent = new_runtime(make_start(suspend_after_ms=0))
    ctx = Context(runtime)

    async def handler() -> bytes:
        await ctx.run("pay", lambda: 1)
        return b"done"

    asyncio.run(runtime.execute(handler))

    assert kinds(sent) == ["entry", "suspension"]
    assert sent[0].entry.entry.HasField("result")
    assert list(sent[1].suspension.waiting_on) == [1]


def test_replayed_run_returns_journaled_value_without_calling_fn() -> None:
    journaled = Entry(
        run=journal_pb2.RunCommand(name="pay"),
        result=Result(value=json.dumps({"payment_id": "pay_old"}).encode()),
    )
    runtime, sent = new_runtime(make_start([input_entry(), journaled]))
    ctx = Context(runtime)
    calls: list[int] = []
    got: list[Any] = []

    def pay() -> dict[str, str]:
        calls.append(1)
        return {"payment_id": "pay_new"}

    async def handler() -> bytes:
        got.append(await ctx.run("pay", pay))
        return b"done"

    asyncio.run(runtime.execute(handler))

    assert calls == []
    assert got == [{"payment_id": "pay_old"}]
    assert kinds(sent) == ["entry", "end"]
    assert sent[0].entry.index == 2


def test_replayed_run_without_result_runs_again() -> None:
    journal = [input_entry(), Entry(run=journal_pb2.RunCommand(name="pay"))]
    runtime, sent = new_runtime(make_start(journal, suspend_after_ms=0))
    ctx = Context(runtime)
    calls: list[int] = []

    async def handler() -> bytes:
        def pay() -> str:
            calls.append(1)
            return "again"

        await ctx.run("pay", pay)
        return b"done"

    asyncio.run(runtime.execute(handler))

    assert calls == [1]
    # The entry is already journaled: only its result is proposed.
    assert kinds(sent) == ["run_result", "suspension"]
    assert sent[0].run_result.entry_index == 1
    assert json.loads(sent[0].run_result.result.value) == "again"


def test_run_terminal_error_is_journaled_and_raised_after_completion() -> None:
    runtime, sent = new_runtime(make_start(suspend_after_ms=60000))
    ctx = Context(runtime)
    calls: list[int] = []
    seen: list[TerminalError] = []

    def pay() -> None:
        calls.append(1)
        raise TerminalError("card declined", grpc.StatusCode.FAILED_PRECONDITION)

    async def handler() -> bytes:
        try:
            await ctx.run("pay", pay)
        except TerminalError as e:
            seen.append(e)
            raise  # escapes: the invocation ends with this failure
        return b"unreachable"

    async def main() -> None:
        task = asyncio.create_task(runtime.execute(handler))
        await until(lambda: ran(sent))
        await asyncio.sleep(0.01)
        assert not task.done() and seen == []
        runtime.on_completion(
            protocol_pb2.CompletionMessage(entry_index=1, result=sent[0].entry.entry.result)
        )
        await asyncio.wait_for(task, 5)

    asyncio.run(main())

    assert calls == [1]
    failure = sent[0].entry.entry.result
    assert failure.WhichOneof("kind") == "failure"
    assert failure.failure.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert failure.failure.message == "card declined"
    assert len(seen) == 1
    assert seen[0].message == "card declined"
    assert seen[0].status_code == grpc.StatusCode.FAILED_PRECONDITION
    assert kinds(sent) == ["entry", "entry", "end"]
    output = sent[1].entry.entry
    assert output.WhichOneof("command") == "output"
    assert output.result.failure.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert output.result.failure.message == "card declined"


def test_replayed_failed_run_raises_without_calling_fn() -> None:
    journaled = Entry(
        run=journal_pb2.RunCommand(name="pay"),
        result=Result(failure=journal_pb2.Failure(code=9, message="card declined")),
    )
    runtime, sent = new_runtime(make_start([input_entry(), journaled]))
    ctx = Context(runtime)
    calls: list[int] = []

    async def handler() -> bytes:
        await ctx.run("pay", lambda: calls.append(1))
        return b"unreachable"

    asyncio.run(runtime.execute(handler))

    assert calls == []
    assert kinds(sent) == ["entry", "end"]
    assert sent[0].entry.entry.result.failure.message == "card declined"


def test_run_transient_exception_fails_the_attempt() -> None:
    runtime, sent = new_runtime(make_start())
    ctx = Context(runtime)

    def flaky() -> None:
        raise ConnectionError("gateway down")

    async def handler() -> bytes:
        await ctx.run("pay", flaky)
        return b"unreachable"

    asyncio.run(runtime.execute(handler))

    assert kinds(sent) == ["entry", "error"]
    assert "ConnectionError: gateway down" in sent[1].error.message
    assert not sent[1].error.non_determinism


# Handler outcomes.


def test_plain_exception_is_a_transient_error_not_an_output() -> None:
    runtime, sent = new_runtime(make_start())

    async def handler() -> bytes:
        raise ValueError("boom")

    asyncio.run(runtime.execute(handler))

    assert kinds(sent) == ["error"]
    error = sent[0].error
    assert error.code == grpc.StatusCode.UNKNOWN.value[0]
    assert error.message == "ValueError: boom"
    assert error.entry_index == -1
    assert not error.non_determinism
    assert proposed(sent) == []


def test_terminal_error_ends_with_failed_output() -> None:
    runtime, sent = new_runtime(make_start())

    async def handler() -> bytes:
        raise TerminalError("sold out", grpc.StatusCode.RESOURCE_EXHAUSTED)

    asyncio.run(runtime.execute(handler))

    assert kinds(sent) == ["entry", "end"]
    result = sent[0].entry.entry.result
    assert result.failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert result.failure.message == "sold out"


def test_divergent_replay_sends_non_determinism_error() -> None:
    journal = [input_entry(), reserve_entry(Result(value=RESPONSE.SerializeToString()))]
    runtime, sent = new_runtime(make_start(journal))
    ctx = Context(runtime)

    async def handler() -> bytes:
        await ctx.run("pay", lambda: 1)
        return b"unreachable"

    asyncio.run(runtime.execute(handler))

    assert kinds(sent) == ["error"]
    error = sent[0].error
    assert error.non_determinism
    assert error.code == grpc.StatusCode.INTERNAL.value[0]
    assert "entry 1" in error.message
    assert "call flights.Flights/Reserve" in error.message
    assert "run 'pay'" in error.message


def test_divergent_replay_returning_early_sends_non_determinism_error() -> None:
    # The journal has a call where the handler now returns: its output diverges.
    runtime, sent = new_runtime(make_start([input_entry(), reserve_entry()]))

    async def handler() -> bytes:
        return b"early"

    asyncio.run(runtime.execute(handler))

    assert kinds(sent) == ["error"]
    assert sent[0].error.non_determinism
    assert "call flights.Flights/Reserve" in sent[0].error.message


def test_divergent_replay_raising_terminal_error_sends_non_determinism_error() -> None:
    # BUG (see report): as above, but the handler ends with a TerminalError. Runtime.execute
    # calls machine.finish() inside its `except TerminalError` clause; the divergent output
    # raises NonDeterminismError there, which the sibling `except NonDeterminismError`
    # cannot catch. It escapes execute() and no terminal message is ever sent, so the
    # endpoint's Invoke stream waits on its outgoing queue forever.
    runtime, sent = new_runtime(make_start([input_entry(), reserve_entry()]))

    async def handler() -> bytes:
        raise TerminalError("sold out")

    escaped: list[BaseException] = []

    async def main() -> None:
        try:
            await runtime.execute(handler)
        except BaseException as e:
            escaped.append(e)

    asyncio.run(main())

    assert escaped == []
    assert kinds(sent) == ["error"]
    assert sent[0].error.non_determinism
    assert "call flights.Flights/Reserve" in sent[0].error.message


# Determinism.


def test_random_and_uuid_are_deterministic_per_seed() -> None:
    def draw(seed: int) -> tuple[Any, ...]:
        runtime, _ = new_runtime(make_start(random_seed=seed))
        ctx = Context(runtime)
        return ctx.uuid4(), ctx.random().random(), ctx.uuid4()

    first, again, other = draw(7), draw(7), draw(8)

    assert first == again
    assert first[0] != other[0]
    assert first[1] != other[1]
    assert first[0] != first[2]
    assert first[0].version == 4


def test_context_exposes_invocation_metadata() -> None:
    journal = [Entry(input=journal_pb2.InputCommand(request=b"", headers={"x-tenant": "acme"}))]
    start = make_start(journal)
    start.attempt = 3
    runtime, _ = new_runtime(start)
    ctx = Context(runtime)
    assert ctx.invocation_id == "inv_x"
    assert ctx.attempt == 3
    assert ctx.headers == {"x-tenant": "acme"}


# State (virtual objects).


def test_object_state_get_set_clear() -> None:
    runtime, sent = new_runtime(make_start(key="trip-1", state={"preset": b'"x"'}))
    ctx = ObjectContext(runtime)
    got: list[Any] = []

    async def handler() -> bytes:
        got.append(await ctx.get("count", 0))
        ctx.set("count", 5)
        got.append(await ctx.get("count"))
        got.append(await ctx.get("preset"))
        ctx.clear("preset")
        got.append(await ctx.get("preset", "gone"))
        return b"ok"

    asyncio.run(runtime.execute(handler))

    assert ctx.key == "trip-1"
    assert got == [0, 5, "x", "gone"]
    commands = [(p.index, p.entry.WhichOneof("command")) for p in proposed(sent)]
    assert commands == [
        (1, "get_state"),
        (2, "set_state"),
        (3, "get_state"),
        (4, "get_state"),
        (5, "clear_state"),
        (6, "get_state"),
        (7, "output"),
    ]
    entries = [p.entry for p in proposed(sent)]
    # Reads carry their result inline: nothing to wait for.
    assert entries[0].get_state.key == "count"
    assert entries[0].result.WhichOneof("kind") == "empty"
    assert entries[1].set_state.key == "count"
    assert entries[1].set_state.value == b"5"
    assert entries[2].result.value == b"5"
    assert entries[3].result.value == b'"x"'
    assert entries[5].result.WhichOneof("kind") == "empty"
    assert "suspension" not in kinds(sent)
    assert runtime.state == {"count": b"5"}


def test_replayed_get_state_uses_the_journaled_value() -> None:
    journal = [
        input_entry(),
        Entry(get_state=journal_pb2.GetStateCommand(key="count"), result=Result(value=b"1")),
    ]
    # The state has moved on since; a replay must still see what the journal saw.
    runtime, sent = new_runtime(make_start(journal, key="k", state={"count": b"2"}))
    ctx = ObjectContext(runtime)
    got: list[Any] = []

    async def handler() -> bytes:
        got.append(await ctx.get("count"))
        got.append(await ctx.get("count"))
        return b"ok"

    asyncio.run(runtime.execute(handler))

    assert got == [1, 2]
    assert [p.index for p in proposed(sent)] == [2, 3]


# Suspension when the broker closes its side.


def test_input_closed_while_blocked_suspends() -> None:
    runtime, sent = new_runtime(make_start(suspend_after_ms=60000))
    ctx = Context(runtime)
    unwound: list[BaseException] = []

    async def handler() -> bytes:
        try:
            await ctx.call("flights.Flights", "Reserve", REQUEST, flights_pb2.BookingStatus)
        except BaseException as e:
            unwound.append(e)
            raise
        return b"unreachable"

    async def main() -> None:
        task = asyncio.create_task(runtime.execute(handler))
        await until(has(sent, "entry"))
        await asyncio.sleep(0.01)
        assert not task.done()
        runtime.on_input_closed()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())

    assert kinds(sent) == ["entry", "suspension"]
    assert list(sent[1].suspension.waiting_on) == [1]
    assert len(unwound) == 1 and isinstance(unwound[0], durable.Suspended)


def test_input_closed_before_await_suspends_at_the_await() -> None:
    runtime, sent = new_runtime(make_start(suspend_after_ms=60000))
    ctx = Context(runtime)

    async def handler() -> bytes:
        runtime.on_input_closed()  # not blocked yet: nothing happens
        future = ctx.call("flights.Flights", "Reserve", REQUEST, flights_pb2.BookingStatus)
        assert "suspension" not in kinds(sent)
        await future
        return b"unreachable"

    asyncio.run(asyncio.wait_for(runtime.execute(handler), 5))

    assert kinds(sent) == ["entry", "suspension"]
    assert list(sent[1].suspension.waiting_on) == [1]


def test_input_closed_does_not_suspend_under_a_side_effect() -> None:
    runtime, sent = new_runtime(make_start(suspend_after_ms=60000))
    ctx = Context(runtime)

    async def main() -> None:
        gate = asyncio.Event()

        async def slow() -> str:
            await gate.wait()
            return "paid"

        async def handler() -> bytes:
            call = ctx.call("flights.Flights", "Reserve", REQUEST, flights_pb2.BookingStatus)
            waiting = asyncio.ensure_future(call)
            await asyncio.sleep(0)  # now blocked on entry 1
            paying = asyncio.ensure_future(ctx.run("pay", slow))
            # gather retrieves both outcomes: no task is left with an unseen Suspended.
            await asyncio.gather(waiting, paying)
            return b"unreachable"

        task = asyncio.create_task(runtime.execute(handler))
        await until(lambda: len(sent) == 1)
        await asyncio.sleep(0.01)  # the side effect is running now
        runtime.on_input_closed()
        await asyncio.sleep(0.01)
        # No suspension under the running side effect; its entry waits for its result,
        # so that both reach the broker together.
        assert kinds(sent) == ["entry"]
        gate.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())

    # The side effect's entry and outcome are sent, then the handler suspends on both.
    assert kinds(sent) == ["entry", "entry", "suspension"]
    assert sent[1].entry.entry.run.name == "pay" and sent[1].entry.entry.HasField("result")
    assert list(sent[2].suspension.waiting_on) == [1, 2]


# Suspension while blocked on several entries.


def _race_handler(runtime: Runtime, ctx: Context) -> Callable[[], Awaitable[bytes]]:
    completion = protocol_pb2.CompletionMessage(
        entry_index=1, result=Result(value=RESPONSE.SerializeToString())
    )

    async def handler() -> bytes:
        first = ctx.call("flights.Flights", "Reserve", REQUEST, flights_pb2.BookingStatus)
        second = ctx.call("flights.Flights", "Get", REQUEST, flights_pb2.BookingStatus)

        async def await_second() -> flights_pb2.BookingStatus:
            # Entry 1 is already blocked on (and the suspension timer armed) when this
            # runs. Deliver its completion in the very loop iteration the timer fires in,
            # just before it, as the endpoint's reader task can.
            asyncio.get_running_loop().call_soon(runtime.on_completion, completion)
            return await second

        await asyncio.gather(first, await_second())
        return b"unreachable"

    return handler


def test_still_blocked_after_a_completion_races_the_timer_suspends() -> None:
    # BUG (see report): Runtime._on_timer returns without re-arming when a blocked entry
    # has a result that the awaiting task has not consumed yet ("a completion is being
    # delivered"). When the handler stays blocked on another entry (here entry 2 of a
    # gather), nothing re-arms the timer: it never suspends despite suspend_after_ms=0.
    runtime, sent = new_runtime(make_start(suspend_after_ms=0))
    ctx = Context(runtime)

    before_cancel: list[str | None] = []

    async def main() -> None:
        task = asyncio.create_task(runtime.execute(_race_handler(runtime, ctx)))
        await asyncio.wait([task], timeout=1.0)
        before_cancel.extend(kinds(sent))
        if not task.done():  # stuck: cancelling makes execute() send "attempt cancelled"
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())

    # Still blocked on entry 2 a second later, so it must have suspended waiting on it.
    assert before_cancel == ["entry", "entry", "suspension"]
    assert list(sent[2].suspension.waiting_on) == [2]


@pytest.mark.parametrize("seed", [0, 2**64 - 1])
def test_extreme_seeds_are_accepted(seed: int) -> None:
    runtime, _ = new_runtime(make_start(random_seed=seed))
    ctx = Context(runtime)
    assert 0.0 <= ctx.random().random() < 1.0


def test_a_side_effect_that_raises_fails_the_attempt_even_when_the_handler_catches_it() -> None:
    # A handler that caught the run's exception went on to a fallback step; the run's
    # entry had no result, so the next attempt ran the side effect again, took the other
    # path and diverged from its own journal: both paths ran, then retried for ever.
    runtime, sent = new_runtime(make_start())
    ctx = Context(runtime)

    def charge() -> str:
        raise ConnectionError("bank unreachable")

    async def handler() -> bytes:
        try:
            await ctx.run("charge", charge)
        except Exception:  # the usual shape of a fallback
            await ctx.run("fallback", lambda: "queued")
            return b"fell back"
        return b"charged"

    asyncio.run(runtime.execute(handler))
    assert kinds(sent) == ["entry", "error"]
    assert sent[0].entry.entry.run.name == "charge"
    assert not sent[0].entry.entry.HasField("result")
    # Retryable: the broker runs the attempt again, the side effect with it.
    assert sent[1].error.message == "run 'charge' failed: ConnectionError: bank unreachable"
    assert not sent[1].error.non_determinism


def test_input_closed_from_the_start_runs_each_of_two_concurrent_side_effects_once() -> None:
    # Request/response attempts have no more input from the start: the first run's await
    # suspended while the second ran, its result was dropped and it ran again next time.
    runtime, sent = new_runtime(make_start(suspend_after_ms=60000))
    runtime.on_input_closed()
    ctx = Context(runtime)
    calls: list[str] = []

    def effect(name: str) -> Callable[[], Awaitable[str]]:
        async def run() -> str:
            calls.append(name)
            await asyncio.sleep(0.01)
            return name

        return run

    async def handler() -> bytes:
        await asyncio.gather(ctx.run("a", effect("a")), ctx.run("b", effect("b")))
        return b"unreachable: the results wait for the broker's acknowledgement"

    asyncio.run(runtime.execute(handler))
    assert calls == ["a", "b"]
    # Each run journaled once, each result sent once (with its entry, or after it).
    assert [e.entry.run.name for e in proposed(sent)] == ["a", "b"]
    results = [e.entry.result.value for e in proposed(sent) if e.entry.HasField("result")]
    results += [m.run_result.result.value for m in sent if m.WhichOneof("message") == "run_result"]
    assert sorted(results) == [b'"a"', b'"b"']
    assert kinds(sent)[-1] == "suspension"


@pytest.mark.parametrize("duration", [float("nan"), float("inf"), -float("inf"), 1e300, 10**400])
@pytest.mark.parametrize("use", ["sleep", "send", "with_timeout"])
def test_a_timer_that_is_no_finite_duration_fails_terminally(duration: float, use: str) -> None:
    # It raised ValueError or OverflowError, which the broker retried for ever.
    runtime, sent = new_runtime(make_start())
    ctx = Context(runtime)

    async def handler() -> bytes:
        if use == "sleep":
            await ctx.sleep(duration)
        elif use == "send":
            ctx.send("flights.Flights", "Reserve", REQUEST, delay=duration)
        else:
            call = ctx.call("flights.Flights", "Reserve", REQUEST, flights_pb2.BookingStatus)
            await call.with_timeout(duration)
        return b"unreachable"

    asyncio.run(runtime.execute(handler))
    [output] = [e.entry for e in proposed(sent) if e.entry.HasField("output")]
    assert output.result.failure.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "the duration must be a finite number of seconds up to 100 years, not" in (
        output.result.failure.message
    )


@pytest.mark.parametrize("inner", ["run", "sleep", "set"])
def test_a_durable_step_inside_a_side_effects_function_fails_that_run_saying_so(
    inner: str,
) -> None:
    # A ctx.run nested in another's function was journaled, then never taken again on
    # replay (the outer result is replayed): non-determinism, retried for ever.
    runtime, sent = new_runtime(make_start(key="k", state={}))
    ctx = ObjectContext(runtime)

    async def outer() -> str:
        if inner == "run":
            await ctx.run("inner", lambda: 1)
        elif inner == "sleep":
            await ctx.sleep(1)
        else:
            ctx.set("n", 1)
        return "outer done"

    async def handler() -> bytes:
        try:
            await ctx.run("outer", outer)
        except TerminalError as e:
            return e.message.encode()
        return b"unreachable"

    asyncio.run(runtime.execute(handler))
    # The outer run failed terminally, journaled as such (replay gives the same), and
    # nothing of the inner step was journaled.
    runs = [e.entry for e in proposed(sent) if e.entry.HasField("run")]
    assert [r.run.name for r in runs] == ["outer"]
    assert [e.entry.WhichOneof("command") for e in proposed(sent)] == ["run"]
    failed = runs[0].result.failure
    assert failed.code == grpc.StatusCode.INTERNAL.value[0]
    assert failed.message.startswith("a durable step (")
    assert "inside the function of run 'outer'" in failed.message


@pytest.mark.parametrize(
    ("timer_at", "awakeable_at", "winner"),
    [(3000, 2000, 1), (2000, 3000, 0), (2500, 2500, 0), (2000, 0, 0)],
)
def test_select_after_both_completed_picks_the_one_completed_first(
    timer_at: int, awakeable_at: int, winner: int
) -> None:
    # An attack resolved an approval 0.13 s into a 1 s timeout while the service was
    # down; when it came back both were complete, and the timer won by argument order.
    # (0: completed during this attempt, after everything journaled; ties go by order.)
    timer = Entry(sleep=journal_pb2.SleepCommand(wake_up_at_ms=2000), completed_at_ms=timer_at)
    timer.result.empty.SetInParent()
    approval = Entry(awakeable=journal_pb2.AwakeableCommand(), completed_at_ms=awakeable_at)
    approval.result.value = b'"approved"'
    runtime, sent = new_runtime(make_start([input_entry(), timer, approval]))
    ctx = Context(runtime)

    async def handler() -> bytes:
        sleeping = ctx.sleep(1)
        _, approved = ctx.awakeable()
        position, _ = await durable.select(sleeping, approved)
        return str(position).encode()

    asyncio.run(runtime.execute(handler))
    # The decision is journaled (a run named select) for replays to repeat.
    [decision] = [m.run_result for m in sent if m.WhichOneof("message") == "run_result"]
    assert decision.result.value == str(winner).encode()


def test_a_pausing_retry_policy_pauses_even_when_the_handler_catches_it() -> None:
    # PauseInvocation was an Exception: caught, the fallback ran, and the next attempt
    # ran the charge again and diverged from its own journal, retried for ever.
    runtime, sent = new_runtime(make_start())
    ctx = Context(runtime)
    policy = durable.RetryPolicy(initial_interval=0.001, max_attempts=2, on_max_attempts="pause")

    def charge() -> str:
        raise ConnectionError("bank unreachable")

    async def handler() -> bytes:
        try:
            await ctx.run("charge", charge, retry_policy=policy)
        except Exception:
            await ctx.run("fallback", lambda: "queued")
        return b"done"

    asyncio.run(runtime.execute(handler))
    assert [e.entry.run.name for e in proposed(sent)] == ["charge"]
    assert sent[-1].WhichOneof("message") == "error" and sent[-1].error.pause


@pytest.mark.parametrize(
    ("given", "seconds"),
    [(-1.0, 0.0), (float("inf"), 4294967.295), (float("nan"), 4294967.295), (1e20, 4294967.295)],
)
def test_a_retry_after_out_of_range_is_clamped_and_still_fails_the_attempt(
    given: float, seconds: float
) -> None:
    # A reset time already past (-1) or inf did not encode: the task died, and the
    # attempt sat "running" until the broker's inactivity timeout.
    assert durable.RetryableError("rate limited", given).retry_after == seconds
    runtime, sent = new_runtime(make_start())

    async def handler() -> bytes:
        raise durable.RetryableError("rate limited", given)

    asyncio.run(runtime.execute(handler))
    assert sent[-1].WhichOneof("message") == "error"
    assert sent[-1].error.retry_after_ms == int(seconds * 1000)


def test_a_failing_side_effect_lets_a_running_sibling_finish_and_journal_first() -> None:
    # The attempt failed at once: the sibling's result was dropped and it ran again.
    runtime, sent = new_runtime(make_start(suspend_after_ms=60000))
    ctx = Context(runtime)
    ran: list[str] = []

    async def slow() -> str:
        await asyncio.sleep(0.05)
        ran.append("a")
        return "a"

    def failing() -> str:
        raise ConnectionError("down")

    async def handler() -> bytes:
        await asyncio.gather(ctx.run("a", slow), ctx.run("b", failing))
        return b"unreachable"

    asyncio.run(runtime.execute(handler))
    assert ran == ["a"]
    assert kinds(sent)[-1] == "error"
    assert sent[-1].error.message == "run 'b' failed: ConnectionError: down"
    a_index = next(e.index for e in proposed(sent) if e.entry.run.name == "a")
    journaled = [m.run_result.entry_index for m in sent if m.WhichOneof("message") == "run_result"]
    journaled += [e.index for e in proposed(sent) if e.entry.HasField("result")]
    assert a_index in journaled


def test_select_among_completions_that_came_during_the_attempt_takes_the_first_to_come() -> None:
    # Both came while the handler was busy; they tied, and argument order chose.
    runtime, sent = new_runtime(make_start(suspend_after_ms=60000))
    ctx = Context(runtime)
    busy = asyncio.Event()

    async def handler() -> bytes:
        sleeping = ctx.sleep(1)
        _, approved = ctx.awakeable()
        await busy.wait()  # e.g. a side effect running while both complete
        position, _ = await durable.select(sleeping, approved)
        return str(position).encode()

    async def main() -> None:
        task = asyncio.create_task(runtime.execute(handler))
        await until(lambda: len(proposed(sent)) == 2)
        approval = Result(value=b'"yes"')
        runtime.on_completion(protocol_pb2.CompletionMessage(entry_index=2, result=approval))
        fired = Result()
        fired.empty.SetInParent()
        runtime.on_completion(protocol_pb2.CompletionMessage(entry_index=1, result=fired))
        busy.set()
        await until(lambda: any(m.WhichOneof("message") == "run_result" for m in sent))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    [decision] = [m.run_result for m in sent if m.WhichOneof("message") == "run_result"]
    assert decision.result.value == b"1"
