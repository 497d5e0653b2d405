"""Cluster mode: a call whose creation was being appended to the partition's log when the
node stepped down may be in the log. An attack restored a NATS quorum after losing it:
callers got UNAVAILABLE "this node stepped down; retry later" (which gRPC clients take
as safe to retry) for a call that the next leader then ran.

Now the committer tells such writes apart (`AppendInDoubt`), the partition's router
hands a keyless one to the cluster's front to follow (`Moved`, not acknowledged), and the
front asks the next leader: its answer if it has the call, UNAVAILABLE "did not run" if
it has not, UNKNOWN "may have run" if no leader answers. Fakes stand in for the log, the
driver and the peers; the appends against real NATS servers are in tests/chaos.
"""

from __future__ import annotations

import asyncio
import types
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

import grpc
import pytest
from durable.v1 import ingress_pb2

from broker.cluster.directory import Unreachable
from broker.cluster.ingress import ClusterRouter
from broker.cluster.placement import Placement
from broker.ingress.router import INVOCATION_ID, OUTCOME, IngressRouter, Moved
from broker.registry import Registry
from broker.replication.log import Fenced
from broker.storage import AppendInDoubt, Batch, Committer, MemoryKV, StoreUnavailable
from broker.storage.commit import Write

Futures = asyncio.Future[Any]


class SteppingDownLog:
    """A partition's log whose append waits, then fails: the node stepped down."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.step_down = asyncio.Event()

    async def append_batches(self, batches: list[list[Write]]) -> list[tuple[list[Write], int]]:
        self.started.set()
        await self.step_down.wait()
        raise Fenced("partition 0: this node stepped down")

    def turn(self) -> AbstractAsyncContextManager[None]:
        return nullcontext()


def _batch(key: bytes) -> Batch:
    batch = Batch()
    batch.put(key, b"v")
    return batch


def test_only_the_group_being_appended_is_in_doubt() -> None:
    async def scenario() -> list[BaseException | None]:
        log = SteppingDownLog()
        committer = Committer(MemoryKV(), sync=False, log=log)
        appending = committer.submit(_batch(b"a"))
        await log.started.wait()
        queued = committer.submit(_batch(b"b"))  # cut after the append: never sent
        log.step_down.set()
        later = committer.submit(_batch(b"c"))  # after the node stopped writing
        for _ in range(5):
            await asyncio.sleep(0)
        return [f.exception() for f in (appending, queued, later)]

    appending, queued, later = asyncio.run(scenario())
    assert isinstance(appending, AppendInDoubt)
    assert "stepped down" in str(appending)
    for certainly_not_stored in (queued, later):
        assert isinstance(certainly_not_stored, StoreUnavailable)
        assert not isinstance(certainly_not_stored, AppendInDoubt)


class FakeContext:
    """The slice of `grpc.aio.ServicerContext` the routers use."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata
        self.sent: list[tuple[tuple[str, str], ...]] = []
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float | None:
        return 30.0

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        pass

    async def send_initial_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.sent.append(metadata)

    async def abort(self, code: grpc.StatusCode, details: str = "", *_: Any) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


class FakeDriver:
    """Creates invocation `inv_x`, whose creation's append ends in doubt."""

    committer = types.SimpleNamespace(healthy=True, lost=None)

    def invoke(self, *_: Any, **__: Any) -> tuple[str, Futures, Futures]:
        loop = asyncio.get_running_loop()
        durable: asyncio.Future[None] = loop.create_future()
        durable.set_exception(AppendInDoubt("partition 0: this node stepped down"))
        return "inv_x", loop.create_future(), durable


def _handle(follow: bool, metadata: tuple[tuple[str, str], ...] = ()) -> BaseException:
    async def scenario() -> BaseException:
        router = IngressRouter(FakeDriver(), Registry(), 1 << 20)  # type: ignore[arg-type]
        context: Any = FakeContext(metadata)
        try:
            await router.handle("s.S", "M", b"", context, key="", follow=follow)
        except BaseException as e:
            assert not context.sent  # no id went out: the call was never acknowledged
            return e
        raise AssertionError("handled")

    return asyncio.run(scenario())


def test_the_router_hands_a_keyless_call_in_doubt_to_the_front_to_follow() -> None:
    moved = _handle(follow=True)
    assert isinstance(moved, Moved)
    assert moved.invocation_id == "inv_x" and not moved.acknowledged


def test_a_call_with_an_idempotency_key_or_no_front_keeps_the_store_error() -> None:
    # With a key the front sends it again (the key makes that the same call); a
    # broker without a front has no next leader to ask.
    assert isinstance(_handle(follow=True, metadata=(("idempotency-key", "k"),)), AppendInDoubt)
    assert isinstance(_handle(follow=False), AppendInDoubt)


class FakePeers:
    """The next leader's answer to an Attach: an output, a gRPC error, or nobody."""

    def __init__(self, answer: ingress_pb2.Output | BaseException) -> None:
        self.answer = answer
        self.asked: list[tuple[int, str]] = []

    async def attach(
        self, partition: int, request: ingress_pb2.AttachRequest, deadline: float
    ) -> ingress_pb2.Output:
        self.asked.append((partition, request.invocation_id))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


class SteppedDownLocal:
    """A partition served here whose router raises what `IngressRouter.handle` does."""

    lost = False  # when the call came; it steps down while the call is stored

    async def handle(self, *_: Any) -> bytes:
        raise Moved("inv_x", acknowledged=False)


def _error(code: grpc.StatusCode, details: str, outcome: bool = False) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata((OUTCOME, "failure")) if outcome else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details, "")


def _call(answer: ingress_pb2.Output | BaseException) -> tuple[FakeContext, Any, FakePeers]:
    async def scenario() -> tuple[FakeContext, Any, FakePeers]:
        peers = FakePeers(answer)
        router = ClusterRouter(
            {0: SteppedDownLocal()},  # type: ignore[dict-item]
            Registry(),
            Placement(partitions=1, me=0),
            peers,  # type: ignore[arg-type]
        )

        async def key(*_: Any) -> str:
            return ""

        router._key = key  # type: ignore[method-assign,assignment]
        context = FakeContext()
        try:
            value: Any = await router._call("s.S", "M", b"", context)  # type: ignore[arg-type]
        except grpc.aio.AbortError:
            value = None
        except grpc.aio.AioRpcError as e:
            value = e
        return context, value, peers

    return asyncio.run(scenario())


def test_the_front_answers_from_the_next_leader_when_the_call_was_stored() -> None:
    context, value, peers = _call(ingress_pb2.Output(value=b"done"))
    assert value == b"done"
    assert peers.asked == [(0, "inv_x")]
    assert context.sent == [((INVOCATION_ID, "inv_x"),)]
    assert context.aborted is None


def test_a_call_the_next_leader_never_got_did_not_run_and_may_be_sent_again() -> None:
    context, _, _ = _call(_error(grpc.StatusCode.NOT_FOUND, "invocation inv_x not found"))
    assert context.aborted is not None
    code, details = context.aborted
    assert code == grpc.StatusCode.UNAVAILABLE
    assert details == (
        "partition 0: its node stepped down before this call was stored; it did not run: "
        "send it again"
    )


@pytest.mark.parametrize(
    "answer",
    [
        Unreachable("partition 0 has no leader"),
        _error(grpc.StatusCode.UNAVAILABLE, "Stream removed"),
    ],
)
def test_with_no_leader_answering_the_call_is_in_doubt_not_retryable(
    answer: BaseException,
) -> None:
    context, _, _ = _call(answer)
    assert context.aborted is not None
    code, details = context.aborted
    assert code == grpc.StatusCode.UNKNOWN
    assert details.startswith("partition 0: its node stepped down while storing this call")
    assert "the call may have run: send calls with an idempotency-key header" in details


def test_a_stored_call_that_failed_answers_with_its_failure_and_its_id() -> None:
    context, _, _ = _call(_error(grpc.StatusCode.NOT_FOUND, "no such trip", outcome=True))
    # The invocation's own NOT_FOUND (it carries the outcome), not "never stored".
    assert context.aborted == (grpc.StatusCode.NOT_FOUND, "no such trip")
    assert context.sent == [((INVOCATION_ID, "inv_x"),)]
