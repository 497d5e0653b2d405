"""`brokerctl deployments register URI --check`: replay recorded journals against a new
deployment before it takes any invocation, without side effects.

Each journal (of the invocations in flight, and up to `SAMPLE_COMPLETED` most recently
completed ones, of every service the new endpoint hosts) goes to the new endpoint as the
start of a *replay-only* attempt (`StartMessage.replay_only`), driven over the ordinary
service protocol: the endpoint replays it with the SDK's own replay machine, answering
every step from the journal, and ends the attempt at the first step the journal does not
hold instead of taking it (no side effect runs, not even a `ctx.run` journaled without
its result). Nothing the endpoint sends is journaled, and the partition never hears of
the check: this module reads journals and talks to the endpoint, nothing else.

Compatible: the handler ends (its output matches the journal's), suspends on a step the
journal holds without a result, or reaches the end of the journal. A divergence: the
endpoint reports non-determinism (which entry, the recorded command and its own), fails
while replaying, or cannot be driven at all (then the report says why).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from durable.v1 import admin_pb2, invocation_pb2, journal_pb2, protocol_pb2
from durable.wire import describe_command

from . import admin_query
from .core.model import UnknownInvocation
from .core.partition import Partition
from .invoker import Invoker

log = logging.getLogger("broker.deploy_check")

# Recently completed invocations replayed per service, newest first.
SAMPLE_COMPLETED = 20
REPLAY_TIMEOUT_S = 30.0
# Replays in flight at once: a check must not swamp the endpoint it is about to trust.
PARALLEL = 4
# Divergences spelled out in the refusal (the status message travels in a trailer).
MAX_REPORTED = 20

Status = invocation_pb2.InvocationStatus
_PROPOSED = re.compile(r"but the handler proposed (.+)$", re.DOTALL)
_ENTRY = re.compile(r"journal entry (\d+)")


@dataclasses.dataclass(frozen=True)
class Divergence:
    """One journal the new code does not reproduce.

    `index` is the first entry that differs, or -1 when the replay failed without
    pointing at one (the handler raised, the endpoint could not be driven).
    """

    invocation_id: str
    handler: str
    index: int
    recorded: str
    produced: str

    def line(self) -> str:
        """One line of the refusal."""
        where = f"{self.invocation_id} ({self.handler})"
        if self.index < 0:
            return f"{where}: {self.produced}"
        return (
            f"{where} entry {self.index}: recorded {self.recorded}, "
            f"new code produced {self.produced}"
        )


@dataclasses.dataclass(frozen=True)
class Report:
    """What a check found: how many journals it replayed, and every divergence."""

    checked: int
    divergences: list[Divergence]

    def refusal(self, uri: str) -> str:
        """The FAILED_PRECONDITION message: every divergence (up to `MAX_REPORTED`)."""
        lines = [
            f"the endpoint at {uri} does not replay {len(self.divergences)} of "
            f"{self.checked} recorded journal(s); nothing was registered "
            "(register without --check to deploy it anyway):"
        ]
        lines += [f"  {d.line()[:400]}" for d in self.divergences[:MAX_REPORTED]]
        if len(self.divergences) > MAX_REPORTED:
            lines.append(f"  ... and {len(self.divergences) - MAX_REPORTED} more")
        return "\n".join(lines)


def invocations_to_check(
    partition: Partition, completed: admin_query.CompletedIndex, services: Sequence[str]
) -> list[str]:
    """Ids of the in-flight invocations of `services` (oldest first), then of up to
    `SAMPLE_COMPLETED` most recently completed ones of each."""
    wanted = set(services)
    in_flight = sorted(
        (
            live
            for live in partition.listed()
            if live.listed.service in wanted and live.listed.status != Status.COMPLETED
        ),
        key=lambda live: live.order,
    )
    ids = [live.id for live in in_flight]
    for service in sorted(wanted):
        request = admin_pb2.ListInvocationsRequest(
            status=Status.COMPLETED, service=service, limit=SAMPLE_COMPLETED
        )
        listed = admin_query.list_invocations(partition, completed, request)
        ids += [r.id for r in listed.invocations if r.id not in ids]
    return ids


async def check(
    invoker: Invoker,
    uri: str,
    partition: Partition,
    completed: admin_query.CompletedIndex,
    services: Sequence[str],
) -> Report:
    """Replays the journals of `services`' invocations against the endpoint at `uri`."""
    await completed.wait_built()  # the sample of completed ones comes from the index
    ids = invocations_to_check(partition, completed, services)
    slots = asyncio.Semaphore(PARALLEL)

    async def one(invocation_id: str) -> Divergence | None:
        # Read under the semaphore: only PARALLEL journals are held in memory at once.
        async with slots:
            try:
                record, journal = partition.record(invocation_id)
            except UnknownInvocation:  # purged since it was listed
                return None
            return await replay(invoker, uri, _copy(record), list(journal))

    found = await asyncio.gather(*(one(i) for i in ids))
    divergences = [d for d in found if d is not None]
    log.info("check of %s: %d journal(s) replayed, %d diverge", uri, len(ids), len(divergences))
    return Report(len(ids), divergences)


async def replay(
    invoker: Invoker,
    uri: str,
    record: invocation_pb2.Invocation,
    journal: list[journal_pb2.JournalEntry],
) -> Divergence | None:
    """Drives one replay-only attempt of `record` at `uri`; the divergence, if any."""
    start = protocol_pb2.StartMessage(
        invocation_id=record.id,
        service=record.service,
        method=record.method,
        key=record.key,
        attempt=record.attempts + 1,
        journal=journal,
        suspend_after_ms=0,
        random_seed=record.random_seed,
        replay_only=True,
    )
    problem = _Problem(record, journal)
    try:
        messages = await _invoke_once(invoker, uri, start)
    except grpc.aio.AioRpcError as e:
        if e.code() != grpc.StatusCode.UNIMPLEMENTED:
            return problem(f"cannot replay it: {e.code().name}: {e.details()}")
        try:
            messages = await _invoke_streaming(invoker, uri, start)
        except grpc.aio.AioRpcError as e2:
            return problem(
                "cannot replay it: the endpoint does not serve InvokeOnce, and Invoke "
                f"failed: {e2.code().name}: {e2.details()}"
            )
    for message in messages:
        kind = message.WhichOneof("message")
        if kind == "error":
            return problem.from_error(message.error)
        if kind in ("end", "suspension"):
            return None
        # An endpoint that does not know replay-only mode proposes what comes after
        # the journal: that is as far as a check goes, and none of it is journaled.
        if kind == "entry" and message.entry.index >= len(journal):
            return None
        if kind == "run_result":
            return None
    return problem("the endpoint ended the replay without ending the attempt")


async def _invoke_once(
    invoker: Invoker, uri: str, start: protocol_pb2.StartMessage
) -> list[protocol_pb2.InvokeResponse]:
    reply = await invoker.stub(uri).InvokeOnce(  # type: ignore[misc]
        protocol_pb2.InvokeRequest(start=start),
        metadata=invoker.metadata,
        timeout=REPLAY_TIMEOUT_S,
    )
    return list(reply.messages) if reply is not None else []


async def _invoke_streaming(
    invoker: Invoker, uri: str, start: protocol_pb2.StartMessage
) -> list[protocol_pb2.InvokeResponse]:
    """For endpoints that only stream: the start, then an input side closed at once
    (nothing will complete what the journal leaves pending)."""

    async def requests() -> AsyncIterator[protocol_pb2.InvokeRequest]:
        yield protocol_pb2.InvokeRequest(start=start)

    call: Any = invoker.stub(uri).Invoke(
        requests(),  # type: ignore[arg-type]
        metadata=invoker.metadata,
        timeout=REPLAY_TIMEOUT_S,
    )
    out: list[protocol_pb2.InvokeResponse] = []
    try:
        async for message in call:
            out.append(message)
            if message.WhichOneof("message") in ("end", "suspension", "error"):
                break
            if message.WhichOneof("message") in ("entry", "run_result"):
                break  # past the journal: the check has seen enough
    finally:
        call.cancel()
    return out


class _Problem:
    """Builds the divergence of one replayed journal."""

    def __init__(
        self, record: invocation_pb2.Invocation, journal: list[journal_pb2.JournalEntry]
    ) -> None:
        self._record = record
        self._journal = journal

    def __call__(self, what: str, index: int = -1, produced: str = "") -> Divergence:
        recorded = describe_command(self._journal[index]) if 0 <= index < len(self._journal) else ""
        if index >= len(self._journal):
            recorded = "the end of the journal"
        return Divergence(
            invocation_id=self._record.id,
            handler=f"{self._record.service}/{self._record.method}",
            index=index,
            recorded=recorded,
            produced=produced or what,
        )

    def from_error(self, error: protocol_pb2.ErrorMessage) -> Divergence:
        if not error.non_determinism:
            return self(f"the new code failed while replaying: {error.message}")
        index = error.entry_index
        if index < 0:  # an endpoint that does not say: read it from the message
            match = _ENTRY.search(error.message)
            index = int(match.group(1)) if match else -1
        proposed = _PROPOSED.search(error.message)
        return self(error.message, index, proposed.group(1) if proposed else error.message)


def _copy(record: invocation_pb2.Invocation) -> invocation_pb2.Invocation:
    """A copy: a live record changes while the replay is awaited."""
    out = invocation_pb2.Invocation()
    out.CopyFrom(record)
    return out
