"""`durable.testing.replay` fed hand-built exports (written by the broker's own
`journal_export`), against the playground's handlers: no broker, no network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import durable
import pytest
from durable.testing import JournalFormatError, replay
from durable.v1 import admin_pb2, invocation_pb2, journal_pb2
from playground import playground_pb2 as pb

from broker import journal_export
from services.playground import service as playground

Entry = journal_pb2.JournalEntry
Result = journal_pb2.Result


def export(service: str, method: str, entries: list[Entry], key: str = "") -> dict[str, Any]:
    response = admin_pb2.ExportInvocationResponse(
        invocation=invocation_pb2.Invocation(
            id="inv_test", service=service, method=method, key=key, random_seed=7
        ),
        journal=entries,
    )
    return journal_export.document(response)


def value(data: Any) -> Result:
    return Result(value=json.dumps(data).encode())


def add_journal(total_before: int = 2, amount: int = 3) -> list[Entry]:
    """What `Counter/Add` journals: read total, set total, set by-N, output."""
    request = pb.AddRequest(name="c", amount=amount).SerializeToString()
    total = total_before + amount
    return [
        Entry(input=journal_pb2.InputCommand(request=request)),
        Entry(get_state=journal_pb2.GetStateCommand(key="total"), result=value(total_before)),
        Entry(set_state=journal_pb2.SetStateCommand(key="total", value=b"5")),
        Entry(set_state=journal_pb2.SetStateCommand(key=f"by-{amount}", value=b"true")),
        Entry(
            output=journal_pb2.OutputCommand(),
            result=Result(value=pb.Reply(number=total).SerializeToString()),
        ),
    ]


class ReorderedCounter(playground.Counter):
    """`Add` with its two writes swapped: a change that breaks replay."""

    async def Add(self, ctx: durable.ObjectContext, request: pb.AddRequest) -> pb.Reply:
        total = int(await ctx.get("total", 0)) + request.amount
        ctx.set(f"by-{request.amount}", True)
        ctx.set("total", total)
        return pb.Reply(number=total)


class CrashingCounter(playground.Counter):
    async def Add(self, ctx: durable.ObjectContext, request: pb.AddRequest) -> pb.Reply:
        await ctx.get("total", 0)
        raise RuntimeError("boom")


def test_the_same_code_replays_a_completed_journal_to_its_output() -> None:
    result = replay(
        export("playground.Counter", "Add", add_journal(), key="c"), playground.Counter()
    )
    assert result.ok, str(result)
    assert (result.outcome, result.replayed) == ("completed", 5)


def test_reordered_steps_diverge_at_the_first_one_that_differs() -> None:
    result = replay(export("playground.Counter", "Add", add_journal(), key="c"), ReorderedCounter())
    assert not result.ok
    assert result.outcome == "diverged"
    assert result.divergence is not None
    assert result.divergence.index == 2
    assert result.divergence.recorded == "set_state 'total'"
    assert result.divergence.produced == "set_state 'by-3'"
    assert "entry 2" in str(result)


def test_a_pending_step_suspends_and_is_compatible() -> None:
    entries = [
        Entry(
            input=journal_pb2.InputCommand(request=pb.SleepRequest(millis=5).SerializeToString())
        ),
        Entry(sleep=journal_pb2.SleepCommand(wake_up_at_ms=1)),
    ]
    result = replay(export("playground.Waiter", "Sleep", entries), playground.Waiter())
    assert result.ok and result.outcome == "suspended"


def test_going_past_the_journal_stops_without_taking_the_step() -> None:
    # Busy/Work's next step is a side effect: it must not run.
    before = playground._busy_began["replayed"]
    request = pb.WorkRequest(millis=1, group="replayed").SerializeToString()
    result = replay(
        export("playground.Busy", "Work", [Entry(input=journal_pb2.InputCommand(request=request))]),
        playground.Busy(),
    )
    assert result.ok and (result.outcome, result.replayed) == ("stopped", 1)
    # Journaled without its result (the attempt died while it ran): not run either.
    entries = [
        Entry(input=journal_pb2.InputCommand(request=request)),
        Entry(run=journal_pb2.RunCommand(name="hold")),
    ]
    result = replay(export("playground.Busy", "Work", entries), playground.Busy())
    assert result.ok and result.outcome == "stopped"
    assert playground._busy_began["replayed"] == before


def test_a_handler_that_raises_while_replaying_fails_the_replay() -> None:
    result = replay(export("playground.Counter", "Add", add_journal(), key="c"), CrashingCounter())
    assert not result.ok
    assert result.outcome == "failed"
    assert result.error is not None and "RuntimeError: boom" in result.error


def test_the_export_is_read_from_text_or_a_file(tmp_path: Path) -> None:
    document = export("playground.Counter", "Add", add_journal(), key="c")
    path = tmp_path / "inv.json"
    path.write_text(json.dumps(document))
    assert replay(json.dumps(document), playground.Counter()).ok
    assert replay(path, playground.Counter()).ok
    assert replay(str(path), playground.Counter()).ok


@pytest.mark.parametrize(
    ("mangle", "expected"),
    [
        (lambda d: "{not json", "is not JSON"),
        (lambda d: "[1]", "is a JSON object, not list"),
        (lambda d: [d], "not a list"),
        (lambda d: {**d, "format": "something/else"}, "format is 'something/else'"),
        (lambda d: {**d, "journal": []}, "no journal entries"),
        (lambda d: {**d, "invocation": {"id": "inv_x"}}, "names no service or method"),
        (lambda d: {**d, "journal": d["journal"][1:]}, "says it is entry 1"),
        (
            lambda d: {**d, "journal": [{"index": 0, "entry": {"input": {"bogus": 1}}}]},
            "journal entry 0 is malformed",
        ),
        (lambda d: {**d, "journal": [{"index": 0, "entry": {}}]}, "holds no command"),
        (
            lambda d: {**d, "journal": [{"index": 0, "entry": {"sleep": {}}}]},
            "entry 0 must be the input",
        ),
    ],
)
def test_a_malformed_export_is_a_clear_error(mangle: Any, expected: str) -> None:
    document = mangle(export("playground.Counter", "Add", add_journal(), key="c"))
    with pytest.raises(JournalFormatError, match=expected):
        replay(document, playground.Counter())


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(JournalFormatError, match="cannot read the exported journal"):
        replay(tmp_path / "nope.json", playground.Counter())


def test_a_servicer_of_another_service_is_refused() -> None:
    document = export("playground.Counter", "Add", add_journal(), key="c")
    with pytest.raises(ValueError, match=r"implements playground\.Waiter"):
        replay(document, playground.Waiter())


def test_replay_refuses_to_run_inside_an_event_loop() -> None:
    import asyncio

    document = export("playground.Counter", "Add", add_journal(), key="c")

    async def inside() -> None:
        with pytest.raises(RuntimeError, match="replay_async"):
            replay(document, playground.Counter())
        assert (await durable.testing.replay_async(document, playground.Counter())).ok

    asyncio.run(inside())
