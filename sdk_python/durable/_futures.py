"""Durable futures and the combinators over them (gather, select, timeouts).

Which of several futures completes first is a race; to replay identically, `select`
journals the winner (as a run entry named "select") and replays read it back.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

import grpc

from durable.v1 import journal_pb2

from ._errors import TerminalError
from ._machine import Entry, Result
from ._retry import seconds, timer_seconds
from ._runtime import Runtime

T = TypeVar("T")


class DurableFuture(Generic[T]):
    """The pending result of a journaled step (a call, a sleep, an awakeable...).

    The step is journaled when the future is created, not when it is awaited, so
    several calls can run at once and be awaited later in any order. Awaiting raises
    `TerminalError` when the step failed terminally (a callee's error, a cancellation).
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

    async def with_timeout(self, timeout: datetime.timedelta | float) -> T:
        """The result, or a terminal `DEADLINE_EXCEEDED` error if it takes longer.

        The timeout is a durable timer: it holds across suspensions and restarts.
        """
        wait = timer_seconds(timeout, "with_timeout")
        wake_up = int(self._runtime.clock() * 1000) + int(wait * 1000)
        index = self._runtime.propose(Entry(sleep=journal_pb2.SleepCommand(wake_up_at_ms=wake_up)))
        timer: DurableFuture[None] = DurableFuture(self._runtime, index, lambda r: None)
        winner, value = await select(self, timer)
        if winner == 1:
            raise TerminalError(
                f"timed out after {seconds(timeout):g}s", grpc.StatusCode.DEADLINE_EXCEEDED
            )
        return value  # type: ignore[no-any-return]


async def gather(*futures: DurableFuture[Any]) -> list[Any]:
    """All the futures' results, in order; raises the first failure in argument order."""
    return [await f for f in futures]


async def select(*futures: DurableFuture[Any]) -> tuple[int, Any]:
    """The first future to complete: (its position among the arguments, its result).

    When several have completed by the time it is evaluated (the handler resumed after
    they all came), the broker's completion times decide, then the argument order.

    Raises `TerminalError` if that future failed. The choice is journaled, so a
    replay returns the same winner even if others have completed since.
    """
    if not futures:
        raise ValueError("select needs at least one future")
    runtime = futures[0]._runtime
    index = runtime.propose(Entry(run=journal_pb2.RunCommand(name="select")))
    if runtime.machine.result(index) is None:
        candidates = [f.entry_index for f in futures]
        first = await runtime.await_any(candidates)
        runtime.propose_run_result(
            index, Result(value=json.dumps(candidates.index(first)).encode())
        )
    decision = await runtime.await_entry(index)
    position = int(json.loads(decision.value))
    return position, await futures[position]
