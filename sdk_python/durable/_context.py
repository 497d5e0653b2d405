"""The handler's view of its invocation: every operation here is journaled."""

from __future__ import annotations

import datetime
import inspect
import json
import random as _random
import time
import uuid
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar, overload

from google.protobuf.message import Message

from durable.v1 import journal_pb2

from ._errors import TerminalError
from ._machine import Entry, Result
from ._runtime import Runtime, failure

T = TypeVar("T")
M = TypeVar("M", bound=Message)


def _seconds(duration: datetime.timedelta | float) -> float:
    if isinstance(duration, datetime.timedelta):
        return duration.total_seconds()
    return float(duration)


class DurableFuture(Generic[T]):
    """The pending result of a journaled step (a call, a sleep). Await it for the value.

    The step is journaled when the future is created, not when it is awaited, so
    several calls can run at once and be awaited later in any order.
    """

    def __init__(self, runtime: Runtime, index: int, decode: Callable[[Result], T]) -> None:
        self._runtime = runtime
        self._index = index
        self._decode = decode

    @property
    def entry_index(self) -> int:
        """The step's index in the journal."""
        return self._index

    async def _result(self) -> T:
        result = await self._runtime.await_entry(self._index)
        if result.HasField("failure"):
            raise TerminalError(result.failure.message, result.failure.code)
        return self._decode(result)

    def __await__(self) -> Generator[Any, None, T]:
        return self._result().__await__()


class Context:
    """What a handler of a plain service gets: calls, side effects, timers, determinism."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._random = _random.Random(runtime.start.random_seed)

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
        """Starts another handler without waiting for it, optionally after a delay."""
        invoke_at = 0
        if delay is not None and _seconds(delay) > 0:
            invoke_at = self._journaled_clock_ms() + int(_seconds(delay) * 1000)
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
    async def run(self, name: str, fn: Callable[[], Awaitable[T]]) -> T: ...

    @overload
    async def run(self, name: str, fn: Callable[[], T]) -> T: ...

    async def run(self, name: str, fn: Callable[[], Any]) -> Any:
        """Runs a side effect once and journals its result.

        On replay the journaled result is returned and `fn` is not called again. The
        result must be JSON-serializable. A `TerminalError` raised by `fn` is journaled
        too; any other exception fails the attempt, which the broker retries.
        """
        index = self._runtime.propose(Entry(run=journal_pb2.RunCommand(name=name)))
        # Replayed with a result: reuse it. Journaled without one (the last attempt ended
        # before its result was durable): run it again, the at-least-once case.
        if self._runtime.machine.result(index) is None:
            self._runtime.side_effect_started()
            try:
                value = fn()
                if inspect.isawaitable(value):
                    value = await value
                outcome = Result(value=json.dumps(value).encode())
            except TerminalError as e:
                outcome = failure(e.code, e.message)
            finally:
                self._runtime.side_effect_ended()
            self._runtime.propose_run_result(index, outcome)
        future: DurableFuture[Any] = DurableFuture(
            self._runtime, index, lambda r: json.loads(r.value)
        )
        return await future

    def sleep(self, duration: datetime.timedelta | float) -> DurableFuture[None]:
        """A durable timer: await it to sleep `duration` (seconds or a timedelta).

        The handler suspends while it sleeps; the broker resumes it when the timer fires,
        even after a restart.
        """
        wake_up = self._journaled_clock_ms() + int(_seconds(duration) * 1000)
        index = self._runtime.propose(Entry(sleep=journal_pb2.SleepCommand(wake_up_at_ms=wake_up)))
        return DurableFuture(self._runtime, index, lambda r: None)

    def random(self) -> _random.Random:
        """A random generator seeded by the invocation: the same sequence on every replay."""
        return self._random

    def uuid4(self) -> uuid.UUID:
        """A random UUID drawn from `random()`: the same on every replay."""
        return uuid.UUID(int=self._random.getrandbits(128), version=4)

    async def now(self) -> datetime.datetime:
        """The current time, journaled so that replays see the same instant."""
        ms = await self.run("now", lambda: int(time.time() * 1000))
        return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)

    def _journaled_clock_ms(self) -> int:
        # Only used to compute absolute deadlines of new entries; replayed entries keep
        # their journaled deadline, so replays never see a different one.
        return int(time.time() * 1000)


class ObjectSharedContext(Context):
    """A shared handler of a virtual object: its key and read-only state."""

    @property
    def key(self) -> str:
        """The virtual object's key."""
        return self._runtime.start.key

    async def get(self, name: str, default: Any = None) -> Any:
        """The state value `name` (JSON), or `default` when it is not set."""
        raw = self._runtime.state.get(name)
        result = Result(value=raw) if raw is not None else Result(empty=journal_pb2.Empty())
        index = self._runtime.propose(
            Entry(get_state=journal_pb2.GetStateCommand(key=name), result=result)
        )
        journaled = self._runtime.machine.result(index)
        if journaled is None or not journaled.HasField("value"):
            return default
        return json.loads(journaled.value)


class ObjectContext(ObjectSharedContext):
    """An exclusive handler of a virtual object: it may also change the state."""

    def set(self, name: str, value: Any) -> None:
        """Sets the state value `name` to `value` (JSON-serializable)."""
        raw = json.dumps(value).encode()
        self._runtime.propose(Entry(set_state=journal_pb2.SetStateCommand(key=name, value=raw)))
        self._runtime.state[name] = raw

    def clear(self, name: str) -> None:
        """Removes the state value `name`."""
        self._runtime.propose(Entry(clear_state=journal_pb2.ClearStateCommand(key=name)))
        self._runtime.state.pop(name, None)
