"""Messages no broker wrote, published straight into the partitions' logs on NATS.

Anyone who can reach the NATS servers can publish on a partition's subject: a
misconfigured tool, a test against the wrong server, a person with the `nats` CLI.
JetStream stores such a message in the log like any entry. It holds no acknowledged
work, so the cluster must pass over it: every node keeps following every partition, the
leader it fenced is replaced, and no saga is lost or run twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from broker.replication import codec
from broker.replication.engine import subject
from broker.storage.kv import RocksKV
from tests import support
from tests.chaos.test_cluster_failover import BACK_WITHIN_S, answered, check, sagas
from tests.chaos.test_workers_crash import book
from tests.cluster_nodes import PARTITIONS, NodesCluster

BROKER_ARGS = ["--retry-initial", "100ms", "--retry-max", "500ms"]
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
