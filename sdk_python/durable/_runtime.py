"""Drives one attempt: the replay machine on one side, asyncio waiters on the other.

The runtime decides when the handler suspends. A handler that stays blocked on
incomplete journal entries (and runs no side effect) for `suspend_after_ms` suspends:
it tells the broker what it waits on and unwinds with `Suspended`. With 0 it suspends
at every await that is not complete, which exercises replay constantly.

A *replay-only* attempt (`StartMessage.replay_only`: a deployment check, or
`durable.testing.replay`) only replays: the first step past the journal, a side effect
the journal holds no result for, or a decision (a `select` winner) not journaled yet ends
it with a suspension instead, so checking new code against old journals has no effect.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable

import grpc

from durable.v1 import journal_pb2, protocol_pb2

from ._errors import (
    NonDeterminismError,
    PauseInvocation,
    ProtocolViolation,
    RetryableError,
    RunFailed,
    Suspended,
    TerminalError,
)
from ._machine import Entry, ReplayMachine, Result
from ._machine import describe as describe_command

log = logging.getLogger("durable")

_TERMINAL = ("end", "suspension", "error")

# Sorts after every completion time (ms since the epoch) in `await_any`.
_LATER = 2**63

# The name of the side effect whose function runs in this context, if one does.
IN_SIDE_EFFECT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "durable_in_side_effect", default=None
)


def failure(code: int, message: str) -> Result:
    """A failed result."""
    return Result(failure=journal_pb2.Failure(code=code, message=message))


class Runtime:
    """One attempt of one invocation, on the service side.

    Args:
        start: The broker's start message.
        send: Called with each outgoing message, in order; the last is terminal.
        clock: Seconds since the epoch: what `ctx.now()` and due times are read from.
    """

    def __init__(
        self,
        start: protocol_pb2.StartMessage,
        send: Callable[[protocol_pb2.InvokeResponse], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.start = start
        self.clock = clock
        self.machine = ReplayMachine(list(start.journal))
        self.state: dict[str, bytes] = dict(start.state)
        self.done = False
        self._send = send
        self._suspend_after = start.suspend_after_ms / 1000.0
        self._waiters: dict[int, asyncio.Future[Result]] = {}
        self._blocked: collections.Counter[int] = collections.Counter()
        self._blocked_since = 0.0
        self._side_effects = 0
        # The order completions arrived in during this attempt (see `await_any`).
        self._arrivals: dict[int, int] = {}
        # Set while no side effect's function runs (see `_side_effects_settled`).
        self._no_side_effects = asyncio.Event()
        self._no_side_effects.set()
        self._timer: asyncio.TimerHandle | None = None
        # Set when nothing more will arrive in this attempt (stream closed, or a
        # request/response attempt): blocking awaits then suspend at once.
        self.input_closed = False
        # The divergence that ended the attempt, if one did (replay reports read it).
        self.diverged: NonDeterminismError | None = None
        # How a side effect ended the attempt (see `run_failed`, `run_paused`): no step
        # may follow, and the handler may not complete.
        self.run_failure: RunFailed | PauseInvocation | None = None

    # Steps proposed by the context.

    def propose(self, entry: Entry, *, hold: bool = False) -> int:
        """Journals a step (or matches it against the replayed journal).

        With `hold`, the step is only queued: it leaves with the next message, so a side
        effect's entry and its result reach the broker together and share one commit.
        """
        if self.done:
            raise Suspended()
        self._check_run_failure()
        inside = IN_SIDE_EFFECT.get()
        if inside is not None:
            # Its function's outcome is what replay returns: a step taken inside it
            # would be journaled now and never taken again, and replay would diverge.
            raise TerminalError(
                f"a durable step ({describe_command(entry)}) inside the function of run "
                f"{inside!r}: side effects' functions may not use the context; take the "
                "step before or after the run",
                grpc.StatusCode.INTERNAL,
            )
        self._stop_past_replay()
        index = self.machine.propose(entry)
        if not hold:
            self.flush()
        return index

    def propose_run_result(self, index: int, result: Result) -> None:
        """Sends a side effect's outcome for the broker to make durable."""
        if self.done:
            raise Suspended()
        # Not refused after a sibling's failure: this side effect ran, and its result
        # spares the next attempt running it again (see `_side_effects_settled`).
        self._stop_past_replay(always=True)
        self.machine.propose_run_result(index, result)
        self.flush()

    async def await_any(self, indexes: list[int]) -> int:
        """Waits until one of the entries is completed; returns the one completed first.
        A suspension names all of them.

        Several may be complete already (the handler resumed after all of them came,
        or was busy while they came): the journal's completion times decide, then for
        those completed during this attempt (after every journaled one) the order they
        arrived in, then the order given.
        """
        while True:
            done = [i for i in indexes if self.machine.result(i) is not None]
            if done:
                return min(done, key=self._completion_order)
            waiters = self._block(indexes)
            try:
                # Shielded: the waiters are shared with other awaits of the same entries.
                await asyncio.wait(
                    [asyncio.shield(w) for w in waiters], return_when=asyncio.FIRST_COMPLETED
                )
                for w in waiters:
                    if w.done() and w.exception() is not None:
                        raise w.exception()  # type: ignore[misc]
            finally:
                self._unblock(indexes)

    async def await_entry(self, index: int) -> Result:
        """Waits until the entry is completed, suspending if it takes too long."""
        result = self.machine.result(index)
        if result is not None:
            return result
        (waiter,) = self._block([index])
        try:
            return await asyncio.shield(waiter)
        finally:
            self._unblock([index])

    def _completion_order(self, index: int) -> tuple[int, int]:
        journaled = self.machine.completed_at_ms(index)
        if journaled:
            return 0, journaled
        return 1, self._arrivals.get(index, _LATER)

    def _block(self, indexes: list[int]) -> list[asyncio.Future[Result]]:
        """Marks the handler blocked on the entries; returns their waiters."""
        if self.done:
            raise Suspended()
        loop = asyncio.get_running_loop()
        waiters = []
        for index in indexes:
            waiter = self._waiters.get(index)
            if waiter is None:
                waiter = loop.create_future()
                self._waiters[index] = waiter
            waiters.append(waiter)
        if not self._blocked:
            self._blocked_since = loop.time()
        for index in indexes:
            self._blocked[index] += 1
        if self.input_closed and not self._side_effects:
            # Nothing more will arrive. Not under a running side effect: its result
            # would be dropped and the function run again; its own await suspends.
            self._suspend()
        self._arm()
        return waiters

    def _unblock(self, indexes: list[int]) -> None:
        for index in indexes:
            self._blocked[index] -= 1
            if self._blocked[index] <= 0:
                del self._blocked[index]
        # Still blocked on other entries (a gather): keep the suspension timer armed.
        self._arm()

    def side_effect_started(self) -> None:
        """A `ctx.run` function runs: never suspend under it (nor run it at all in a
        replay-only attempt)."""
        self._stop_past_replay(always=True)
        self._side_effects += 1
        self._no_side_effects.clear()

    def side_effect_ended(self) -> None:
        """The function returned; suspension may be armed again. (With nothing more to
        come, the run's own await of its acknowledgement suspends: see `_block`.)"""
        self._side_effects -= 1
        if not self._side_effects:
            self._no_side_effects.set()
        self._arm()

    def run_failed(self, name: str, error: Exception) -> RunFailed | PauseInvocation:
        """A side effect failed the attempt: every later step raises too."""
        if self.run_failure is None:
            self.run_failure = RunFailed(f"run {name!r} failed: {type(error).__name__}: {error}")
        return self._again()

    def run_paused(self, message: str) -> RunFailed | PauseInvocation:
        """A side effect's retry policy pauses the invocation: as `run_failed`."""
        if self.run_failure is None:
            self.run_failure = PauseInvocation(message)
        return self._again()

    def _again(self) -> RunFailed | PauseInvocation:
        assert self.run_failure is not None
        return type(self.run_failure)(str(self.run_failure))

    def _check_run_failure(self) -> None:
        if self.run_failure is not None:
            raise self._again()

    # Messages from the broker.

    def on_completion(self, completion: protocol_pb2.CompletionMessage) -> None:
        """Records a completion and wakes whoever awaits it."""
        self.machine.complete(completion.entry_index, completion.result)
        self._arrivals.setdefault(completion.entry_index, len(self._arrivals))
        waiter = self._waiters.pop(completion.entry_index, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(completion.result)

    def on_input_closed(self) -> None:
        """The broker closed its side: nothing more will arrive in this attempt."""
        self.input_closed = True
        # A completion read just before the close wakes the handler: it goes on, and
        # suspends at its next await that is not complete (input_closed says so).
        if self._blocked and not self._side_effects and not self._completion_arrived():
            self._suspend()

    # The handler's outcome.

    async def execute(self, handler: Callable[[], Awaitable[bytes]]) -> None:
        """Runs the handler to its end and sends the terminal message."""
        try:
            try:
                outcome = Result(value=await handler())
            except TerminalError as e:
                outcome = failure(e.code, e.message)
            self._check_run_failure()  # a handler that caught it must not complete
            if not self.done:
                # Inside the outer try: proposing the output may itself diverge.
                self._stop_past_replay()
                self.machine.finish(outcome)
        except Suspended:
            pass
        except NonDeterminismError as e:
            self.diverged = e
            log.error("invocation %s: %s", self.start.invocation_id, e)
            if not self.done:
                self.machine.fail(
                    grpc.StatusCode.INTERNAL.value[0],
                    str(e),
                    non_determinism=True,
                    entry_index=e.index,
                )
        except asyncio.CancelledError:
            if not self.done:
                self.machine.fail(grpc.StatusCode.CANCELLED.value[0], "attempt cancelled")
            raise
        except RetryableError as e:
            await self._side_effects_settled()
            if not self.done:
                self.machine.fail(
                    grpc.StatusCode.UNAVAILABLE.value[0],
                    f"RetryableError: {e}",
                    retry_after_ms=int(e.retry_after * 1000),
                )
        except PauseInvocation as e:
            await self._side_effects_settled()
            if not self.done:
                self.machine.fail(grpc.StatusCode.UNAVAILABLE.value[0], str(e), pause=True)
        except RunFailed as e:
            log.warning(
                "invocation %s attempt %d: %s", self.start.invocation_id, self.start.attempt, e
            )
            await self._side_effects_settled()
            if not self.done:
                self.machine.fail(grpc.StatusCode.UNKNOWN.value[0], str(e))
        except ProtocolViolation as e:
            # Raised by the SDK only (the input does not parse): the broker's mistake.
            log.warning("invocation %s: %s", self.start.invocation_id, e)
            if not self.done:
                self.machine.fail(grpc.StatusCode.INVALID_ARGUMENT.value[0], str(e))
        except Exception as e:
            log.warning(
                "invocation %s attempt %d failed: %r",
                self.start.invocation_id,
                self.start.attempt,
                e,
            )
            await self._side_effects_settled()
            if not self.done:
                self.machine.fail(grpc.StatusCode.UNKNOWN.value[0], f"{type(e).__name__}: {e}")
        finally:
            self.flush()
            self.done = True
            self._cancel_timer()

    # Internals.

    async def _side_effects_settled(self) -> None:
        """Lets side effects still running (a sibling branch's) finish before the
        attempt fails: their results are then proposed and journaled, where failing at
        once dropped them and the next attempt ran them again. The broker's inactivity
        timeout bounds the wait."""
        await self._no_side_effects.wait()

    def _stop_past_replay(self, *, always: bool = False) -> None:
        """In a replay-only attempt, ends it before a step the journal does not hold
        (with `always`, before whatever the caller was about to do)."""
        if not self.start.replay_only or (self.machine.replaying and not always):
            return
        self.machine.suspend([])
        self.flush()
        raise Suspended()

    def flush(self) -> None:
        """Hands queued messages to `send`."""
        for message in self.machine.drain():
            if message.WhichOneof("message") in _TERMINAL:
                self.done = True
            self._send(message)

    def _arm(self) -> None:
        if self._timer is not None or self.done or not self._blocked or self._side_effects:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._blocked_since + self._suspend_after - loop.time())
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.done or not self._blocked or self._side_effects:
            return
        if self._completion_arrived():
            return  # a completion is being delivered; the handler will block again or go on
        loop = asyncio.get_running_loop()
        if loop.time() - self._blocked_since < self._suspend_after:
            self._arm()
            return
        self._suspend()

    def _completion_arrived(self) -> bool:
        """Whether an entry the handler is blocked on was completed since it blocked."""
        return any(self.machine.result(i) is not None for i in self._blocked)

    def _suspend(self) -> None:
        if self.done:
            return
        self.machine.suspend(list(self._blocked))
        self.flush()
        self._cancel_timer()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(Suspended())
        self._waiters.clear()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
