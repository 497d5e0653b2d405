"""An endpoint that keeps going after its output, over each transport: the first output
stands for the caller, for GetOutput and in the journal; nothing after it is applied (no
child invocation, no state write after the key was released)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from durable.v1 import ingress_pb2, invocation_pb2, journal_pb2, protocol_pb2
from playground import playground_pb2

from tests.fake_endpoint import TRANSPORTS, FakeEndpoint, end, entry
from tests.support import Cluster, invocation_id_of, wait_for

COUNTER = playground_pb2.DESCRIPTOR.services_by_name["Counter"]
Status = invocation_pb2.InvocationStatus


def _reply(text: str) -> journal_pb2.Result:
    return journal_pb2.Result(value=playground_pb2.Reply(text=text).SerializeToString())


def _output(index: int, text: str) -> protocol_pb2.InvokeResponse:
    return entry(index, output=journal_pb2.OutputCommand(), result=_reply(text))


def _after_output(start: protocol_pb2.StartMessage) -> list[protocol_pb2.InvokeResponse]:
    """By the request's `amount`, what follows the output "first"."""
    request = playground_pb2.AddRequest.FromString(start.journal[0].input.request)
    if len(start.journal) > 1:  # a retry after a refused attempt: it is already done
        return [end()]
    first = _output(1, "first")
    if request.amount == 0:  # well behaved
        return [first, end()]
    if request.amount == 1:  # a call after the output
        child = playground_pb2.AddRequest(name=f"{request.name}-child", amount=0)
        call = journal_pb2.CallCommand(
            service=COUNTER.full_name, method="Add", request=child.SerializeToString()
        )
        return [first, entry(2, call=call), _output(3, "second"), end()]
    if request.amount == 2:  # a state write after the output
        write = journal_pb2.SetStateCommand(key="after", value=b'"late"')
        return [first, entry(2, set_state=write), _output(3, "second"), end()]
    if request.amount == 3:  # a second output straight away
        return [first, _output(2, "second"), end()]
    if request.amount == 4:  # a suspension after the output
        return [
            first,
            protocol_pb2.InvokeResponse(suspension=protocol_pb2.SuspensionMessage(waiting_on=[1])),
        ]
    raise AssertionError(f"unexpected amount {request.amount}")


@pytest.fixture(scope="module", params=TRANSPORTS)
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    with FakeEndpoint([COUNTER], _after_output, transport=request.param) as endpoint:
        tmp = Path(tmp_path_factory.mktemp(f"after-output-{request.param}"))
        args = ["--retry-initial", "100ms", "--retry-max", "200ms"]
        with Cluster(tmp, broker_args=args, services=()) as running:
            running.register(endpoint.uri)
            yield running


@pytest.mark.parametrize("amount", [1, 2, 3, 4])
def test_what_follows_an_output_is_refused_and_the_first_output_stands(
    cluster: Cluster, amount: int
) -> None:
    name = f"k{amount}"
    reply, call = cluster.counter.Add.with_call(
        playground_pb2.AddRequest(name=name, amount=amount), timeout=30
    )
    assert reply.text == "first"
    invocation_id = invocation_id_of(call)

    output = cluster.ingress_api.GetOutput(
        ingress_pb2.AttachRequest(invocation_id=invocation_id), timeout=10
    )
    assert output.ready
    assert playground_pb2.Reply.FromString(output.value).text == "first"
    assert cluster.journal_kinds(invocation_id) == ["input", "output"]
    record = cluster.invocation(invocation_id)
    assert record.status == Status.COMPLETED
    assert playground_pb2.Reply.FromString(record.result.value).text == "first"

    # No child was started, no state was written, and the key was released: the next
    # exclusive call on it runs.
    children = [
        i for i in cluster.invocations(service=COUNTER.full_name) if i.key.endswith("-child")
    ]
    assert children == []
    assert cluster.state(COUNTER.full_name, name) == {}
    again = cluster.counter.Add(playground_pb2.AddRequest(name=name, amount=0), timeout=30)
    assert again.text == "first"


def test_the_violation_is_logged(cluster: Cluster) -> None:
    cluster.counter.Add(playground_pb2.AddRequest(name="logged", amount=3), timeout=30)
    log = cluster.tmp / "logs" / "broker.log"
    wait_for(
        lambda: "after the invocation's output" in log.read_text(),
        timeout=10,
        message="the broker to log the refused entry",
    )
