"""The verification runner's checks: what the broker holds after the run, against the model.

Every check adds a line to `Verdict.problems` and the invocations involved to
`Verdict.suspects`, whose records and journals are dumped on failure.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TypeVar

import grpc
from chaos import chaos_pb2 as pb
from chaos import chaos_pb2_grpc
from durable.v1 import invocation_pb2, journal_pb2
from google.protobuf import text_format

from tests.chaos.runner_cluster import ChaosCluster
from tests.chaos.runner_model import Model
from tests.support import Status

SERVICE = "chaos.Counters"
ACTIVE = (Status.PENDING, Status.RUNNING, Status.SUSPENDED, Status.BACKING_OFF, Status.PAUSED)
MAX_PROBLEMS_SHOWN = 60
MAX_DUMPS = 15
T = TypeVar("T")


@dataclasses.dataclass
class ClientResult:
    """What the client that submitted one root program got back, over all its retries."""

    key: str
    outcome: pb.Outcome | None = None
    # The `invocation-id` response metadata of every try that carried it, in order.
    invocation_ids: list[str] = dataclasses.field(default_factory=list)
    # Each try: when it began and ended (seconds into the run), its status, its id.
    tries: list[str] = dataclasses.field(default_factory=list)
    attempts: int = 0
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    last_error: str = ""
    # Seconds from the first try to the answer.
    latency: float = 0.0

    def record_try(
        self, began: float, ended: float, status: str, invocation_id: str, node: str = ""
    ) -> None:
        """Notes one try of the call (`node`: the cluster node it went to)."""
        if invocation_id:
            self.invocation_ids.append(invocation_id)
        where = f" via {node}" if node else ""
        self.tries.append(f"{began:.2f}-{ended:.2f}s{where} {status} {invocation_id or '(no id)'}")


@dataclasses.dataclass
class Verdict:
    """The problems found, and the invocations worth a look."""

    problems: list[str] = dataclasses.field(default_factory=list)
    suspects: dict[str, str] = dataclasses.field(default_factory=dict)
    invocations: int = 0
    # Invocations that took more than one attempt, and the most attempts any took.
    retried: int = 0
    max_attempts: int = 0

    def fail(self, problem: str, *invocations: invocation_pb2.Invocation) -> None:
        self.problems.append(problem)
        for invocation in invocations:
            self.suspects.setdefault(invocation.id, problem)

    @property
    def passed(self) -> bool:
        return not self.problems


def active(cluster: ChaosCluster) -> list[invocation_pb2.Invocation]:
    """Invocations not completed yet (pending, running, suspended, backing off, paused)."""
    return [i for i in cluster.invocations() if i.status in ACTIVE]


def wait_quiescent(cluster: ChaosCluster, timeout: float) -> list[invocation_pb2.Invocation]:
    """Polls until no invocation is active or `timeout` passes; returns those still active."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            remaining = active(cluster)
        except grpc.RpcError:
            remaining = [invocation_pb2.Invocation(id="?", last_error="admin unreachable")]
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(0.2)  # polling the admin API with a deadline


def verify(model: Model, results: dict[str, ClientResult], cluster: ChaosCluster) -> Verdict:
    """Checks the clients' answers, every invocation's record, and every key's state."""
    verdict = Verdict()
    invocations = cluster.invocations()
    verdict.invocations = len(invocations)
    verdict.retried = sum(1 for i in invocations if i.attempts > 1)
    verdict.max_attempts = max((i.attempts for i in invocations), default=0)
    by_key: dict[tuple[str, str], list[invocation_pb2.Invocation]] = defaultdict(list)
    for invocation in invocations:
        if invocation.service != SERVICE:
            verdict.fail(f"invocation of an unexpected service: {_brief(invocation)}", invocation)
            continue
        by_key[invocation.method, invocation.key].append(invocation)
        if invocation.status != Status.COMPLETED:
            verdict.fail(f"not completed: {_brief(invocation)}", invocation)

    _check_clients(model, results, verdict)
    _check_programs(model, results, by_key, verdict)
    _check_leaves(model, by_key, verdict)
    expected_keys = (
        {("Execute", key) for key in model.programs}
        | {("Add", key) for key in model.adds}
        | {("Resolve", key) for key in model.resolvers}
        | {("Fail", key) for key in model.fails}
    )
    for method, key in sorted(set(by_key) - expected_keys):
        for invocation in by_key[method, key]:
            verdict.fail(f"unexpected invocation {method} on {key!r}", invocation)
    if len(invocations) != model.expected_invocations:
        verdict.problems.append(
            f"{len(invocations)} invocations, the model expects {model.expected_invocations}"
        )
    _check_state(model, cluster, verdict)
    return verdict


def _check_clients(model: Model, results: dict[str, ClientResult], verdict: Verdict) -> None:
    for root in model.roots:
        result = results.get(root.key)
        expected = model.programs[root.key].expected
        if result is None:
            verdict.problems.append(f"{root.key}: never submitted")
        elif result.outcome is None:
            verdict.problems.append(
                f"{root.key}: no answer after {result.attempts} attempts "
                f"(errors {result.errors}, last: {result.last_error})"
            )
        elif result.outcome != expected:
            verdict.problems.append(
                f"{root.key}: answered a wrong outcome\n{_diff(expected, result.outcome)}"
            )


def _check_programs(
    model: Model,
    results: dict[str, ClientResult],
    by_key: dict[tuple[str, str], list[invocation_pb2.Invocation]],
    verdict: Verdict,
) -> None:
    ids = {key: [i.id for i in by_key.get(("Execute", key), [])] for key in model.programs}
    for key, info in model.programs.items():
        found = by_key.get(("Execute", key), [])
        if len(found) != 1:
            verdict.fail(f"{key} ({info.kind}): {len(found)} Execute invocations", *found)
            continue
        invocation = found[0]
        if invocation.status == Status.COMPLETED:
            outcome = _outcome(invocation)
            if outcome != info.expected:
                got = outcome if outcome is not None else _result_text(invocation.result)
                verdict.fail(
                    f"{key} ({info.kind}) completed with a wrong result\n"
                    f"{_diff(info.expected, got)}",
                    invocation,
                )
        if info.kind == "root":
            if invocation.idempotency_key != model.idempotency_key(key):
                verdict.fail(
                    f"{key}: idempotency key {invocation.idempotency_key!r}, "
                    f"submitted with {model.idempotency_key(key)!r}",
                    invocation,
                )
            result = results.get(key)
            unknown = sorted(set(result.invocation_ids) - {invocation.id}) if result else []
            if result is not None and unknown:
                verdict.fail(
                    f"{key}: the ingress sent invocation-id {', '.join(unknown)} for idempotency "
                    f"key {invocation.idempotency_key!r}, but the broker's only invocation with "
                    f"that key is {invocation.id}; the client's tries (s into the run): "
                    f"{'; '.join(result.tries)}",
                    invocation,
                )
        elif info.kind == "call" and ids.get(info.parent) != [invocation.caller.invocation_id]:
            verdict.fail(
                f"{key} (called by {info.parent}): caller {invocation.caller.invocation_id!r}, "
                f"parent invocation {ids.get(info.parent)}",
                invocation,
            )


def _check_leaves(
    model: Model,
    by_key: dict[tuple[str, str], list[invocation_pb2.Invocation]],
    verdict: Verdict,
) -> None:
    for key, count in model.adds.items():
        found = by_key.get(("Add", key), [])
        if len(found) != count:
            verdict.problems.append(f"{key}: {len(found)} Add invocations, the model has {count}")
        for invocation in found:
            if invocation.status == Status.COMPLETED and not invocation.result.HasField("value"):
                verdict.fail(f"Add on {key} failed: {_result_text(invocation.result)}", invocation)
    for key in model.resolvers:
        found = by_key.get(("Resolve", key), [])
        if len(found) != 1:
            verdict.fail(f"{key}: {len(found)} Resolve invocations", *found)
        elif found[0].status == Status.COMPLETED and not found[0].result.HasField("value"):
            verdict.fail(f"Resolve {key} failed: {_result_text(found[0].result)}", found[0])
    for key, code in model.fails.items():
        found = by_key.get(("Fail", key), [])
        if len(found) != 1:
            verdict.fail(f"{key}: {len(found)} Fail invocations", *found)
        elif found[0].status == Status.COMPLETED and found[0].result.failure.code != code:
            verdict.fail(
                f"Fail {key}: expected failure code {code}, got {_result_text(found[0].result)}",
                found[0],
            )


def _check_state(model: Model, cluster: ChaosCluster, verdict: Verdict) -> None:
    """Counters through `Get` on the ingress; program keys' executions through the admin
    API (one `GetState` each, no invocation)."""
    counters = chaos_pb2_grpc.CountersStub(cluster.ingress_channel)
    for key in model.counter_keys:
        value = _retrying(functools.partial(counters.Get, pb.Key(key=key), timeout=10))
        if value.value != model.counters[key] or value.adds != model.adds[key]:
            verdict.problems.append(
                f"counter {key}: value {value.value} after {value.adds} adds, the model has "
                f"{model.counters[key]} after {model.adds[key]}"
            )
    for key in model.programs:
        state = _retrying(functools.partial(cluster.state, SERVICE, key))
        if state.get("executions") != 1:
            verdict.problems.append(
                f"{key}: state 'executions' is {state.get('executions')!r}, expected 1 "
                "(the handler's state change applied more or less than once)"
            )


def _retrying(call: Callable[[], T], attempts: int = 5) -> T:
    for attempt in range(attempts):
        try:
            return call()
        except grpc.RpcError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)  # the broker answers again shortly (restarted processes)
    raise AssertionError("unreachable")


def _outcome(invocation: invocation_pb2.Invocation) -> pb.Outcome | None:
    if not invocation.result.HasField("value"):
        return None
    try:
        return pb.Outcome.FromString(invocation.result.value)
    except Exception:
        return None


def _result_text(result: journal_pb2.Result) -> str:
    kind = result.WhichOneof("kind")
    if kind == "failure":
        return f"failure {result.failure.code}: {result.failure.message}"
    if kind == "value":
        return f"value {result.value[:80]!r}"
    return str(kind or "no result")


def _diff(expected: pb.Outcome, got: pb.Outcome | str) -> str:
    if isinstance(got, str):
        return f"    expected {list(expected.trace)}\n    got {got}"
    lines = []
    for index in range(max(len(expected.trace), len(got.trace))):
        want = expected.trace[index] if index < len(expected.trace) else "-"
        have = got.trace[index] if index < len(got.trace) else "-"
        mark = "  " if want == have else "!="
        lines.append(f"    {mark} step {index}: expected {want!r}, got {have!r}")
    if expected.key != got.key:
        lines.append(f"    key: expected {expected.key!r}, got {got.key!r}")
    return "\n".join(lines)


def _brief(invocation: invocation_pb2.Invocation) -> str:
    status = Status.Name(invocation.status)
    error = f", last error: {invocation.last_error}" if invocation.last_error else ""
    return (
        f"{invocation.id} {invocation.method} key={invocation.key!r} {status} "
        f"attempts={invocation.attempts}{error}"
    )


def report_problems(problems: list[str]) -> str:
    """The problems, at most `MAX_PROBLEMS_SHOWN` of them."""
    shown = problems[:MAX_PROBLEMS_SHOWN]
    more = len(problems) - len(shown)
    tail = [f"... and {more} more"] if more > 0 else []
    return "\n".join(f"  - {p}" for p in [*shown, *tail])


def dump(cluster: ChaosCluster, suspects: Iterable[tuple[str, str]]) -> str:
    """The record and journal of each suspect invocation (at most `MAX_DUMPS`)."""
    lines: list[str] = []
    for count, (invocation_id, why) in enumerate(suspects):
        if count == MAX_DUMPS:
            lines.append("  ... (more suspects not dumped)")
            break
        try:
            described = cluster.describe(invocation_id)
        except grpc.RpcError as e:
            lines.append(f"  {invocation_id}: DescribeInvocation failed: {e.code().name}")
            continue
        record = described.invocation
        lines.append(f"  {_brief(record)}")
        lines.append(f"    why: {why.splitlines()[0]}")
        lines.append(
            f"    caller={record.caller.invocation_id or '-'} "
            f"idempotency_key={record.idempotency_key or '-'} "
            f"waiting_on={list(record.waiting_on)} result={_result_text(record.result)}"
        )
        for index, entry in enumerate(described.journal):
            lines.append(f"    {index:3d} {_entry_text(entry)}")
    return "\n".join(lines)


def _entry_text(entry: journal_pb2.JournalEntry) -> str:
    kind = str(entry.WhichOneof("command"))
    command = getattr(entry, kind)
    if kind in ("input", "call", "send"):
        body = ", ".join(
            f"{field.name}={value!r}"
            for field, value in command.ListFields()
            if field.name not in ("request", "headers")
        )
    else:
        body = text_format.MessageToString(command, as_one_line=True)
    result = f" -> {_result_text(entry.result)}" if entry.HasField("result") else ""
    text = f"{kind} {body}{result}"
    return text if len(text) <= 200 else text[:197] + "..."
