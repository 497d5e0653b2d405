"""A take-over's JetStream requests during a stream's election (`broker.replication.ask`),
and its tail's consumer lost with a NATS server.

Found replaying the chaos runner's cluster run (seed 1001336941): a NATS server that
led partition 3's stream restarted; the stream elected a new leader 6.5 s later. The
node taking the partition over sent its stream-info request just before the election
ended, got no answer, and waited nats-py's whole 5 s before it gave up, released the
lease and took it again, when the same request answered in milliseconds: 5 s more
without a serving leader. Its lease-reading loop had stalled 5 s the same way before.
These fakes answer like nats-py does: a lost request raises `nats: timeout` once the
caller's timeout has passed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import nats.errors
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from broker.cluster.host import Host
from broker.cluster.replica import Replica
from broker.replication.ask import ASK_S, again
from broker.replication.engine import API_TIMEOUT_S, LEASE_TTL_S
from broker.replication.lease import Holder, Leases
from broker.replication.log import MARKER_HEADER, PartitionLog
from broker.replication.tail import Tail
from broker.storage.kv import MemoryKV

# Well below nats-py's 5 s timeout, well above one `ASK_S` try and an answer.
FAST_S = ASK_S + 1.0


@dataclasses.dataclass
class _Ack:
    seq: int


class _ElectingStream:
    """A stream whose first `lost` requests go unanswered (sent during its election)."""

    def __init__(self, lost: int = 1) -> None:
        self.lost = lost
        self.tries: list[dict[str, str]] = []

    async def publish(
        self, subject: str, payload: bytes, timeout: float, headers: dict[str, str]
    ) -> _Ack:
        self.tries.append(headers)
        if len(self.tries) <= self.lost:
            await asyncio.sleep(timeout)
            raise nats.errors.TimeoutError
        return _Ack(seq=int(headers["Nats-Expected-Last-Sequence"]) + 1)

    async def stream_info(self, name: str) -> str:
        self.tries.append({})
        if len(self.tries) <= self.lost:
            await asyncio.Event().wait()  # never answered: `again` bounds each try
        return f"info of {name}"


class _SilentBucket:
    """A lease bucket electing its leader: reads get no answer."""

    async def get(self, key: str) -> Any:
        await asyncio.Event().wait()


def _timed(coro: Any) -> tuple[Any, float]:
    async def main() -> Any:
        # The outer bound only keeps a failing test from hanging.
        return await asyncio.wait_for(coro, API_TIMEOUT_S * 3)

    started = time.monotonic()
    result = asyncio.run(main())
    return result, time.monotonic() - started


def test_a_marker_sent_during_the_streams_election_is_sent_again_soon() -> None:
    stream = _ElectingStream()
    log = PartitionLog(cast(JetStreamContext, stream), 3, last=121)
    sequence, took = _timed(log.mark("node1"))
    assert sequence == 122 and log.last == 122
    assert took < FAST_S, f"the lost marker was waited on {took:.1f} s"
    # The same entry, sent again: the same id (JetStream keeps one copy) and the same
    # fence (the expected last sequence).
    assert len(stream.tries) == 2 and stream.tries[0] == stream.tries[1]
    assert stream.tries[0][MARKER_HEADER] == "node1"


def test_the_logs_end_is_asked_again_when_unanswered() -> None:
    stream = _ElectingStream()
    info, took = _timed(again(lambda: stream.stream_info("DURABLE_P3"), 30.0))
    assert info == "info of DURABLE_P3" and len(stream.tries) == 2
    assert took < FAST_S


def test_asking_again_gives_up_at_its_deadline() -> None:
    stream = _ElectingStream(lost=1000)
    with pytest.raises(TimeoutError):
        _timed(again(lambda: stream.stream_info("DURABLE_P3"), 0.5, per_try=0.2))
    assert 2 <= len(stream.tries) <= 4


def test_other_errors_are_not_asked_again() -> None:
    tries = 0

    async def refused() -> None:
        nonlocal tries
        tries += 1
        raise ValueError("not a JetStream answer")

    with pytest.raises(ValueError):
        _timed(again(refused, 5.0))
    assert tries == 1


def test_a_lease_read_without_answer_fails_fast_so_the_loop_reads_again() -> None:
    leases = Leases(cast(KeyValue, _SilentBucket()))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        _timed(leases.read(3))
    took = time.monotonic() - started
    assert took < FAST_S, f"the node's lease loop stalled {took:.1f} s on one read"


class _Subscription:
    """A subscription that delivers nothing (the test looks at how it was asked for)."""

    @property
    async def messages(self) -> AsyncIterator[Msg]:
        await asyncio.Event().wait()
        yield cast(Msg, None)

    async def unsubscribe(self) -> None:
        pass


class _Stream:
    """Records the tail's subscription."""

    def __init__(self) -> None:
        self.subscribed: dict[str, Any] = {}

    async def stream_info(self, name: str) -> Any:
        return SimpleNamespace(state=SimpleNamespace(first_seq=1, last_seq=10))

    async def subscribe(self, subject: str, **options: Any) -> _Subscription:
        self.subscribed = {"subject": subject, **options}
        return _Subscription()


def test_a_tail_notices_a_lost_consumer_within_the_leases_ttl() -> None:
    """nats-py's ordered consumer replaces a consumer that went silent (it lived on a
    NATS server that restarted) once two heartbeats went missing. With its 5 s default a
    new leader waited 15 s for its own marker in a chaos run while holding the lease."""

    async def main() -> dict[str, Any]:
        stream = _Stream()
        tail = Tail(cast(JetStreamContext, stream), 0, MemoryKV())
        tail.start()
        while not stream.subscribed:
            await asyncio.sleep(0.01)
        await tail.stop()
        return stream.subscribed

    subscribed = asyncio.run(main())
    assert subscribed["ordered_consumer"] is True
    heartbeat = subscribed.get("idle_heartbeat")
    assert heartbeat is not None and 2 * heartbeat <= LEASE_TTL_S, subscribed


def test_a_lease_take_without_answer_leaves_the_replica_free_to_try_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Unanswered:
        async def take(self, partition: int, holder: object) -> int | None:
            raise TimeoutError

    settings = SimpleNamespace(data_dir=str(tmp_path), accept_data_loss=False)
    node = SimpleNamespace(
        settings=settings, engine=SimpleNamespace(js=None), leases=Unanswered(), name="n1"
    )
    replica = Replica(cast(Host, node), 0)
    try:
        # Not raised out of the node's look (an unretrieved task error): logged, and the
        # next look tries again.
        asyncio.run(replica.take())
    finally:
        replica.kv.close()
    assert not replica.busy and not replica.leading
    assert "partition 0: taking the lease failed: TimeoutError" in caplog.text


class _ElectingBucket:
    """A lease bucket whose first create goes unanswered; `stored` says whether that
    create was stored all the same (its answer lost)."""

    def __init__(self, stored: bool) -> None:
        self.stored = stored
        self.value: bytes | None = None
        self.revision = 0
        self.creates = 0

    async def create(self, key: str, value: bytes) -> int:
        self.creates += 1
        if self.stored:
            self.value, self.revision = value, 7
        await asyncio.sleep(API_TIMEOUT_S)  # nats-py's own timeout, after 5 s
        raise nats.errors.TimeoutError

    async def get(self, key: str) -> Any:
        if self.value is None:
            raise nats.js.errors.KeyNotFoundError
        return SimpleNamespace(value=self.value, revision=self.revision)

    async def update(self, key: str, value: bytes, last: int) -> int:
        assert last == self.revision
        self.value, self.revision = value, self.revision + 1
        return self.revision


@pytest.mark.parametrize("stored", [True, False])
def test_an_unanswered_lease_take_learns_within_a_second_whether_it_holds_the_lease(
    stored: bool,
) -> None:
    """A take sent while the lease bucket elects its leader got no answer for nats-py's
    5 s, all that time with nobody leading the partition. Now it reads the lease after
    `ASK_S`: a create stored with its answer lost is kept; one never stored leaves the
    partition vacant for the next look."""
    bucket = _ElectingBucket(stored)
    revision, took = _timed(Leases(cast(KeyValue, bucket)).take(3, Holder("n1")))
    assert took < FAST_S, f"the take waited {took:.1f} s for its answer"
    assert bucket.creates == 1
    if stored:
        assert revision == 8 and Holder.decode(bucket.value) == Holder("n1")
    else:
        assert revision is None and bucket.value is None
