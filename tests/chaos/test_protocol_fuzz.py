"""Seeded random attacks on the broker's edges, checked against what must always hold.

* A fake endpoint answers every attempt with a random run of messages, over each
  transport: entries at right and wrong indexes, entries after the output, run results
  and suspensions for entries that are not there, errors, garbage frames. From the fourth
  attempt on it behaves, so every invocation must end. Then: the broker is alive; each
  journal starts with its input and holds at most one output, as its last entry; a
  completed invocation's result is that output, and its caller got the same.
* Random admin state writes around --max-state-bytes, with keys around the 65,535-byte
  limit and values that are or are not JSON: each is accepted exactly when it is within
  the limits, and the stored state always equals the model.

`DURABLE_FUZZ_SEED` replays a run; `DURABLE_FUZZ_PROGRAMS` makes it longer.
"""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from durable.v1 import admin_pb2, invocation_pb2, journal_pb2, protocol_pb2
from playground import playground_pb2

from tests.fake_endpoint import TRANSPORTS, FakeEndpoint, end, entry
from tests.support import PLAYGROUND, Cluster

COUNTER = playground_pb2.DESCRIPTOR.services_by_name["Counter"]
Status = invocation_pb2.InvocationStatus
SEED = int(os.environ.get("DURABLE_FUZZ_SEED", random.randrange(1 << 30)))
PROGRAMS = int(os.environ.get("DURABLE_FUZZ_PROGRAMS", "12"))
BEHAVES_FROM_ATTEMPT = 4
_ENDS = ("sleep", "call")


def _result(rng: random.Random) -> journal_pb2.Result:
    text = f"out-{rng.randrange(1000)}"
    return journal_pb2.Result(value=playground_pb2.Reply(text=text).SerializeToString())


def _random_command(rng: random.Random, index: int, name: str, child: bool) -> dict[str, Any]:
    choices: list[dict[str, Any]] = [
        {"run": journal_pb2.RunCommand(name="r")},
        {"run": journal_pb2.RunCommand(name="r"), "result": _result(rng)},
        {"sleep": journal_pb2.SleepCommand(wake_up_at_ms=1)},
        {"set_state": journal_pb2.SetStateCommand(key="s", value=b"1")},
        {"clear_state": journal_pb2.ClearStateCommand(key="s")},
        {"get_state": journal_pb2.GetStateCommand(key="s"), "result": _result(rng)},
        {"get_state": journal_pb2.GetStateCommand(key="s")},  # without its result
        {"output": journal_pb2.OutputCommand(), "result": _result(rng)},
        {"output": journal_pb2.OutputCommand()},  # without its result
        {"get_promise": journal_pb2.GetPromiseCommand(name="p")},  # not a workflow
        {},  # no command at all
    ]
    if not child:  # children do not fan out further
        request = playground_pb2.AddRequest(name=f"child-{name}-{index}").SerializeToString()
        choices.append(
            {
                "call": journal_pb2.CallCommand(
                    service=COUNTER.full_name, method="Add", request=request
                )
            }
        )
        choices.append(
            {
                "send": journal_pb2.SendCommand(
                    service=COUNTER.full_name, method="Add", request=request
                )
            }
        )
    return rng.choice(choices)


def _attack(start: protocol_pb2.StartMessage) -> list[protocol_pb2.InvokeResponse] | bytes:
    request = playground_pb2.AddRequest.FromString(start.journal[0].input.request)
    child = request.name.startswith("child-")
    length = len(start.journal)
    if start.attempt >= BEHAVES_FROM_ATTEMPT:
        done = journal_pb2.Result(value=playground_pb2.Reply(text="settled").SerializeToString())
        return [entry(length, output=journal_pb2.OutputCommand(), result=done), end()]
    rng = random.Random(f"{SEED}/{request.name}/{start.attempt}")
    if rng.random() < 0.05:
        return b"\x0a\xff\xff\xff\xff"  # a frame that does not parse
    messages: list[protocol_pb2.InvokeResponse] = []
    index = length
    # Entries the broker completes by itself: a suspension on them must end. (A
    # suspension on a run without its result, or on an awakeable nobody resolves, would
    # rightly wait for ever.)
    completable = [i for i, e in enumerate(start.journal) if e.WhichOneof("command") in _ENDS]
    for _ in range(rng.randrange(1, 7)):
        roll = rng.random()
        if roll < 0.6:
            skew = 0 if rng.random() < 0.8 else rng.choice([-1, 1, 5])
            command = _random_command(rng, index, request.name, child)
            messages.append(entry(max(index + skew, 0), **command))
            if skew == 0:
                if set(command) & set(_ENDS):
                    completable.append(index)
                index += 1
        elif roll < 0.7:
            run_result = protocol_pb2.RunResultMessage(
                entry_index=rng.randrange(index + 2), result=_result(rng)
            )
            messages.append(protocol_pb2.InvokeResponse(run_result=run_result))
        elif roll < 0.8:
            # A completable entry, the input (which cannot complete) or one not there.
            target = rng.choice([*completable, 0, index + 3])
            waiting = protocol_pb2.SuspensionMessage(waiting_on=[target])
            messages.append(protocol_pb2.InvokeResponse(suspension=waiting))
        elif roll < 0.87:
            error = protocol_pb2.ErrorMessage(code=2, message="fuzzed failure")
            messages.append(protocol_pb2.InvokeResponse(error=error))
        elif roll < 0.94:
            messages.append(end())
        else:
            messages.append(protocol_pb2.InvokeResponse())
    return messages


def _check_invocation(cluster: Cluster, record: invocation_pb2.Invocation) -> None:
    journal = cluster.describe(record.id).journal
    kinds = [e.WhichOneof("command") for e in journal]
    assert kinds[0] == "input", (record.id, kinds)
    assert kinds.count("output") <= 1, (record.id, kinds)
    if "output" in kinds:
        assert kinds[-1] == "output", f"{record.id}: entries after the output: {kinds}"
        assert record.status == Status.COMPLETED, record
        assert record.result == journal[-1].result, record.id


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_random_protocol_violations_never_break_the_broker(tmp_path: Path, transport: str) -> None:
    print(f"protocol fuzz: DURABLE_FUZZ_SEED={SEED} ({transport})")
    # A script that stops mid-attempt leaves a multiplexed attempt waiting: the
    # inactivity timeout is what ends it.
    args = ["--retry-initial", "50ms", "--retry-max", "100ms", "--suspend-after", "200ms"]
    args += ["--inactivity-timeout", "1s"]
    with (
        FakeEndpoint([COUNTER], _attack, transport) as endpoint,
        Cluster(tmp_path, broker_args=args, services=()) as cluster,
    ):
        cluster.register(endpoint.uri)
        replies: dict[str, str] = {}
        failures: list[BaseException] = []

        def call(name: str) -> None:
            try:
                reply = cluster.counter.Add(playground_pb2.AddRequest(name=name), timeout=60)
                replies[name] = reply.text
            except grpc.RpcError as e:
                replies[name] = f"error {e.code().name}"
            except BaseException as e:
                failures.append(e)

        threads = [threading.Thread(target=call, args=(f"p{i}",)) for i in range(PROGRAMS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
        assert not failures, failures
        assert len(replies) == PROGRAMS, f"calls that never returned (seed {SEED})"

        def all_ended() -> list[invocation_pb2.Invocation] | None:
            records = cluster.invocations()
            done = all(r.status == Status.COMPLETED for r in records)
            return records if done else None

        records = cluster.wait_for(
            all_ended, timeout=60, message=f"every invocation to end ({SEED})"
        )
        for record in records:
            _check_invocation(cluster, record)
            if record.key in replies and not record.result.HasField("failure"):
                reply = playground_pb2.Reply.FromString(record.result.value)
                assert replies[record.key] == reply.text, (SEED, record.key)


def test_random_admin_state_writes_respect_the_limits(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"admin write fuzz: DURABLE_FUZZ_SEED={SEED}")
    limit, key_limit = 256, 65535
    args = ["--max-state-bytes", str(limit)]
    with Cluster(tmp_path, broker_args=args, services=(PLAYGROUND,)) as cluster:
        model: dict[str, dict[str, bytes]] = {}
        keys = ["a", "b" * key_limit, "c" * (key_limit + 1)]
        for _ in range(60):
            key, name = rng.choice(keys), rng.choice(["x", "y", "z" * 50])
            size = rng.choice([0, 1, 60, 120, limit - 2, limit])
            value: bytes | None = json.dumps("v" * size).encode()
            if rng.random() < 0.15:
                value = b"{not json"
            elif rng.random() < 0.15:
                value = None  # clear
            request = admin_pb2.SetStateRequest(service=COUNTER.full_name, key=key, name=name)
            if value is not None:
                request.value = value
            after = dict(model.get(key, {}))
            if value is None:
                after.pop(name, None)
            else:
                after[name] = value
            fits = sum(len(n) + len(v) for n, v in after.items()) <= limit
            if len(key) > key_limit:
                expected = grpc.StatusCode.INVALID_ARGUMENT
            elif value is not None and not value.startswith(b'"'):
                expected = grpc.StatusCode.INVALID_ARGUMENT
            elif not fits:
                expected = grpc.StatusCode.RESOURCE_EXHAUSTED
            else:
                expected = grpc.StatusCode.OK
            try:
                cluster.admin.SetState(request, timeout=10)
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
            assert code == expected, (SEED, len(key), name, size, value is None)
            if code == grpc.StatusCode.OK:
                model[key] = after
            for k in keys[:2]:
                stored = cluster.admin.GetState(
                    admin_pb2.GetStateRequest(service=COUNTER.full_name, key=k), timeout=10
                ).state
                assert dict(stored) == model.get(k, {}), SEED
        # Handlers on the keys still run.
        for k in keys[:2]:
            cluster.counter.Get(playground_pb2.CounterRef(name=k), timeout=30)
