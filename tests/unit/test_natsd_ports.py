"""`tools.natsd.NatsCluster` serves on the ports it is given (`make cluster`'s, moved by
its variables), and picks its own only when given none."""

from __future__ import annotations

from pathlib import Path

from tools.natsd import NatsCluster, ServerPorts


def test_given_ports_are_the_ones_served_and_named(tmp_path: Path) -> None:
    given = [ServerPorts(4222 + i, 6222 + i, 8222 + i) for i in range(3)]
    cluster = NatsCluster(tmp_path, size=3, ports=given)
    assert cluster.ports == given
    assert cluster.urls == [f"nats://127.0.0.1:{4222 + i}" for i in range(3)]


def test_without_ports_each_server_gets_three_distinct_ones(tmp_path: Path) -> None:
    picked = iter(range(30_000, 30_009))
    cluster = NatsCluster(tmp_path, size=3, port_source=lambda: next(picked))
    assert cluster.ports == [
        ServerPorts(30_000 + 3 * i, 30_001 + 3 * i, 30_002 + 3 * i) for i in range(3)
    ]
