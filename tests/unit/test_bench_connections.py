"""`make bench`'s clients open connections as a client library would: one per client,
capped by `--connections`, and at least one per cluster node."""

from __future__ import annotations

import pytest

from bench.run import connections_used


@pytest.mark.parametrize(
    ("concurrency", "connections", "nodes", "used"),
    [
        (1, 16, 1, 1),  # a lone client reuses its one connection, as Restate's load does
        (4, 16, 1, 4),
        (64, 16, 1, 16),
        (1, 16, 3, 3),  # every node of a cluster still gets calls
        (64, 2, 3, 2),  # never more than asked for
    ],
)
def test_one_connection_per_client_up_to_the_cap(
    concurrency: int, connections: int, nodes: int, used: int
) -> None:
    assert connections_used(concurrency, connections, nodes) == used
