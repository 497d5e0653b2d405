"""Replaying an exported journal against handler code, in-process, with no side effect.

The journal goes to the same replay machine and runtime that run every attempt, in a
replay-only attempt (`StartMessage.replay_only`): every journaled step is answered from
the journal, and the first step the journal does not hold (a call, a send, a `ctx.run`
to execute, the output of an invocation still in flight) ends the replay instead of
being taken. Nothing reaches a broker or another service.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any

from durable.v1 import protocol_pb2

from ._endpoint import _Endpoint
from ._journal_export import ExportedJournal, load
from ._service import Service, Servicer

#: How a replay ended (`ReplayResult.outcome`).
COMPLETED = "completed"  # the new code reproduced the journal up to its recorded output
SUSPENDED = "suspended"  # it reached a step the journal holds without a result yet
STOPPED = "stopped"  # it went past the end of the journal: compatible so far
DIVERGED = "diverged"  # it took another step than the journal records
FAILED = "failed"  # it raised (not a TerminalError) while replaying


@dataclasses.dataclass(frozen=True)
class Divergence:
    """Where new code departs from a recorded journal.

    Attributes:
        index: The journal index of the first step that differs.
        recorded: The journaled command there, e.g. `run 'charge'`.
        produced: The command the new code took instead, e.g. `call shop.Mail/Send`.
    """

    index: int
    recorded: str
    produced: str

    def __str__(self) -> str:
        return (
            f"entry {self.index}: the journal records {self.recorded}, "
            f"the new code produced {self.produced}"
        )


@dataclasses.dataclass(frozen=True)
class ReplayResult:
    """What replaying one journal against handler code found.

    Attributes:
        invocation_id: The replayed invocation.
        service: Its service.
        method: Its method.
        outcome: One of "completed", "suspended", "stopped" (all compatible),
            "diverged" or "failed".
        replayed: How many journal entries the new code reproduced (the input included).
        divergence: The first step that differs, when `outcome` is "diverged".
        error: The exception the handler raised, when `outcome` is "failed".
    """

    invocation_id: str
    service: str
    method: str
    outcome: str
    replayed: int
    divergence: Divergence | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the new code is compatible with the journal (so far as it goes)."""
        return self.divergence is None and self.error is None

    def __str__(self) -> str:
        what = f"{self.invocation_id} ({self.service}/{self.method})"
        if self.divergence is not None:
            return f"{what} diverges at {self.divergence}"
        if self.error is not None:
            return f"{what} failed while replaying entry {self.replayed}: {self.error}"
        return f"{what} replays: {self.outcome} after {self.replayed} entries"


def replay(
    journal: str | os.PathLike[str] | dict[str, Any], servicer: Servicer | Service
) -> ReplayResult:
    """Replays an exported journal against `servicer`'s handler, in-process.

    Use it to check, before deploying, that new handler code still replays what the
    running code journaled::

        result = durable.testing.replay(Path("inv_1.json"), Checkout())
        assert result.ok, str(result)

    Args:
        journal: What `brokerctl invocations export ID` printed: the JSON text, a path to
            a file of it, or the decoded dict.
        servicer: The handlers to replay against: an instance of a generated `Servicer`
            subclass (or a `durable.Service`) hosting the invocation's service.

    Returns:
        The outcome: `ok`, or the first divergence (entry index, the recorded command
        and the one the new code produced) or the handler's failure.

    Raises:
        JournalFormatError: The export cannot be read (not JSON, another format, a
            malformed entry); the message says which part.
        ValueError: `servicer` does not implement the invocation's service and method.
        RuntimeError: Called inside a running event loop (use `replay_async`).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(replay_async(journal, servicer))
    raise RuntimeError(
        "durable.testing.replay runs its own event loop; in async code, "
        "await durable.testing.replay_async(...) instead"
    )


async def replay_async(
    journal: str | os.PathLike[str] | dict[str, Any], servicer: Servicer | Service
) -> ReplayResult:
    """`replay` for async code: runs the handler on the running event loop."""
    exported = load(journal)
    service = servicer if isinstance(servicer, Service) else Service.from_servicer(servicer)
    _check_serves(service, exported)
    record = exported.invocation
    start = protocol_pb2.StartMessage(
        invocation_id=record.id,
        service=record.service,
        method=record.method,
        key=record.key,
        attempt=record.attempts + 1,
        journal=exported.entries,
        suspend_after_ms=0,
        random_seed=record.random_seed,
        replay_only=True,
    )
    sent: list[protocol_pb2.InvokeResponse] = []
    runtime, execute = _Endpoint([service])._attempt(start, sent.append)
    # Nothing will complete what the journal leaves pending: such an await suspends.
    runtime.input_closed = True
    await execute()
    result = ReplayResult(
        invocation_id=record.id,
        service=record.service,
        method=record.method,
        outcome=STOPPED,
        replayed=min(runtime.machine.position, len(exported.entries)),
    )
    last = sent[-1] if sent else None
    kind = last.WhichOneof("message") if last is not None else None
    if runtime.diverged is not None:
        e = runtime.diverged
        divergence = Divergence(e.index, e.journaled, e.proposed)
        return dataclasses.replace(
            result, outcome=DIVERGED, replayed=e.index, divergence=divergence
        )
    if last is not None and kind == "error":
        return dataclasses.replace(result, outcome=FAILED, error=last.error.message)
    if kind == "end":
        return dataclasses.replace(result, outcome=COMPLETED)
    if last is not None and kind == "suspension" and last.suspension.waiting_on:
        return dataclasses.replace(result, outcome=SUSPENDED)
    return result


def _check_serves(service: Service, exported: ExportedJournal) -> None:
    record = exported.invocation
    if service.name != record.service:
        raise ValueError(
            f"the journal is of {record.service}/{record.method}, but the servicer "
            f"implements {service.name}"
        )
    if record.method not in service.handlers:
        raise ValueError(
            f"the journal is of {record.service}/{record.method}, which the servicer "
            "does not implement"
        )
