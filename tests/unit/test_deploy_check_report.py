"""The deployment check's report: how a divergence is read from an endpoint's error and
spelled out in the refusal (pure; the replays themselves are in
tests/integration/test_safe_deploys.py)."""

from __future__ import annotations

from durable.v1 import invocation_pb2, journal_pb2, protocol_pb2

from broker import deploy_check

Entry = journal_pb2.JournalEntry


def problem() -> deploy_check._Problem:
    record = invocation_pb2.Invocation(id="inv_1", service="s.S", method="M")
    journal = [
        Entry(input=journal_pb2.InputCommand()),
        Entry(run=journal_pb2.RunCommand(name="pay")),
    ]
    return deploy_check._Problem(record, journal)


def test_a_non_determinism_error_names_the_entry_and_both_commands() -> None:
    error = protocol_pb2.ErrorMessage(
        message="non-determinism at journal entry 1: the journal has run 'pay', "
        "but the handler proposed call a.B/C",
        entry_index=1,
        non_determinism=True,
    )
    found = problem().from_error(error)
    assert (found.index, found.recorded, found.produced) == (1, "run 'pay'", "call a.B/C")
    assert found.line() == "inv_1 (s.S/M) entry 1: recorded run 'pay', new code produced call a.B/C"


def test_an_error_without_its_index_is_read_from_the_message() -> None:
    error = protocol_pb2.ErrorMessage(
        message="non-determinism at journal entry 2: ..., but the handler proposed output",
        entry_index=-1,
        non_determinism=True,
    )
    found = problem().from_error(error)
    assert (found.index, found.recorded, found.produced) == (2, "the end of the journal", "output")


def test_a_handler_failure_is_reported_without_an_entry() -> None:
    error = protocol_pb2.ErrorMessage(message="UNKNOWN: ValueError: bad", entry_index=-1)
    found = problem().from_error(error)
    assert (
        found.line()
        == "inv_1 (s.S/M): the new code failed while replaying: UNKNOWN: ValueError: bad"
    )


def test_the_refusal_lists_every_divergence_up_to_a_limit() -> None:
    divergence = deploy_check.Divergence("inv_1", "s.S/M", 3, "run 'a'", "run 'b'")
    report = deploy_check.Report(30, [divergence] * (deploy_check.MAX_REPORTED + 5))
    lines = report.refusal("http://127.0.0.1:1").splitlines()
    assert lines[0].startswith("the endpoint at http://127.0.0.1:1 does not replay 25 of 30")
    assert lines[1] == "  inv_1 (s.S/M) entry 3: recorded run 'a', new code produced run 'b'"
    assert len(lines) == 1 + deploy_check.MAX_REPORTED + 1
    assert lines[-1] == "  ... and 5 more"
