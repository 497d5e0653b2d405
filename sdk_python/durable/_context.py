"""The handler's view of its invocation: every operation here is journaled."""

from __future__ import annotations

import asyncio
import datetime
import inspect
import random as _random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

import grpc
from google.protobuf.message import Message

from durable.v1 import journal_pb2

from . import _serde, wire
from ._errors import TerminalError
from ._futures import DurableFuture
from ._machine import Entry, Result
from ._retry import RetryPolicy, seconds, timer_seconds
from ._runtime import IN_SIDE_EFFECT, Runtime, failure

T = TypeVar("T")
M = TypeVar("M", bound=Message)


class Context:
    """What a handler of a plain service gets: calls, side effects, timers, determinism."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        # Made on first use: seeding one costs more than most handlers' other work.
        self._random: _random.Random | None = None

    @property
    def invocation_id(self) -> str:
        """This invocation's id (`inv_...`), stable across attempts."""
        return self._runtime.start.invocation_id

    @property
    def attempt(self) -> int:
        """The attempt number, starting at 1."""
        return self._runtime.start.attempt

    @property
    def headers(self) -> dict[str, str]:
        """The request metadata the invocation was started with."""
        return dict(self._runtime.machine.input.headers)

    def call(
        self, service: str, method: str, request: Message, response_type: type[M]
    ) -> DurableFuture[M]:
        """Calls another handler through the broker; prefer the generated typed clients.

        Returns:
            A future of the response; a callee's `TerminalError` is raised when awaited.
        """
        index = self._runtime.propose(
            Entry(
                call=journal_pb2.CallCommand(
                    service=service, method=method, request=request.SerializeToString()
                )
            )
        )
        return DurableFuture(self._runtime, index, lambda r: response_type.FromString(r.value))

    def send(
        self,
        service: str,
        method: str,
        request: Message,
        *,
        delay: datetime.timedelta | float | None = None,
    ) -> None:
        """Starts another handler without waiting for it, optionally after a delay.

        A target that cannot run (no such service or method, a keyed request without
        its key) does not fail this handler: the broker records the send's invocation
        as failed at once, with the reason, where `brokerctl invocations` shows it.
        """
        invoke_at = 0
        if delay is not None and timer_seconds(delay, "a delayed send") > 0:
            invoke_at = self._journaled_clock_ms() + int(seconds(delay) * 1000)
        self._runtime.propose(
            Entry(
                send=journal_pb2.SendCommand(
                    service=service,
                    method=method,
                    request=request.SerializeToString(),
                    invoke_at_ms=invoke_at,
                )
            )
        )

    @overload
    async def run(
        self,
        name: str,
        fn: Callable[[], Awaitable[M]],
        *,
        retry_policy: RetryPolicy | None = None,
        type: type[M],
    ) -> M: ...

    @overload
    async def run(
        self,
        name: str,
        fn: Callable[[], M],
        *,
        retry_policy: RetryPolicy | None = None,
        type: type[M],
    ) -> M: ...

    @overload
    async def run(
        self,
        name: str,
        fn: Callable[[], Awaitable[T]],
        *,
        retry_policy: RetryPolicy | None = None,
    ) -> T: ...

    @overload
    async def run(
        self, name: str, fn: Callable[[], T], *, retry_policy: RetryPolicy | None = None
    ) -> T: ...

    async def run(
        self,
        name: str,
        fn: Callable[[], Any],
        *,
        retry_policy: RetryPolicy | None = None,
        type: type[Message] | None = None,
    ) -> Any:
        """Runs a side effect once and journals its result.

        On replay the journaled result is returned and `fn` is not called again. The
        result must be a JSON value, or a protobuf message of the class given as `type`
        (then it is returned as that message, on replay too); anything else fails the
        run at once with a terminal `INTERNAL` error naming the result's type. A
        `TerminalError` raised by `fn` is journaled too. Any other exception is retried:
        by `retry_policy` inside this attempt when given (then, once attempts are
        exhausted, the run fails terminally or pauses the invocation, as the policy
        says), otherwise by failing the attempt, which the broker retries with backoff.
        """
        index = self._runtime.propose(Entry(run=journal_pb2.RunCommand(name=name)), hold=True)
        # Replayed with a result: reuse it. Journaled without one (the last attempt ended
        # before its result was durable): run it again, the at-least-once case.
        if self._runtime.machine.result(index) is None:
            self._runtime.side_effect_started()
            try:
                outcome = await self._attempt_run(name, fn, retry_policy, type)
                # Proposed before the side effect counts as ended: ending it may suspend
                # the attempt (nothing more to come), which must not drop the result.
                self._runtime.propose_run_result(index, outcome)
            finally:
                self._runtime.side_effect_ended()
        what = f"the result of run {name!r}"
        future: DurableFuture[Any] = DurableFuture(
            self._runtime, index, lambda r: _serde.decode(r.value, type, what)
        )
        return await future

    async def _attempt_run(
        self,
        name: str,
        fn: Callable[[], Any],
        policy: RetryPolicy | None,
        message_type: type[Message] | None,
    ) -> Result:
        attempt = 0
        while True:
            attempt += 1
            token = IN_SIDE_EFFECT.set(name)
            try:
                value = fn()
                if inspect.isawaitable(value):
                    value = await value
                return Result(value=_run_result(name, value, message_type))
            except TerminalError as e:
                return failure(e.code, e.message)
            except Exception as e:
                if policy is None:
                    raise self._runtime.run_failed(name, e) from e
                if policy.max_attempts is not None and attempt >= policy.max_attempts:
                    message = f"run {name!r} failed after {attempt} attempts: {e!r}"
                    if policy.on_max_attempts == "pause":
                        raise self._runtime.run_paused(message) from e
                    return failure(2, message)
                await asyncio.sleep(policy.delay(attempt))
            finally:
                IN_SIDE_EFFECT.reset(token)

    def sleep(self, duration: datetime.timedelta | float) -> DurableFuture[None]:
        """A durable timer: await it to sleep `duration` (seconds or a timedelta).

        The handler suspends while it sleeps; the broker resumes it when the timer fires,
        even after a restart.
        """
        wake_up = self._journaled_clock_ms() + int(timer_seconds(duration, "ctx.sleep") * 1000)
        index = self._runtime.propose(Entry(sleep=journal_pb2.SleepCommand(wake_up_at_ms=wake_up)))
        return DurableFuture(self._runtime, index, lambda r: None)

    def awakeable(self, *, type: type[Message] | None = None) -> tuple[str, DurableFuture[Any]]:
        """An id for an outside system to complete, and the future of its value: a JSON
        value, or with `type=TheMessage` that message (from its proto3 JSON mapping; a
        value that is not one fails the await with a terminal `INTERNAL` error).

        Resolve it with `brokerctl awakeables resolve ID JSON` (or the admin API, or
        `resolve_awakeable` from another handler). While waiting, the handler suspends.
        """
        index = self._runtime.propose(Entry(awakeable=journal_pb2.AwakeableCommand()))
        awakeable_id = wire.awakeable_id(self.invocation_id, index)
        what = f"the value of awakeable {awakeable_id}"
        return awakeable_id, DurableFuture(
            self._runtime, index, lambda r: _serde.decode(r.value, type, what)
        )

    def resolve_awakeable(self, awakeable_id: str, value: Any) -> None:
        """Completes another invocation's awakeable with a JSON-serializable value.

        Raises:
            TerminalError: INVALID_ARGUMENT for a string that is no awakeable id. (An id
                whose awakeable is gone or already completed is ignored, as a late
                second completion is; the broker logs it.)
        """
        raw = _serde.encode(value, f"the value for awakeable {awakeable_id}")
        self._complete_awakeable(awakeable_id, Result(value=raw))

    def reject_awakeable(self, awakeable_id: str, reason: str) -> None:
        """Fails another invocation's awakeable: its await raises `TerminalError(reason)`.
        Bad ids as for `resolve_awakeable`."""
        self._complete_awakeable(awakeable_id, failure(10, reason))

    def _complete_awakeable(self, awakeable_id: str, result: Result) -> None:
        if wire.parse_awakeable_id(awakeable_id) is None:
            # Journaled, it would complete nothing and say nothing (the broker cannot
            # answer a step that awaits no result).
            raise TerminalError(
                f"{awakeable_id[:200]!r} is not an awakeable id: ids are what "
                "ctx.awakeable() returns (awk_...)",
                grpc.StatusCode.INVALID_ARGUMENT,
            )
        self._runtime.propose(
            Entry(
                complete_awakeable=journal_pb2.CompleteAwakeableCommand(
                    awakeable_id=awakeable_id, completion=result
                )
            )
        )

    def attach(self, invocation_id: str, response_type: type[M]) -> DurableFuture[M]:
        """Waits for another invocation's result (a `response_type` message)."""
        index = self._runtime.propose(
            Entry(attach=journal_pb2.AttachCommand(invocation_id=invocation_id))
        )
        return DurableFuture(self._runtime, index, lambda r: response_type.FromString(r.value))

    async def get_output(self, invocation_id: str, response_type: type[M]) -> M | None:
        """Another invocation's result if it completed, else None (no waiting)."""
        index = self._runtime.propose(
            Entry(get_output=journal_pb2.GetOutputCommand(invocation_id=invocation_id))
        )
        future: DurableFuture[M | None] = DurableFuture(
            self._runtime,
            index,
            lambda r: response_type.FromString(r.value) if r.HasField("value") else None,
        )
        return await future

    def random(self) -> _random.Random:
        """A random generator seeded by the invocation: the same sequence on every replay."""
        if self._random is None:
            self._random = _random.Random(self._runtime.start.random_seed)
        return self._random

    def uuid4(self) -> uuid.UUID:
        """A random UUID drawn from `random()`: the same on every replay."""
        return uuid.UUID(int=self.random().getrandbits(128), version=4)

    async def now(self) -> datetime.datetime:
        """The current time, journaled so that replays see the same instant."""
        ms = await self.run("now", self._journaled_clock_ms)
        return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)

    def _journaled_clock_ms(self) -> int:
        # Only used to compute absolute deadlines of new entries; replayed entries keep
        # their journaled deadline, so replays never see a different one.
        return int(self._runtime.clock() * 1000)


def _run_result(name: str, value: Any, message_type: type[Message] | None) -> bytes:
    """A run's result as journaled; `TerminalError` when it cannot be (see `_serde`)."""
    what = f"the result of run {name!r}"
    if isinstance(value, Message) and not isinstance(value, message_type or ()):
        # Without `type=` a replay would return a dict where the first run returned a
        # message: refuse rather than let the two differ.
        hint = f"pass type={type(value).__name__}" if message_type is None else "fix the type"
        raise TerminalError(
            f"cannot journal {what}: it is a {value.DESCRIPTOR.full_name} message but "
            f"type={message_type.__name__ if message_type else None}; {hint}",
            grpc.StatusCode.INTERNAL,
        )
    return _serde.encode(value, what)


class ObjectSharedContext(Context):
    """A shared handler of a virtual object: its key and read-only state."""

    @property
    def key(self) -> str:
        """The virtual object's key."""
        return self._runtime.start.key

    @overload
    async def get(self, name: str, default: Any = None) -> Any: ...

    @overload
    async def get(self, name: str, default: None = None, *, type: type[M]) -> M | None: ...

    @overload
    async def get(self, name: str, default: M, *, type: type[M]) -> M: ...

    async def get(
        self, name: str, default: Any = None, *, type: type[Message] | None = None
    ) -> Any:
        """The state value `name`, or `default` when it is not set.

        Values are JSON values, or, with `type=TheMessage`, the protobuf message that
        `set` stored (a stored value that is not one raises a terminal `INTERNAL` error).
        """
        raw = self._runtime.state.get(name)
        entry = Entry()
        entry.get_state.key = name
        if raw is not None:
            entry.result.value = raw
        else:
            entry.result.empty.SetInParent()
        index = self._runtime.propose(entry)
        journaled = self._runtime.machine.result(index)
        if journaled is None or not journaled.HasField("value"):
            return default
        return _serde.decode(journaled.value, type, f"state value {name!r}")

    async def state_keys(self) -> list[str]:
        """The names of the object's state values."""
        keys = journal_pb2.StateKeys(keys=sorted(self._runtime.state))
        index = self._runtime.propose(
            Entry(
                get_state_keys=journal_pb2.GetStateKeysCommand(),
                result=Result(value=keys.SerializeToString()),
            )
        )
        journaled = self._runtime.machine.result(index)
        raw = journaled.value if journaled is not None else b""
        return list(journal_pb2.StateKeys.FromString(raw).keys)


class ObjectContext(ObjectSharedContext):
    """An exclusive handler of a virtual object: it may also change the state."""

    def clear_all(self) -> None:
        """Removes every state value of the object."""
        self._runtime.propose(Entry(clear_all_state=journal_pb2.ClearAllStateCommand()))
        self._runtime.state.clear()

    def set(self, name: str, value: Any) -> None:
        """Sets the state value `name` to `value`: a JSON value or a protobuf message
        (read it back with `get(name, type=TheMessage)`).

        Raises:
            TerminalError: INTERNAL when `value` is neither, naming its type.
        """
        raw = _serde.encode(value, f"state value {name!r}")
        entry = Entry()
        entry.set_state.key = name
        entry.set_state.value = raw
        self._runtime.propose(entry)
        self._runtime.state[name] = raw

    def clear(self, name: str) -> None:
        """Removes the state value `name`."""
        self._runtime.propose(Entry(clear_state=journal_pb2.ClearStateCommand(key=name)))
        self._runtime.state.pop(name, None)


class DurablePromise:
    """A workflow's named durable promise: awaited in `run`, completed by anyone.

    Values are JSON. A promise completes once; a second completion fails.
    """

    def __init__(self, runtime: Runtime, name: str) -> None:
        self._runtime = runtime
        self.name = name

    def value(self, *, type: type[Message] | None = None) -> DurableFuture[Any]:
        """The promise's value, once resolved (rejection raises `TerminalError`): a JSON
        value, or with `type=TheMessage` that message, as `ctx.get` reads state."""
        index = self._runtime.propose(
            Entry(get_promise=journal_pb2.GetPromiseCommand(name=self.name))
        )
        what = f"the value of promise {self.name!r}"
        return DurableFuture(self._runtime, index, lambda r: _serde.decode(r.value, type, what))

    async def peek(self, *, type: type[Message] | None = None) -> Any | None:
        """The value if resolved (with `type=`, as `value` reads it), None while
        pending; raises if rejected."""
        index = self._runtime.propose(
            Entry(peek_promise=journal_pb2.PeekPromiseCommand(name=self.name))
        )
        what = f"the value of promise {self.name!r}"
        future: DurableFuture[Any] = DurableFuture(
            self._runtime,
            index,
            lambda r: _serde.decode(r.value, type, what) if r.HasField("value") else None,
        )
        return await future

    async def resolve(self, value: Any) -> None:
        """Resolves the promise; raises `TerminalError` if it was already completed."""
        await self._complete(Result(value=_serde.encode(value, f"promise {self.name!r}")))

    async def reject(self, reason: str) -> None:
        """Rejects the promise: awaiting it raises `TerminalError(reason)`."""
        await self._complete(failure(10, reason))

    async def _complete(self, result: Result) -> None:
        index = self._runtime.propose(
            Entry(
                complete_promise=journal_pb2.CompletePromiseCommand(
                    name=self.name, completion=result
                )
            )
        )
        await DurableFuture(self._runtime, index, lambda r: None)


class WorkflowSharedContext(ObjectSharedContext):
    """A workflow's shared handler: reads its state, completes or reads its promises."""

    def promise(self, name: str) -> DurablePromise:
        """The workflow's durable promise `name`."""
        return DurablePromise(self._runtime, name)


class WorkflowContext(ObjectContext):
    """A workflow's run handler (once per key): state, promises, everything else."""

    def promise(self, name: str) -> DurablePromise:
        """The workflow's durable promise `name`."""
        return DurablePromise(self._runtime, name)
