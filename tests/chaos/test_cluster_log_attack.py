"""Messages no broker wrote, published straight into the partitions' logs on NATS, and
snapshots no leader took, put into the snapshot store.

Anyone who can reach the NATS servers can publish on a partition's subject: a
misconfigured tool, a test against the wrong server, a person with the `nats` CLI.
JetStream stores such a message in the log like any entry. It holds no acknowledged
work, so the cluster must pass over it: every node keeps following every partition, the
leader it fenced is replaced, and no saga is lost or run twice. A snapshot object is as
easy to overwrite: a node rebuilding from it must wait for a leader's next snapshot
rather than break, and a new leader must not trust the position it claims.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import nats
import nats.js.errors
from nats.js.api import ObjectMeta

from broker.replication import codec
from broker.replication.engine import SNAPSHOTS, subject
from broker.storage.kv import RocksKV
from tests import support
from tests.chaos.test_cluster_failover import (
    BACK_WITHIN_S,
    MAX_SAGAS_TO_TRIM,
    SNAPSHOT_ENTRIES,
    answered,
    book_saga,
    book_until_trimmed,
    check,
    sagas,
    snapshotting_nodes,  # noqa: F401 (the `nodes` fixture the tests here take)
)
from tests.chaos.test_workers_crash import book
from tests.cluster_nodes import PARTITIONS, NodesCluster

# What the junk snapshot claims to cover: far past any log here.
JUNK_POSITION = 1_000_000_000
JUNK_KEY = b"k"
# What a stray publisher might send: bytes that are no entry, an entry cut short, and
# bytes that do decode as an entry (a put that would overwrite a journal key).
JUNK = [b"hello", b"\x01\x00\x00\x00\x09abc", codec.encode([(JUNK_KEY, b"overwritten")])]


def publish_junk(urls: list[str]) -> None:
    """Publishes every JUNK message on every partition's subject, as a plain NATS
    client would (JetStream acknowledges each: it is in the log)."""

    async def run() -> None:
        nc = await nats.connect(urls, connect_timeout=5, max_reconnect_attempts=3)
        try:
            js = nc.jetstream()
            for partition in range(PARTITIONS):
                for data in JUNK:
                    await js.publish(subject(partition), data, timeout=10)
        finally:
            await nc.close()

    asyncio.run(run())


def test_junk_in_the_logs_is_skipped_and_no_saga_is_lost(nodes: NodesCluster) -> None:
    before = {p.id: p.log_last for p in nodes.status().partitions}
    sagas(nodes, lambda: publish_junk(nodes.nats.urls))
    after = {p.id: p.log_last for p in nodes.status().partitions}
    assert all(after[p] >= before[p] + len(JUNK) for p in before), (before, after)

    # Every node followed past the junk: each partition's followers reach its leader.
    def followed() -> bool:
        status = nodes.status()
        return all(
            len(p.followers) == 2 and all(f.applied >= p.applied for f in p.followers)
            for p in status.partitions
        )

    support.wait_for(followed, BACK_WITHIN_S, message="every node to follow past the junk")
    logs = [node.log_path.read_text() for node in nodes.nodes]
    assert any("not appended by a broker" in text for text in logs)
    assert not any("Traceback" in text for text in logs)

    # A node that must take over reads the junk too: kill the leader of partition 0.
    victim = nodes.leaders()[0]
    survivors = [i for i in range(3) if i != victim]
    nodes.use_nodes(survivors)
    nodes.nodes[victim].kill()
    killed = time.monotonic()
    support.wait_for(
        lambda: all(answered(nodes, p) for p in range(PARTITIONS)),
        BACK_WITHIN_S,
        message="every partition to answer after the kill",
    )
    print(f"every partition answered {time.monotonic() - killed:.1f} s after the kill")
    key = f"after-junk-{time.monotonic_ns()}"
    done = {(key, ""): book(nodes, key, "")}
    check(nodes, done)

    # The junk that decodes as a put was applied nowhere.
    for node in nodes.nodes:
        node.kill()
    stores = sorted(nodes.tmp.glob("node*/partitions/p*"))
    assert len(stores) == 3 * PARTITIONS, stores
    for path in stores:
        store = RocksKV(str(path))
        try:
            assert store.get(JUNK_KEY) is None, path
        finally:
            store.close()


def put_junk_snapshots(urls: list[str]) -> None:
    """Overwrites every partition's snapshot object with bytes that are no snapshot,
    claiming JUNK_POSITION."""

    async def run() -> None:
        nc = await nats.connect(urls, connect_timeout=5, max_reconnect_attempts=3)
        try:
            store = await nc.jetstream().object_store(SNAPSHOTS)
            for partition in range(PARTITIONS):
                meta = ObjectMeta(
                    name=f"p{partition}", description=json.dumps({"position": JUNK_POSITION})
                )
                await store.put(f"p{partition}", b"junk", meta=meta)
        finally:
            await nc.close()

    asyncio.run(run())


def snapshot_positions(urls: list[str]) -> dict[int, int]:
    """The position each partition's snapshot object claims (0: none)."""

    async def run() -> dict[int, int]:
        nc = await nats.connect(urls, connect_timeout=5, max_reconnect_attempts=3)
        try:
            store = await nc.jetstream().object_store(SNAPSHOTS)
            out = {}
            for partition in range(PARTITIONS):
                try:
                    info = await store.get_info(f"p{partition}")
                except nats.js.errors.ObjectNotFoundError:
                    out[partition] = 0
                    continue
                out[partition] = int(json.loads(info.description or "{}").get("position", 0))
            return out
        finally:
            await nc.close()

    return asyncio.run(run())


def test_a_junk_snapshot_holds_a_rebuild_only_until_a_leader_takes_one(
    nodes: NodesCluster,
) -> None:
    done: dict[tuple[str, str], tuple[str, str]] = {}
    book_until_trimmed(nodes, done)
    wiped = 2
    nodes.nodes[wiped].kill()
    shutil.rmtree(nodes.tmp / f"node{wiped + 1}")
    nodes.use_nodes([0, 1])
    support.wait_for(
        lambda: all(answered(nodes, p) for p in range(PARTITIONS)),
        BACK_WITHIN_S,
        message="the two other nodes to serve every partition",
    )
    # A new leader reads the junk's claim: kill partition 0's leader.
    put_junk_snapshots(nodes.nats.urls)
    victim = nodes.leaders()[0]
    survivor = 1 - victim
    lost = [p for p, node in nodes.leaders().items() if node == victim]
    nodes.use_nodes([survivor])
    nodes.nodes[victim].kill()
    support.wait_for(
        lambda: all(answered(nodes, p) for p in range(PARTITIONS)),
        BACK_WITHIN_S,
        message="the last node to serve every partition",
    )
    support.wait_for(
        lambda: "claims log entry 1000000000" in nodes.nodes[survivor].log_path.read_text(),
        BACK_WITHIN_S,
        message="the new leader to refuse the junk's claim",
    )

    # Refusing the claim, it snapshots its new partitions (those with a snapshot's
    # worth of log) at its next check, replacing the junk.
    def replaced() -> bool:
        long_logs = {p.id for p in nodes.status().partitions if p.log_last >= SNAPSHOT_ENTRIES}
        claims = snapshot_positions(nodes.nats.urls)
        return all(claims[p] < JUNK_POSITION for p in lost if p in long_logs)

    support.wait_for(replaced, BACK_WITHIN_S, message="the new leader's own snapshots")
    # A rebuilding node meets junk too: put it back, then start the wiped node. The
    # leader snapshots again only after SNAPSHOT_ENTRIES more entries, none booked yet.
    put_junk_snapshots(nodes.nats.urls)
    nodes.start_node(wiped)
    support.wait_for(
        lambda: "the stored snapshot cannot be restored" in nodes.nodes[wiped].log_path.read_text(),
        BACK_WITHIN_S,
        message="the wiped node to refuse the junk snapshot",
    )

    def rebuilt() -> bool:
        return all(
            any(f.node == f"node{wiped + 1}" and f.applied >= p.applied for f in p.followers)
            or p.owner == f"node{wiped + 1}"
            for p in nodes.status().partitions
        )

    # The leader snapshots again after SNAPSHOT_ENTRIES more entries: book until then.
    for i in range(MAX_SAGAS_TO_TRIM):
        if rebuilt():
            break
        book_saga(nodes, done, "more", i)
    support.wait_for(rebuilt, BACK_WITHIN_S, message="the wiped node to rebuild")
    led, rebuilt_log = (nodes.nodes[n].log_path.read_text() for n in (survivor, wiped))
    assert "restored the snapshot" in rebuilt_log
    assert "Traceback" not in led + rebuilt_log
    check(nodes, done)
