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
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
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
    check,
    sagas,
)
from tests.chaos.test_workers_crash import book
from tests.cluster_nodes import PARTITIONS, NodesCluster

BROKER_ARGS = [
    *("--retry-initial", "100ms", "--retry-max", "500ms"),
    *("--snapshot-entries", str(SNAPSHOT_ENTRIES)),
]
# What the junk snapshot claims to cover: far past any log here.
JUNK_POSITION = 1_000_000_000
JUNK_KEY = b"k"
# What a stray publisher might send: bytes that are no entry, an entry cut short, and
# bytes that do decode as an entry (a put that would overwrite a journal key).
JUNK = [b"hello", b"\x01\x00\x00\x00\x09abc", codec.encode([(JUNK_KEY, b"overwritten")])]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[NodesCluster]:
    cluster = NodesCluster(tmp_path, nodes=3, suspend_after="0", broker_args=BROKER_ARGS)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


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


def test_a_junk_snapshot_holds_a_rebuild_only_until_a_leader_takes_one(
    nodes: NodesCluster,
) -> None:
    done: dict[tuple[str, str], tuple[str, str]] = {}

    def book_one(prefix: str, i: int) -> None:
        key, run_type = f"{prefix}-{i}-{uuid.uuid4()}", "" if i % 2 else "failPayment"
        done[(key, run_type)] = book(nodes, key, run_type)

    for i in range(MAX_SAGAS_TO_TRIM):
        book_one("fill", i)
        if i >= 5 and sum(p.log_last > SNAPSHOT_ENTRIES for p in nodes.status().partitions) >= 2:
            break
    support.wait_for(
        lambda: sum(p.log_first > 1 for p in nodes.status().partitions) >= 2,
        BACK_WITHIN_S,
        message="logs trimmed below a snapshot",
    )
    wiped = 2
    nodes.nodes[wiped].kill()
    shutil.rmtree(nodes.tmp / f"node{wiped + 1}")
    put_junk_snapshots(nodes.nats.urls)
    # The partitions of a killed leader go to a leader that reads the junk's claim.
    victim = 0
    nodes.use_nodes([1])
    nodes.nodes[victim].kill()
    support.wait_for(
        lambda: all(answered(nodes, p) for p in range(PARTITIONS)),
        BACK_WITHIN_S,
        message="node2 to serve every partition",
    )
    nodes.start_node(wiped)

    def rebuilt() -> bool:
        return all(
            any(f.node == f"node{wiped + 1}" and f.applied >= p.applied for f in p.followers)
            or p.owner == f"node{wiped + 1}"
            for p in nodes.status().partitions
        )

    # Leaders snapshot again after SNAPSHOT_ENTRIES more entries: book until then.
    for i in range(MAX_SAGAS_TO_TRIM):
        if rebuilt():
            break
        book_one("more", i)
    support.wait_for(rebuilt, BACK_WITHIN_S, message="the wiped node to rebuild")
    survivor, rebuilt_log = (nodes.nodes[n].log_path.read_text() for n in (1, wiped))
    assert "claims log entry 1000000000" in survivor
    assert "the stored snapshot cannot be restored" in rebuilt_log
    assert "restored the snapshot" in rebuilt_log
    assert "Traceback" not in survivor + rebuilt_log
    check(nodes, done)
