"""The endpoint's side of a Multiplex stream (`durable._multiplex.Multiplexer`), in
pure asyncio: no gRPC, no network.

Attempts are fakes: `start_attempt` returns a recording runtime and an `execute`
coroutine the test scripts (send messages through the attempt's `send`, wait on an
event, ...). The broker's frames come from a queue the test feeds; what the endpoint
sends is read from `Multiplexer.frames()`. pytest-asyncio is not installed, so every
test drives its own loop with `asyncio.run`, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

import grpc
import pytest
from durable._multiplex import Multiplexer, StartAttempt
from durable.v1 import journal_pb2, protocol_pb2

T = TypeVar("T")
TIMEOUT = 5.0

AttemptRequest = protocol_pb2.AttemptRequest
InvokeRequest = protocol_pb2.InvokeRequest
InvokeResponse = protocol_pb2.InvokeResponse


async def within(awaitable: Awaitable[T]) -> T:
    """`awaitable`, failing the test if it takes more than TIMEOUT seconds."""
    return await asyncio.wait_for(awaitable, timeout=TIMEOUT)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


# -- messages ----------------------------------------------------------------------------


def start_item(attempt_id: int, invocation_id: str) -> AttemptRequest:
    start = protocol_pb2.StartMessage(invocation_id=invocation_id, service="s.S", method="M")
    return AttemptRequest(attempt_id=attempt_id, message=InvokeRequest(start=start))


def completion_item(attempt_id: int, entry_index: int) -> AttemptRequest:
    completion = protocol_pb2.CompletionMessage(
        entry_index=entry_index, result=journal_pb2.Result(value=b"done")
    )
    return AttemptRequest(attempt_id=attempt_id, message=InvokeRequest(completion=completion))


def abandon_item(attempt_id: int) -> AttemptRequest:
    return AttemptRequest(attempt_id=attempt_id, abandon=True)


def entry(name: str, index: int = 1) -> InvokeResponse:
    """A proposed run entry; `name` tells the messages apart."""
    run_entry = journal_pb2.JournalEntry(run=journal_pb2.RunCommand(name=name))
    return InvokeResponse(entry=protocol_pb2.ProposedEntry(index=index, entry=run_entry))


END = InvokeResponse(end=protocol_pb2.EndMessage())
SUSPENSION = InvokeResponse(suspension=protocol_pb2.SuspensionMessage(waiting_on=[1]))
ERROR = InvokeResponse(error=protocol_pb2.ErrorMessage(code=13, message="boom"))


# -- fakes -------------------------------------------------------------------------------


class FakeAttempt:
    """What `start_attempt` hands the multiplexer: a runtime-like object that records the
    completions routed to it, and the `send` it was given."""

    def __init__(self, start: protocol_pb2.StartMessage, send: Callable[[Any], None]) -> None:
        self.start = start
        self.send = send
        self.completions: list[protocol_pb2.CompletionMessage] = []
        self.completed = asyncio.Event()
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.finished = asyncio.Event()

    def on_completion(self, message: protocol_pb2.CompletionMessage) -> None:
        self.completions.append(message)
        self.completed.set()


Script = Callable[[FakeAttempt], Coroutine[Any, Any, None]]


async def wait_released(attempt: FakeAttempt) -> None:
    """The default script: runs until the test releases it, then ends the attempt."""
    await attempt.release.wait()
    attempt.send(END)


class Harness:
    """A Multiplexer with fake attempts, a feed of broker frames, and a frame reader."""

    def __init__(self, script: Script = wait_released, draining: bool = False) -> None:
        self.script = script
        # Fake attempts by invocation id, in the order their starts reached us.
        self.attempts: dict[str, FakeAttempt] = {}
        self.starts: list[str] = []
        # Set (and replaced) whenever an attempt starts.
        self._started = asyncio.Event()
        # The fake runtime has the one method the multiplexer calls: on_completion.
        self.mux = Multiplexer(cast(StartAttempt, self.start_attempt), draining=draining)
        self._feed: asyncio.Queue[protocol_pb2.MultiplexRequest | None] = asyncio.Queue()
        self.sent: list[protocol_pb2.MultiplexResponse] = []
        self._arrived: asyncio.Queue[protocol_pb2.MultiplexResponse] = asyncio.Queue()
        self.reader = asyncio.create_task(self.mux.read(self._frames()))
        self.writer = asyncio.create_task(self._write())

    def start_attempt(
        self, start: protocol_pb2.StartMessage, send: Callable[[Any], None]
    ) -> tuple[FakeAttempt, Callable[[], Coroutine[Any, Any, None]]]:
        attempt = FakeAttempt(start, send)
        self.attempts[start.invocation_id] = attempt
        self.starts.append(start.invocation_id)
        self._started.set()
        self._started = asyncio.Event()

        async def execute() -> None:
            attempt.started.set()
            try:
                await self.script(attempt)
            except asyncio.CancelledError:
                attempt.cancelled.set()
                # A handler that still tries to report on its way out.
                attempt.send(entry("after cancellation", 99))
                raise
            finally:
                attempt.finished.set()

        return attempt, execute

    async def _frames(self) -> AsyncIterator[protocol_pb2.MultiplexRequest]:
        while (frame := await self._feed.get()) is not None:
            yield frame

    async def _write(self) -> None:
        async for frame in self.mux.frames():
            self.sent.append(frame)
            self._arrived.put_nowait(frame)

    def feed(self, *items: AttemptRequest) -> None:
        """The broker sends one frame carrying `items`."""
        self._feed.put_nowait(protocol_pb2.MultiplexRequest(items=items))

    def close_feed(self) -> None:
        """The broker ends its side of the stream."""
        self._feed.put_nowait(None)

    async def attempt(self, invocation_id: str) -> FakeAttempt:
        """The fake attempt of `invocation_id`, once its execution has begun."""
        while invocation_id not in self.attempts:
            await within(self._started.wait())
        attempt = self.attempts[invocation_id]
        await within(attempt.started.wait())
        return attempt

    async def next_frame(self) -> protocol_pb2.MultiplexResponse:
        return await within(self._arrived.get())

    async def items_until(
        self, done: Callable[[list[protocol_pb2.AttemptResponse]], bool]
    ) -> list[protocol_pb2.AttemptResponse]:
        """Every item sent so far, reading frames until `done` holds for them."""
        while not done(items := self.items()):
            await self.next_frame()
        return items

    def items(self) -> list[protocol_pb2.AttemptResponse]:
        return [item for frame in self.sent for item in frame.items]

    async def finish(self) -> list[protocol_pb2.AttemptResponse]:
        """Ends the stream from the broker's side; returns everything that was sent."""
        self.close_feed()
        await within(self.writer)
        await within(self.reader)
        return self.items()

    async def close(self) -> None:
        self.mux.stop_all()
        self.close_feed()
        await within(asyncio.gather(self.reader, self.writer, return_exceptions=True))


def by_attempt(items: list[protocol_pb2.AttemptResponse], attempt_id: int) -> list[Any]:
    return [item.message for item in items if item.attempt_id == attempt_id]


def run_names(messages: list[InvokeResponse]) -> list[str]:
    return [m.entry.entry.run.name for m in messages if m.HasField("entry")]


# -- tests -------------------------------------------------------------------------------


def test_items_of_concurrent_attempts_are_tagged_with_their_own_attempt_id() -> None:
    async def script(attempt: FakeAttempt) -> None:
        attempt.send(entry(f"step of {attempt.start.invocation_id}"))
        await attempt.release.wait()
        attempt.send(END)

    async def scenario() -> None:
        h = Harness(script)
        try:
            h.feed(start_item(7, "inv_a"), start_item(8, "inv_b"))
            a, b = await h.attempt("inv_a"), await h.attempt("inv_b")
            await h.items_until(lambda items: len(items) >= 2)
            b.release.set()
            a.release.set()
            items = await h.items_until(lambda items: len(items) >= 4)
            assert run_names(by_attempt(items, 7)) == ["step of inv_a"]
            assert run_names(by_attempt(items, 8)) == ["step of inv_b"]
            assert [m.WhichOneof("message") for m in by_attempt(items, 7)] == ["entry", "end"]
            assert [m.WhichOneof("message") for m in by_attempt(items, 8)] == ["entry", "end"]
            assert {item.attempt_id for item in items} == {7, 8}
        finally:
            await h.close()

    run(scenario)


def test_messages_queued_together_leave_in_one_frame() -> None:
    async def script(attempt: FakeAttempt) -> None:
        await attempt.release.wait()
        # Three messages without yielding to the loop: they are queued together.
        attempt.send(entry("one", 1))
        attempt.send(entry("two", 2))
        attempt.send(END)

    async def scenario() -> None:
        h = Harness(script)
        try:
            h.feed(start_item(1, "inv_a"))
            a = await h.attempt("inv_a")
            a.release.set()
            frame = await h.next_frame()
            assert [item.attempt_id for item in frame.items] == [1, 1, 1]
            assert [item.message.WhichOneof("message") for item in frame.items] == [
                "entry",
                "entry",
                "end",
            ]
            assert run_names([item.message for item in frame.items]) == ["one", "two"]
        finally:
            await h.close()

    run(scenario)


def test_messages_of_several_attempts_queued_together_share_a_frame() -> None:
    async def scenario() -> None:
        h = Harness()
        try:
            h.feed(start_item(1, "inv_a"), start_item(2, "inv_b"))
            a, b = await h.attempt("inv_a"), await h.attempt("inv_b")
            a.send(entry("from a"))
            b.send(entry("from b"))
            frame = await h.next_frame()
            assert [(i.attempt_id, i.message.entry.entry.run.name) for i in frame.items] == [
                (1, "from a"),
                (2, "from b"),
            ]
        finally:
            await h.close()

    run(scenario)


def test_a_completion_reaches_its_own_attempt_and_an_unknown_id_is_ignored() -> None:
    async def script(attempt: FakeAttempt) -> None:
        await attempt.completed.wait()
        attempt.send(END)

    async def scenario() -> None:
        h = Harness(script)
        try:
            h.feed(start_item(1, "inv_a"), start_item(2, "inv_b"))
            a, b = await h.attempt("inv_a"), await h.attempt("inv_b")
            # Unknown ids first: neither attempt may see them, and nothing breaks.
            h.feed(completion_item(42, 5), completion_item(0, 6), completion_item(2, 3))
            await within(b.completed.wait())
            assert [c.entry_index for c in b.completions] == [3]
            assert b.completions[0].result.value == b"done"
            assert a.completions == []
            await within(b.finished.wait())
            h.feed(completion_item(1, 4))
            await within(a.completed.wait())
            assert [c.entry_index for c in a.completions] == [4]
            assert [c.entry_index for c in b.completions] == [3]
            items = await h.items_until(lambda items: len(items) >= 2)
            assert sorted(i.attempt_id for i in items) == [1, 2]
            assert all(i.message.HasField("end") for i in items)
        finally:
            await h.close()

    run(scenario)


def test_a_completion_after_the_attempt_ended_is_not_delivered() -> None:
    async def script(attempt: FakeAttempt) -> None:
        attempt.send(END)
        await attempt.release.wait()

    async def scenario() -> None:
        h = Harness(script)
        try:
            h.feed(start_item(1, "inv_a"))
            a = await h.attempt("inv_a")
            await h.items_until(lambda items: len(items) >= 1)
            h.feed(completion_item(1, 2), start_item(2, "inv_marker"))
            await h.attempt("inv_marker")  # the completion's frame was dispatched first
            assert a.completions == []
        finally:
            await h.close()

    run(scenario)


def test_abandon_cancels_the_attempt_and_nothing_it_sends_afterwards_goes_out() -> None:
    async def scenario() -> None:
        h = Harness()
        try:
            h.feed(start_item(1, "inv_a"), start_item(2, "inv_b"))
            a, b = await h.attempt("inv_a"), await h.attempt("inv_b")
            a.send(entry("before abandon"))
            h.feed(abandon_item(1))
            await within(a.cancelled.wait())
            await within(a.finished.wait())
            # The abandoned handler can no longer send, nor receive completions.
            a.send(entry("after abandon"))
            h.feed(completion_item(1, 1))
            # The other attempt is untouched and ends normally.
            b.release.set()
            await within(b.finished.wait())
            items = await h.finish()
            assert run_names(by_attempt(items, 1)) == ["before abandon"]
            assert [m.WhichOneof("message") for m in by_attempt(items, 2)] == ["end"]
            assert a.completions == []
            assert not b.cancelled.is_set()
        finally:
            await h.close()

    run(scenario)


def test_abandon_of_an_unknown_attempt_is_harmless() -> None:
    async def scenario() -> None:
        h = Harness()
        try:
            h.feed(start_item(1, "inv_a"))
            a = await h.attempt("inv_a")
            h.feed(abandon_item(5))
            a.release.set()
            await within(a.finished.wait())
            items = await h.finish()
            assert not a.cancelled.is_set()
            assert [(i.attempt_id, i.message.WhichOneof("message")) for i in items] == [(1, "end")]
        finally:
            await h.close()

    run(scenario)


def test_a_repeated_start_for_a_running_attempt_does_not_start_it_again() -> None:
    async def scenario() -> None:
        h = Harness()
        try:
            h.feed(start_item(1, "inv_a"))
            a = await h.attempt("inv_a")
            # The same id again (with another invocation, to tell the starts apart),
            # then a marker start: once it runs, the repeated start has been dispatched.
            h.feed(start_item(1, "inv_again"), start_item(2, "inv_marker"))
            marker = await h.attempt("inv_marker")
            assert h.starts == ["inv_a", "inv_marker"]
            a.release.set()
            marker.release.set()
            await within(a.finished.wait())
            await within(marker.finished.wait())
            items = await h.finish()
            assert [(i.attempt_id, i.message.WhichOneof("message")) for i in items] == [
                (1, "end"),
                (2, "end"),
            ]
        finally:
            await h.close()

    run(scenario)


@pytest.mark.parametrize("terminal", [END, SUSPENSION, ERROR], ids=["end", "suspension", "error"])
def test_nothing_is_sent_for_an_attempt_after_its_terminal_message(
    terminal: InvokeResponse,
) -> None:
    async def script(attempt: FakeAttempt) -> None:
        attempt.send(entry("before"))
        attempt.send(terminal)
        attempt.send(entry("after the end", 2))
        await attempt.release.wait()
        attempt.send(entry("much later", 3))
        attempt.send(END)

    async def scenario() -> None:
        h = Harness(script)
        try:
            h.feed(start_item(1, "inv_a"))
            a = await h.attempt("inv_a")
            a.release.set()
            await within(a.finished.wait())
            items = await h.finish()
            assert [i.message for i in items] == [entry("before"), terminal]
            assert {i.attempt_id for i in items} == {1}
        finally:
            await h.close()

    run(scenario)


def test_drain_refuses_new_attempts_and_lets_running_ones_finish() -> None:
    async def script(attempt: FakeAttempt) -> None:
        attempt.send(entry("working"))
        await attempt.release.wait()
        attempt.send(entry("finishing", 2))
        attempt.send(END)

    async def scenario() -> None:
        h = Harness(script)
        try:
            h.feed(start_item(1, "inv_a"))
            a = await h.attempt("inv_a")
            h.mux.drain()
            assert not h.mux.ended.is_set()
            h.feed(start_item(2, "inv_new"))
            items = await h.items_until(lambda items: any(i.attempt_id == 2 for i in items))
            (refusal,) = by_attempt(items, 2)
            assert refusal.WhichOneof("message") == "error"
            assert refusal.error.code == grpc.StatusCode.UNAVAILABLE.value[0] == 14
            assert "shutting down" in refusal.error.message
            assert "inv_new" not in h.starts  # no handler ran for it
            assert not h.mux.ended.is_set()
            assert not h.writer.done()
            # The running attempt finishes; what it sends goes out; then the stream ends.
            a.release.set()
            await within(h.writer)
            await within(h.mux.ended.wait())
            items = h.items()
            assert run_names(by_attempt(items, 1)) == ["working", "finishing"]
            assert by_attempt(items, 1)[-1].HasField("end")
            assert not a.cancelled.is_set()
        finally:
            await h.close()

    run(scenario)


def test_drain_ends_after_the_last_of_several_attempts() -> None:
    async def scenario() -> None:
        h = Harness()
        try:
            h.feed(start_item(1, "inv_a"), start_item(2, "inv_b"))
            a, b = await h.attempt("inv_a"), await h.attempt("inv_b")
            h.mux.drain()
            a.release.set()
            await within(a.finished.wait())
            await h.items_until(lambda items: len(items) >= 1)
            assert not h.mux.ended.is_set()
            assert not h.writer.done()
            b.release.set()
            await within(h.writer)
            assert h.mux.ended.is_set()
            assert sorted(i.attempt_id for i in h.items()) == [1, 2]
        finally:
            await h.close()

    run(scenario)


def test_drain_counts_an_abandoned_attempt_as_ended() -> None:
    async def scenario() -> None:
        h = Harness()
        try:
            h.feed(start_item(1, "inv_a"))
            a = await h.attempt("inv_a")
            h.mux.drain()
            h.feed(abandon_item(1))
            await within(h.writer)
            assert h.mux.ended.is_set()
            assert a.cancelled.is_set()
            assert h.items() == []
        finally:
            await h.close()

    run(scenario)


def test_drain_with_nothing_running_ends_at_once() -> None:
    async def scenario() -> None:
        h = Harness()
        try:
            h.mux.drain()
            assert h.mux.ended.is_set()
            await within(h.writer)
            assert h.sent == []
        finally:
            await h.close()

    run(scenario)


def test_a_multiplexer_created_draining_ends_its_stream_at_once() -> None:
    async def scenario() -> None:
        h = Harness(draining=True)
        try:
            h.feed(start_item(3, "inv_a"))
            await within(h.writer)
            assert h.mux.ended.is_set()
            assert h.starts == []
        finally:
            await h.close()

    run(scenario)


class FragileHarness(Harness):
    """Attempts whose start or completion the endpoint cannot take: starting
    `inv_bad` raises, and so does a completion for entry 9."""

    def start_attempt(
        self, start: protocol_pb2.StartMessage, send: Callable[[Any], None]
    ) -> tuple[FakeAttempt, Callable[[], Coroutine[Any, Any, None]]]:
        if start.invocation_id == "inv_bad":
            raise ValueError("a journal starts with its input entry")
        attempt, execute = super().start_attempt(start, send)
        record = attempt.on_completion

        def on_completion(message: protocol_pb2.CompletionMessage) -> None:
            if message.entry_index == 9:
                raise ValueError("completion for entry 9 beyond the journal's end")
            record(message)

        attempt.on_completion = on_completion  # type: ignore[method-assign]
        return attempt, execute


def test_a_start_the_endpoint_cannot_take_fails_only_its_own_attempt() -> None:
    async def scenario() -> None:
        h = FragileHarness()
        try:
            h.feed(start_item(1, "inv_a"))
            a = await h.attempt("inv_a")
            h.feed(start_item(2, "inv_bad"))
            items = await h.items_until(lambda items: bool(by_attempt(items, 2)))
            [error] = by_attempt(items, 2)
            assert error.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
            assert "journal starts with its input" in error.error.message
            # The stream and the other attempt carry on.
            assert not h.mux.ended.is_set()
            a.release.set()
            items = await h.items_until(lambda items: END in by_attempt(items, 1))
            assert by_attempt(items, 1) == [END]
        finally:
            await h.close()

    run(scenario)


def test_a_completion_the_endpoint_cannot_take_fails_only_its_own_attempt() -> None:
    async def scenario() -> None:
        h = FragileHarness()
        try:
            h.feed(start_item(1, "inv_a"), start_item(2, "inv_b"))
            a, b = await h.attempt("inv_a"), await h.attempt("inv_b")
            h.feed(completion_item(1, 9))
            items = await h.items_until(lambda items: bool(by_attempt(items, 1)))
            [error] = by_attempt(items, 1)
            assert "beyond the journal" in error.error.message
            await within(a.cancelled.wait())
            assert not h.mux.ended.is_set()
            b.release.set()
            items = await h.items_until(lambda items: END in by_attempt(items, 2))
            assert by_attempt(items, 2) == [END]
            # What `a` tried to send while being cancelled did not go out.
            assert by_attempt(items, 1) == [error]
        finally:
            await h.close()

    run(scenario)


def test_stop_all_cancels_running_attempts_and_ends_the_stream() -> None:
    async def scenario() -> None:
        h = Harness()
        try:
            h.feed(start_item(1, "inv_a"), start_item(2, "inv_b"))
            a, b = await h.attempt("inv_a"), await h.attempt("inv_b")
            h.mux.stop_all()
            await within(a.cancelled.wait())
            await within(b.cancelled.wait())
            await within(h.writer)
            assert h.mux.ended.is_set()
            # What the handlers tried to send while being cancelled did not go out.
            assert h.items() == []
        finally:
            await h.close()

    run(scenario)


def test_the_stream_ends_when_the_broker_ends_its_side() -> None:
    async def scenario() -> None:
        h = Harness()
        try:
            h.feed(start_item(1, "inv_a"))
            a = await h.attempt("inv_a")
            a.send(entry("queued before the end"))
            items = await h.finish()
            assert h.mux.ended.is_set()
            assert run_names(by_attempt(items, 1)) == ["queued before the end"]
        finally:
            await h.close()

    run(scenario)


def test_an_attempt_the_endpoint_ends_while_starting_it_does_not_hold_up_a_drain() -> None:
    """The real endpoint answers a start for a handler it does not host with an error
    before the attempt's task even runs."""
    from durable._endpoint import _Endpoint

    async def scenario() -> None:
        mux = Multiplexer(_Endpoint([])._attempt)
        fed: asyncio.Queue[protocol_pb2.MultiplexRequest | None] = asyncio.Queue()

        async def frames() -> AsyncIterator[protocol_pb2.MultiplexRequest]:
            while (frame := await fed.get()) is not None:
                yield frame

        reader = asyncio.create_task(mux.read(frames()))
        try:
            item = start_item(4, "inv_a")
            item.message.start.journal.add().input.request = b""
            fed.put_nowait(protocol_pb2.MultiplexRequest(items=[item]))
            sent = mux.frames()
            frame = await within(anext(sent))
            assert [i.attempt_id for i in frame.items] == [4]
            error = frame.items[0].message.error
            assert error.code == grpc.StatusCode.UNIMPLEMENTED.value[0]
            assert "no handler s.S/M" in error.message
            mux.drain()
            assert mux.ended.is_set()
            assert [f async for f in sent] == []
        finally:
            mux.stop_all()
            fed.put_nowait(None)
            await within(reader)

    run(scenario)


# -- linger: the broker asks for fuller frames ----------------------------------------------


def _frame(*items: AttemptRequest, linger_us: int) -> protocol_pb2.MultiplexRequest:
    return protocol_pb2.MultiplexRequest(items=items, linger_us=linger_us)


@pytest.mark.parametrize("linger_us", [0, 100_000])
def test_a_frame_waits_as_long_as_the_broker_asks(linger_us: int) -> None:
    async def scenario() -> None:
        harness = Harness()
        harness._feed.put_nowait(
            _frame(start_item(1, "a"), start_item(2, "b"), linger_us=linger_us)
        )
        a, b = await harness.attempt("a"), await harness.attempt("b")
        a.release.set()
        await asyncio.sleep(0.005)
        b.release.set()
        first = await harness.next_frame()
        ended = sorted(item.attempt_id for item in first.items if item.message.HasField("end"))
        # Without a linger the first end goes at once, alone; with one, the frame waits
        # and carries the second end too.
        assert ended == ([1, 2] if linger_us else [1])
        await harness.close()

    run(scenario)


def test_a_linger_beyond_the_cap_is_cut_to_it() -> None:
    async def scenario() -> None:
        harness = Harness()
        harness._feed.put_nowait(_frame(start_item(1, "a"), linger_us=3_600_000_000))
        await harness.attempt("a")
        assert harness.mux.linger == 0.1
        harness._feed.put_nowait(_frame(completion_item(1, 1), linger_us=0))
        await within(harness.attempts["a"].completed.wait())
        assert harness.mux.linger == 0.0
        await harness.close()

    run(scenario)
