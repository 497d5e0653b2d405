"""The verification runner's rules for overlapping faults (`tests/chaos/runner_overlap.py`):
never two NATS servers down, never every broker node down or paused, one fault at a time
on the service and on the whole broker side."""

from __future__ import annotations

import pytest

from tests.chaos.runner_overlap import Claim, InEffect, Need, pick

NODES = (0, 1, 2)


def admitted(claim: Claim | None) -> Claim:
    assert claim is not None, "the fault had to wait"
    return claim


def test_with_nothing_in_effect_every_fault_starts_on_the_node_the_seed_picks() -> None:
    # Without --overlap nothing is in effect when a fault starts: the seed's choice holds.
    for choice in range(7):
        claim = admitted(InEffect(3).admit(Need(nodes=NODES, choice=choice)))
        assert claim.node == choice % 3 and claim.alongside == 0
    for need in (Need(nats=True), Need(service=True), Need(broker=True), Need()):
        assert admitted(InEffect(3).admit(need)).node is None


@pytest.mark.parametrize(
    ("nodes", "need", "meanwhile"),
    [
        # A majority of NATS servers stays up; node faults go on meanwhile.
        (3, Need(nats=True), Need(nodes=NODES)),
        # The service takes one fault at a time; the single broker may crash meanwhile.
        (0, Need(service=True), Need(broker=True)),
    ],
    ids=["one-nats-server-down-at-a-time", "the-service-hit-by-one-fault-at-a-time"],
)
def test_one_fault_at_a_time_on_a_shared_resource(nodes: int, need: Need, meanwhile: Need) -> None:
    faults = InEffect(nodes)
    first = admitted(faults.admit(need))
    assert faults.admit(need) is None
    # Other faults go on meanwhile.
    assert admitted(faults.admit(meanwhile)).alongside == 1
    faults.release(first)
    assert admitted(faults.admit(need)).alongside == 1


def test_never_every_node_down_or_paused_nor_one_node_twice() -> None:
    faults = InEffect(3)
    killed = admitted(faults.admit(Need(nodes=NODES, choice=1)))
    # The seed picks node 1 again: the next free one instead.
    paused = admitted(faults.admit(Need(nodes=NODES, fallback=NODES, choice=1)))
    assert (killed.node, paused.node) == (1, 2)
    # A third would leave no node running.
    assert faults.admit(Need(nodes=NODES)) is None
    assert faults.admit(Need(nodes=(0,), fallback=NODES)) is None
    faults.release(killed)
    assert admitted(faults.admit(Need(nodes=NODES, choice=2))).node == 0


def test_a_pause_prefers_a_free_leader_then_any_free_node() -> None:
    faults = InEffect(3)
    leader = admitted(faults.admit(Need(nodes=(2,), fallback=NODES)))
    assert leader.node == 2
    # The only leader is paused already: another node.
    assert admitted(faults.admit(Need(nodes=(2,), fallback=NODES, choice=1))).node == 1


def test_the_whole_broker_never_goes_down_with_a_node_fault() -> None:
    faults = InEffect(3)
    node = admitted(faults.admit(Need(nodes=NODES)))
    assert faults.admit(Need(broker=True)) is None
    faults.release(node)
    broker = admitted(faults.admit(Need(broker=True)))
    assert faults.admit(Need(nodes=NODES)) is None
    assert faults.admit(Need(broker=True)) is None
    assert admitted(faults.admit(Need(nats=True))).alongside == 1
    faults.release(broker)
    assert admitted(faults.admit(Need(nodes=NODES))).node == 0


def test_pick_takes_the_choice_among_the_free_candidates() -> None:
    assert pick(4, (0, 1, 2), set()) == 1
    assert pick(4, (0, 1, 2), {1}) == 0
    assert pick(0, (0, 1), {0, 1}) is None
    assert pick(3, (), set()) is None
