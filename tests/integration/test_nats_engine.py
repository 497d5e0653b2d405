"""The NATS JetStream facts cluster mode's design stands on, checked against the real
engine: Debian's nats-server (three servers clustered by `tools/natsd.py`) and nats-py.

If an upgrade of either changes one of them, this file says which before the broker's
own tests fail in some harder-to-read way. Each fact is its own test:

- an R3 stream stores and acknowledges a publish;
- a stale `Nats-Expected-Last-Sequence` is refused with error code 10071 (the fence);
- a publish repeated with the same `Nats-Msg-Id` within the duplicate window is answered
  with a duplicate ack carrying the ORIGINAL sequence, even though its expected last
  sequence is stale by then (deduplication is checked before the fence): so a leader
  that retries an append whose ack it lost learns it was stored, instead of seeing
  itself fenced; a refused publish does not record its id; past the window, the same
  retry is refused with 10071;
- a KV bucket with a TTL is a lease: `create` of a live key is refused, `update` is a
  compare-and-set on the revision, and once the TTL has passed since the last write the
  key is gone and `create` succeeds; `create` after `delete` succeeds too (nats-py reads
  the tombstone and updates on its revision; racing the expiry, that read may instead
  raise KeyNotFoundError from `create`);
- with one of three servers SIGKILLed, a client that knows every server's URL still gets
  publishes acknowledged, the new stream leader still answers a retried append with its
  original sequence, and after a restart the cluster is whole again;
- a single server (`size=1`, the bad-input tests' engine) runs JetStream and refuses an
  R3 stream with a message saying why;
- and of `tools/natsd.py` itself: its servers die with the process that started them.

Timings are printed (`pytest -s` shows them) and bounded loosely: the machine is shared.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck, StreamConfig
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError

from broker.replication.ask import again
from tests.support import PYTHON, ROOT, free_port, pid_alive, wait_for
from tools.natsd import NatsCluster

WRONG_LAST_SEQUENCE = 10071
READY_TIMEOUT_S = 20.0
T = TypeVar("T")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three clustered servers shared by the tests that do not kill one."""
    with NatsCluster(tmp_path_factory.mktemp("nats"), port_source=free_port) as cluster:
        cluster.wait_ready(READY_TIMEOUT_S)
        yield cluster


def run(
    urls: list[str],
    body: Callable[[Client, JetStreamContext], Awaitable[T]],
    dont_randomize: bool = False,
) -> T:
    """Connects to `urls`, runs `body(client, jetstream)` and closes the connection."""

    async def main() -> T:
        client = await nats.connect(
            servers=urls,
            connect_timeout=2,
            reconnect_time_wait=0.1,
            max_reconnect_attempts=-1,
            dont_randomize=dont_randomize,
        )
        try:
            return await body(client, client.jetstream())
        finally:
            await client.close()

    return asyncio.run(main())


async def refused(publish: Awaitable[object]) -> APIError:
    """The `APIError` that `publish` raises (fails the test if it succeeds)."""
    try:
        result = await publish
    except APIError as e:
        return e
    raise AssertionError(f"expected a refusal, got {result}")


def fenced(seq: int, msg_id: str | None = None) -> dict[str, str]:
    """Headers of an append that expects the stream's last sequence to be `seq`."""
    headers = {"Nats-Expected-Last-Sequence": str(seq)}
    if msg_id is not None:
        headers["Nats-Msg-Id"] = msg_id
    return headers


async def add_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Creates the stream, asking again while JetStream does not answer: a cluster that
    has just come up may still be electing its meta leader, and a create sent meanwhile
    goes unanswered for nats-py's 5 s (it timed out once in CI). Creating a stream again
    with the same configuration is a no-op."""
    await again(lambda: js.add_stream(config), timeout=30.0, per_try=5.0)


def test_an_r3_stream_stores_and_acknowledges_a_publish(engine: NatsCluster) -> None:
    async def body(client: Client, js: JetStreamContext) -> None:
        await add_stream(js, StreamConfig(name="ACKED", subjects=["acked"], num_replicas=3))
        ack = await js.publish("acked", b"batch", timeout=5)
        assert (ack.stream, ack.seq, ack.duplicate) == ("ACKED", 1, None)
        info = await js.stream_info("ACKED")
        assert info.cluster is not None and info.cluster.leader
        assert len(info.cluster.replicas or []) == 2, info.cluster
        message = await js.get_msg("ACKED", 1)
        assert message.data == b"batch"

    run(engine.urls, body)


def test_a_stale_expected_last_sequence_is_refused_with_10071(engine: NatsCluster) -> None:
    async def body(client: Client, js: JetStreamContext) -> None:
        await add_stream(js, StreamConfig(name="FENCE", subjects=["fence"], num_replicas=3))
        first = await js.publish("fence", b"1", headers=fenced(0))
        second = await js.publish("fence", b"2", headers=fenced(first.seq))
        assert (first.seq, second.seq) == (1, 2)

        # A deposed leader still believes the log ends at 1.
        error = await refused(js.publish("fence", b"stale", headers=fenced(1)))
        assert (error.code, error.err_code) == (400, WRONG_LAST_SEQUENCE), error
        assert error.description == "wrong last sequence: 2", error
        assert (await js.stream_info("FENCE")).state.last_seq == 2

    run(engine.urls, body)


def test_a_retried_append_gets_its_original_sequence_back_not_the_fence(
    engine: NatsCluster,
) -> None:
    window_s = 1.0

    async def body(client: Client, js: JetStreamContext) -> float:
        config = StreamConfig(
            name="RETRY", subjects=["retry"], num_replicas=3, duplicate_window=window_s
        )
        await add_stream(js, config)
        await js.publish("retry", b"0")
        appended = await js.publish("retry", b"batch", headers=fenced(1, "m1"))
        later = await js.publish("retry", b"successor's", headers=fenced(appended.seq))
        stored_at = time.monotonic()

        # The same append again (its ack was lost, say): expected-last-sequence 1 is stale
        # now, yet the answer is the duplicate ack with the original sequence.
        again = await js.publish("retry", b"batch", headers=fenced(1, "m1"))
        assert (again.seq, again.duplicate) == (appended.seq, True), again
        # Only the id counts: another payload under that id is a duplicate too.
        other = await js.publish("retry", b"other", headers=fenced(1, "m1"))
        assert (other.seq, other.duplicate) == (appended.seq, True), other
        assert (await js.stream_info("RETRY")).state.last_seq == later.seq

        # A refused append does not record its id: the same id with the right sequence
        # is then stored.
        error = await refused(js.publish("retry", b"x", headers=fenced(1, "m2")))
        assert error.err_code == WRONG_LAST_SEQUENCE, error
        stored = await js.publish("retry", b"x", headers=fenced(later.seq, "m2"))
        assert (stored.seq, stored.duplicate) == (later.seq + 1, None), stored

        # Past the duplicate window the id is forgotten and the fence answers.
        deadline = stored_at + window_s + 5.0
        while True:
            try:
                ack: PubAck = await js.publish("retry", b"batch", headers=fenced(1, "m1"))
            except APIError as e:
                assert e.err_code == WRONG_LAST_SEQUENCE, e
                return time.monotonic() - stored_at
            assert ack.duplicate, f"stored a second time: {ack}"
            assert time.monotonic() < deadline, "the duplicate window never ended"
            await asyncio.sleep(0.02)  # polling interval; the deadline decides

    forgotten_after = run(engine.urls, body)
    print(f"\nduplicate window {window_s} s: id forgotten {forgotten_after:.3f} s after it")
    assert forgotten_after >= window_s * 0.9


def test_a_kv_bucket_with_a_ttl_is_a_lease(engine: NatsCluster) -> None:
    ttl_s = 1.0

    async def body(client: Client, js: JetStreamContext) -> float:
        kv = await js.create_key_value(bucket="leases", ttl=ttl_s, replicas=3, history=1)
        taken = await kv.create("p0", b"node1")
        with pytest.raises(KeyWrongLastSequenceError, match="wrong last sequence"):
            await kv.create("p0", b"node2")
        renewed = await kv.update("p0", b"node1", last=taken)
        renewed_at = time.monotonic()
        assert renewed == taken + 1
        with pytest.raises(KeyWrongLastSequenceError, match="wrong last sequence"):
            await kv.update("p0", b"node2", last=taken)

        # Nobody renews: the key expires TTL after its last write, then anyone may take it.
        deadline = renewed_at + ttl_s + 5.0
        while True:
            try:
                await kv.create("p0", b"node2")
            # KeyNotFoundError: nats-py's create, refused, reads the key to tell a live one
            # from a tombstone; expiring in between, the key is then not found at all.
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                assert time.monotonic() < deadline, "the key never expired"
                await asyncio.sleep(0.01)  # polling interval; the deadline decides
                continue
            expired_after = time.monotonic() - renewed_at
            break
        assert (await kv.get("p0")).value == b"node2"

        # A delete leaves a tombstone; nats-py's create then updates on its revision.
        await kv.delete("p0")
        await kv.create("p0", b"node3")
        assert (await kv.get("p0")).value == b"node3"
        return expired_after

    expired_after = run(engine.urls, body)
    print(f"\nKV ttl {ttl_s} s: key taken again {expired_after:.3f} s after its last write")
    assert ttl_s * 0.9 <= expired_after <= ttl_s + 3.0


def test_publishes_are_acked_with_a_server_killed_and_the_cluster_heals(tmp_path: Path) -> None:
    with NatsCluster(tmp_path / "nats", port_source=free_port) as cluster:
        cluster.wait_ready(READY_TIMEOUT_S)

        async def create(client: Client, js: JetStreamContext) -> int:
            await add_stream(js, StreamConfig(name="KILL", subjects=["kill"], num_replicas=3))
            await js.publish("kill", b"before", timeout=5, headers=fenced(0, "before"))
            info = await js.stream_info("KILL")
            assert info.cluster is not None and info.cluster.leader
            return int(info.cluster.leader.removeprefix("n")) - 1

        victim = run(cluster.urls, create)

        async def body(client: Client, js: JetStreamContext) -> dict[str, float]:
            assert client.connected_url is not None
            assert client.connected_url.port == cluster.ports[victim].client
            killed_at = time.monotonic()
            cluster.kill(victim)
            acked_after, errors = await acked_within(js, b"during", 15.0, killed_at)
            print(f"\nerrors while the stream had no leader: {sorted(errors)}")
            # The new leader knows the ids its predecessor stored: a retry of an append made
            # before the failover still gets its original sequence, not the fence.
            again = await js.publish("kill", b"before", timeout=5, headers=fenced(0, "before"))
            assert (again.seq, again.duplicate) == (1, True), again

            cluster.restart(victim)
            restarted_at = time.monotonic()
            await asyncio.to_thread(cluster.wait_ready, READY_TIMEOUT_S)
            ready_after = time.monotonic() - restarted_at
            # Whole again: both followers current and caught up, the restarted one included.
            deadline = time.monotonic() + 15.0
            while True:
                info = await js.stream_info("KILL")
                replicas = (info.cluster.replicas or []) if info.cluster else []
                if len(replicas) == 2 and all(r.current and not r.lag for r in replicas):
                    break
                assert time.monotonic() < deadline, f"not whole again: {info.cluster}"
                await asyncio.sleep(0.05)  # polling interval; the deadline decides
            whole_after = time.monotonic() - restarted_at
            assert info.state.messages == 2, info.state
            assert (await js.publish("kill", b"after", timeout=5)).seq == 3
            return {"acked": acked_after, "ready": ready_after, "whole": whole_after}

        # The worst case: the stream's leader dies, and with it the server this client is
        # connected to (its URL first, and the list kept in order).
        others = [url for i, url in enumerate(cluster.urls) if i != victim]
        timings = run([cluster.urls[victim], *others], body, dont_randomize=True)
    print(
        f"\nSIGKILL of the stream leader (the client's server): next publish acked "
        f"{timings['acked']:.3f} s after the kill; after restart: JetStream ready in "
        f"{timings['ready']:.3f} s, the stream whole in {timings['whole']:.3f} s"
    )


async def acked_within(
    js: JetStreamContext, payload: bytes, bound_s: float, since: float
) -> tuple[float, set[str]]:
    """Retries one publish (same message id, so never stored twice) until it is acked;
    returns the seconds from `since` to the ack and the kinds of error seen meanwhile."""
    deadline = since + bound_s
    seen: dict[str, BaseException] = {}
    while time.monotonic() < deadline:
        try:
            await js.publish("kill", payload, timeout=0.5, headers={"Nats-Msg-Id": "during"})
        except nats.errors.Error as e:
            # No stream leader yet (no response), or the request was lost with the server.
            seen[type(e).__name__] = e
            continue
        return time.monotonic() - since, set(seen)
    raise AssertionError(f"no ack within {bound_s} s of the kill; errors: {seen!r}")


def test_a_single_server_runs_jetstream_and_refuses_replicas(tmp_path: Path) -> None:
    with NatsCluster(tmp_path / "nats", size=1, port_source=free_port) as server:
        server.wait_ready(READY_TIMEOUT_S)
        assert "cluster {" not in server.config(0)

        async def body(client: Client, js: JetStreamContext) -> APIError:
            await add_stream(js, StreamConfig(name="ONE", subjects=["one"], num_replicas=1))
            assert (await js.publish("one", b"x")).seq == 1
            config = StreamConfig(name="THREE", subjects=["three"], num_replicas=3)
            return await refused(js.add_stream(config))

        error = run(server.urls, body)
    print(f"\nR3 stream on one server: {error.code} {error.err_code} {error.description!r}")
    assert error.code == 500 and error.description and "replicas" in error.description, error


def test_servers_die_with_the_process_that_started_them(tmp_path: Path) -> None:
    # An owner SIGKILLed (a test killed by its timeout) never runs `stop`: the tether must
    # take its servers down, or they keep their ports and stores.
    script = (
        "import sys; from pathlib import Path; from tools.natsd import NatsCluster\n"
        f"c = NatsCluster(Path({str(tmp_path / 'nats')!r}), size=1).start()\n"
        "c.wait_ready(20); print(c.pid(0), flush=True); sys.stdin.read()\n"
    )
    owner = subprocess.Popen(
        [PYTHON, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert owner.stdout is not None
        server_pid = int(owner.stdout.readline())
        assert pid_alive(server_pid)
        owner.kill()
        owner.wait(timeout=10)
        wait_for(lambda: not pid_alive(server_pid), timeout=10, message="the server to die")
    finally:
        owner.kill()
        owner.wait(timeout=10)
