"""Batches larger than a NATS message, in cluster mode.

One batch can hold a payload several times over: a 3 MB output is written to the
journal and to the invocation's record at once. NATS servers accept 1 MB messages unless
configured otherwise. Such a batch goes into the partition's log in parts that every
follower applies together: before, the append was refused and retried forever, and the
partition's journal writes stopped for good.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playground import playground_pb2

from tests import support
from tests.chaos.test_cluster_failover import BACK_WITHIN_S, answered
from tests.cluster_nodes import PARTITIONS, NodesCluster

SIZE = 3_000_000
BROKER_ARGS = ["--retry-initial", "100ms", "--retry-max", "500ms"]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[NodesCluster]:
    cluster = NodesCluster(
        tmp_path,
        nodes=3,
        suspend_after="0",
        broker_args=BROKER_ARGS,
        services=(*support.SERVICES, support.PLAYGROUND),
    )
    cluster.nats.max_payload = 1024 * 1024  # NATS's own default
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


def fill(cluster: NodesCluster, key: str) -> tuple[playground_pb2.Reply, str]:
    """Busy.Fill of SIZE bytes under idempotency key `key`: the reply and its id."""
    reply, call = cluster.busy.Fill.with_call(
        playground_pb2.FillRequest(size=SIZE), metadata=(("idempotency-key", key),), timeout=60
    )
    return reply, str(dict(call.initial_metadata())["invocation-id"])


def test_an_output_larger_than_a_nats_message_is_replicated_in_parts(
    nodes: NodesCluster,
) -> None:
    key = f"fill-{time.monotonic_ns()}"
    reply, invocation_id = fill(nodes, key)
    assert len(reply.text) == SIZE

    def followed() -> bool:
        return all(
            len(p.followers) == 2 and all(f.applied >= p.applied for f in p.followers)
            for p in nodes.status().partitions
        )

    support.wait_for(followed, BACK_WITHIN_S, message="every node to apply the parts")
    for node in nodes.nodes:
        text = node.log_path.read_text()
        assert "append to partition" not in text and "Traceback" not in text, node.name
        assert "are dropped" not in text, node.name

    # Leave one node: it leads every partition from what it followed, parts included.
    for node in nodes.nodes[:2]:
        node.kill()
    nodes.use_nodes([2])
    support.wait_for(
        lambda: all(answered(nodes, p) for p in range(PARTITIONS)),
        BACK_WITHIN_S,
        message="the last node to serve every partition",
    )
    again, again_id = fill(nodes, key)
    assert again_id == invocation_id  # the journaled result, not a second run
    assert again.text == reply.text
