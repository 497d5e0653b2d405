"""`durable.process.free_ports`: ports for processes about to start, chosen where no
outgoing connection can take them first."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from durable import process

from broker.cluster import launch


def _ephemeral_low() -> int:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        return int(f.read().split()[0])


def _listening(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_ports_are_distinct_free_and_below_the_ephemeral_range() -> None:
    ports = process.free_ports(40)
    assert len(set(ports)) == 40
    assert all(1024 <= p < _ephemeral_low() for p in ports)
    for port in ports:  # nothing holds them once returned
        _listening(port).close()


def test_avoided_ports_are_not_returned() -> None:
    first = process.free_ports(20)
    again = process.free_ports(20, avoid=set(first))
    assert not set(first) & set(again)


@pytest.fixture
def tiny_range(monkeypatch: pytest.MonkeyPatch) -> Iterator[range]:
    """Two candidate ports: what the choice does when most are taken."""
    [a] = process.free_ports(1)
    candidates = range(a, a + 2)
    monkeypatch.setattr(process, "_ports_below_the_ephemeral_range", lambda: candidates)
    yield candidates


def test_a_port_something_listens_on_is_never_chosen(tiny_range: range) -> None:
    held = _listening(tiny_range[0])
    try:
        for _ in range(20):
            assert process.free_ports(1) == [tiny_range[1]]
    finally:
        held.close()


def test_when_the_range_is_used_up_the_kernel_picks(tiny_range: range) -> None:
    held = [_listening(p) for p in tiny_range]
    try:
        ports = process.free_ports(3)
        assert len(set(ports)) == 3
        assert not set(ports) & set(tiny_range)
        for port in ports:
            _listening(port).close()
    finally:
        for s in held:
            s.close()


def test_the_workers_private_ports_are_below_the_ephemeral_range() -> None:
    # A restarted worker binds the same ports again: no connection opened while it was
    # down may have taken one as its local end.
    directory = launch.plan(workers=2, partitions=4, metrics=True)
    addresses = [
        a for p in directory.partitions for a in (p.ingress, p.admin, p.metrics) if a is not None
    ]
    ports = [int(a.removeprefix("127.0.0.1:")) for a in addresses]
    assert len(set(ports)) == 12
    assert all(1024 <= p < _ephemeral_low() for p in ports)


def test_the_workers_private_ports_avoid_the_brokers_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The broker binds its admin API, metrics and console only once its workers are up:
    # free when the workers' ports are planned, they must not be planned for a worker.
    # 20 candidates, 8 of them the broker's: a plan of 12 that ignored them would take
    # some nearly every time (a candidate in use elsewhere is replaced by one the
    # kernel picks).
    candidates = list(range(_ephemeral_low() - 20, _ephemeral_low()))
    monkeypatch.setattr(process, "_ports_below_the_ephemeral_range", lambda: candidates)
    own = candidates[::3][:8]
    for _ in range(5):
        directory = launch.plan(workers=2, partitions=4, metrics=True, avoid=own)
        planned = {
            int(a.removeprefix("127.0.0.1:"))
            for p in directory.partitions
            for a in (p.ingress, p.admin, p.metrics)
            if a is not None
        }
        assert len(planned) == 12 and planned.isdisjoint(own)
