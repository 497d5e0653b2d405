"""The pure replay machine, fed hand-built journals (no asyncio, no network)."""

from __future__ import annotations

import pytest
from durable import NonDeterminismError
from durable._machine import ReplayMachine, describe
from durable.v1 import journal_pb2, protocol_pb2
from flights import flights_pb2

Entry = journal_pb2.JournalEntry
Result = journal_pb2.Result


def input_entry(request: bytes = b"req") -> Entry:
    return Entry(input=journal_pb2.InputCommand(request=request, headers={"x-user": "ada"}))


def call_entry(
    service: str = "A", method: str = "B", request: bytes = b"", result: Result | None = None
) -> Entry:
    entry = Entry(call=journal_pb2.CallCommand(service=service, method=method, request=request))
    if result is not None:
        entry.result.CopyFrom(result)
    return entry


def run_entry(name: str, result: Result | None = None) -> Entry:
    entry = Entry(run=journal_pb2.RunCommand(name=name))
    if result is not None:
        entry.result.CopyFrom(result)
    return entry


def kinds(messages: list[protocol_pb2.InvokeResponse]) -> list[str | None]:
    return [m.WhichOneof("message") for m in messages]


# A new journal: steps are proposed.


def test_new_journal_proposes_call_at_index_1() -> None:
    machine = ReplayMachine([input_entry()])
    assert not machine.replaying
    request = flights_pb2.ReserveRequest(trip_id="t1", to="LIS").SerializeToString()
    proposed = call_entry("flights.Flights", "Reserve", request)

    index = machine.propose(proposed)

    assert index == 1
    out = machine.drain()
    assert kinds(out) == ["entry"]
    assert out[0].entry.index == 1
    assert out[0].entry.entry == proposed
    assert out[0].entry.entry.call.request == request
    assert machine.result(1) is None
    # Drained messages are handed out once.
    assert machine.drain() == []


def test_new_entries_get_consecutive_indexes() -> None:
    machine = ReplayMachine([input_entry()])
    assert machine.propose(call_entry()) == 1
    assert machine.propose(run_entry("pay")) == 2
    assert [m.entry.index for m in machine.drain()] == [1, 2]
    assert machine.journaled(2).run.name == "pay"


def test_input_property_exposes_the_input_command() -> None:
    machine = ReplayMachine([input_entry(b"payload")])
    assert machine.input.request == b"payload"
    assert dict(machine.input.headers) == {"x-user": "ada"}


# Replay: steps inside the journal are matched, not proposed.


def test_replayed_call_returns_journaled_index_and_result() -> None:
    journaled_result = Result(value=b"journaled-response")
    machine = ReplayMachine([input_entry(), call_entry("A", "B", b"old", journaled_result)])
    assert machine.replaying

    # Only the identity (kind, service, method) must match, not the request bytes.
    index = machine.propose(call_entry("A", "B", b"new"))

    assert index == 1
    assert machine.drain() == []
    result = machine.result(1)
    assert result is not None
    assert result == journaled_result
    assert not machine.replaying


def test_step_after_replayed_prefix_is_new() -> None:
    machine = ReplayMachine([input_entry(), call_entry("A", "B", result=Result(value=b"r"))])
    assert machine.propose(call_entry("A", "B")) == 1
    assert machine.propose(run_entry("pay")) == 2
    out = machine.drain()
    assert kinds(out) == ["entry"]
    assert out[0].entry.index == 2
    assert out[0].entry.entry.run.name == "pay"


def test_replayed_entry_without_result_is_incomplete_until_completed() -> None:
    machine = ReplayMachine([input_entry(), call_entry("A", "B")])
    assert machine.propose(call_entry("A", "B")) == 1
    assert machine.result(1) is None
    machine.complete(1, Result(value=b"late"))
    result = machine.result(1)
    assert result is not None and result.value == b"late"


def test_completion_of_a_proposed_entry() -> None:
    machine = ReplayMachine([input_entry()])
    machine.propose(run_entry("pay"))
    machine.complete(1, Result(failure=journal_pb2.Failure(code=9, message="declined")))
    result = machine.result(1)
    assert result is not None
    assert result.failure.code == 9
    assert result.failure.message == "declined"


def test_completion_beyond_the_journal_end_is_rejected() -> None:
    machine = ReplayMachine([input_entry()])
    with pytest.raises(ValueError, match="beyond the journal"):
        machine.complete(1, Result(value=b"x"))


# Divergence.


def test_divergent_replay_raises_non_determinism_error() -> None:
    machine = ReplayMachine(
        [input_entry(), call_entry("flights.Flights", "Reserve", result=Result(value=b""))]
    )

    with pytest.raises(NonDeterminismError) as info:
        machine.propose(run_entry("pay"))

    assert info.value.index == 1
    message = str(info.value)
    assert "entry 1" in message
    assert "call flights.Flights/Reserve" in message
    assert "run 'pay'" in message
    assert machine.drain() == []
    # Control flow: a handler's `except Exception` cannot swallow it.
    assert not isinstance(info.value, Exception)


@pytest.mark.parametrize(
    ("journaled", "proposed"),
    [
        (call_entry("flights.Flights", "Reserve"), call_entry("flights.Flights", "Cancel")),
        (call_entry("flights.Flights", "Reserve"), call_entry("cars.Cars", "Reserve")),
        (run_entry("pay"), run_entry("refund")),
        (
            Entry(get_state=journal_pb2.GetStateCommand(key="a")),
            Entry(get_state=journal_pb2.GetStateCommand(key="b")),
        ),
        (
            Entry(set_state=journal_pb2.SetStateCommand(key="a")),
            Entry(clear_state=journal_pb2.ClearStateCommand(key="a")),
        ),
        (
            Entry(send=journal_pb2.SendCommand(service="A", method="B")),
            call_entry("A", "B"),
        ),
    ],
)
def test_identity_mismatches_diverge(journaled: Entry, proposed: Entry) -> None:
    machine = ReplayMachine([input_entry(), journaled])
    with pytest.raises(NonDeterminismError) as info:
        machine.propose(proposed)
    assert describe(journaled) in str(info.value)
    assert describe(proposed) in str(info.value)


def test_describe() -> None:
    assert describe(call_entry("a.A", "M")) == "call a.A/M"
    assert describe(Entry(send=journal_pb2.SendCommand(service="a.A", method="M"))) == "send a.A/M"
    assert describe(run_entry("pay")) == "run 'pay'"
    assert describe(Entry(get_state=journal_pb2.GetStateCommand(key="k"))) == "get_state 'k'"
    assert describe(Entry(set_state=journal_pb2.SetStateCommand(key="k"))) == "set_state 'k'"
    assert describe(Entry(clear_state=journal_pb2.ClearStateCommand(key="k"))) == "clear_state 'k'"
    assert describe(Entry(sleep=journal_pb2.SleepCommand(wake_up_at_ms=1))) == "sleep"
    assert describe(Entry(output=journal_pb2.OutputCommand())) == "output"


# Ending the attempt.


def test_finish_emits_output_entry_then_end() -> None:
    machine = ReplayMachine([input_entry()])
    machine.finish(Result(value=b"response"))

    out = machine.drain()
    assert kinds(out) == ["entry", "end"]
    assert out[0].entry.index == 1
    assert out[0].entry.entry.WhichOneof("command") == "output"
    assert out[0].entry.entry.result.value == b"response"


def test_finish_after_replayed_output_only_ends() -> None:
    machine = ReplayMachine(
        [input_entry(), Entry(output=journal_pb2.OutputCommand(), result=Result(value=b"r"))]
    )
    machine.finish(Result(value=b"r"))
    assert kinds(machine.drain()) == ["end"]


def test_suspend_emits_sorted_unique_indexes() -> None:
    machine = ReplayMachine([input_entry()])
    machine.suspend([5, 2, 5, 3, 2])
    out = machine.drain()
    assert kinds(out) == ["suspension"]
    assert list(out[0].suspension.waiting_on) == [2, 3, 5]


def test_fail_emits_error_message() -> None:
    machine = ReplayMachine([input_entry()])
    machine.fail(13, "diverged", non_determinism=True)
    machine.fail(2, "transient")

    out = machine.drain()
    assert kinds(out) == ["error", "error"]
    first, second = out[0].error, out[1].error
    assert (first.code, first.message, first.entry_index) == (13, "diverged", -1)
    assert first.non_determinism is True
    assert (second.code, second.message) == (2, "transient")
    assert second.non_determinism is False


# Malformed journals.


def test_empty_journal_is_rejected() -> None:
    with pytest.raises(ValueError, match="input"):
        ReplayMachine([])


def test_journal_not_starting_with_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="input"):
        ReplayMachine([call_entry(), input_entry()])
