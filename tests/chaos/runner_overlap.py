"""Which faults may be in effect at once: the verification runner's rules for `--overlap`.

Pure bookkeeping, no processes: a fault says what it takes down (`Need`), `InEffect.admit`
answers whether it may start now and which node it takes (`Claim`), and `release` gives
that back when the fault is over. The invariant, whatever the schedule:

- at most one NATS server is down at a time (two of three stay up: a majority, so
  JetStream keeps its streams and the lease bucket);
- at least one broker node is neither killed nor paused (in a cluster of `nodes`, at
  most `nodes - 1` node faults at once, each on a different node);
- the whole broker side (`broker`, or a `worker` of the single broker) is taken down by
  one fault at a time and never together with a node fault;
- the service, and the streams to it, are attacked by one fault at a time.

Without `--overlap` a fault starts only once the previous one is over, so every fault is
admitted at once and picks its node exactly as the seed says.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Need:
    """What a fault takes down while it is in effect."""

    # One node (killed or paused), picked with `choice` among the free ones of `nodes`,
    # else among the free ones of `fallback`.
    nodes: tuple[int, ...] = ()
    fallback: tuple[int, ...] = ()
    choice: int = 0
    # One NATS server.
    nats: bool = False
    # The service, or the streams between the broker and it.
    service: bool = False
    # The whole broker side: every node, or the single broker (or one of its workers).
    broker: bool = False


@dataclasses.dataclass(frozen=True)
class Claim:
    """An admitted fault: what it holds until released."""

    need: Need
    # The node it takes down (for a node fault).
    node: int | None
    # How many other faults were in effect when it started.
    alongside: int


def pick(choice: int, candidates: tuple[int, ...], busy: set[int]) -> int | None:
    """The `choice`-th (modulo) of the candidates not busy; None when all are."""
    free = [c for c in candidates if c not in busy]
    return free[choice % len(free)] if free else None


class InEffect:
    """The faults in effect now.

    Args:
        nodes: How many broker nodes (0: not a cluster).
    """

    def __init__(self, nodes: int) -> None:
        self.nodes = nodes
        self.claims: list[Claim] = []

    @property
    def busy_nodes(self) -> set[int]:
        """Nodes killed or paused now."""
        return {c.node for c in self.claims if c.node is not None}

    def admit(self, need: Need) -> Claim | None:
        """Takes what `need` asks for if the invariant allows it now; None: wait."""
        held = [c.need for c in self.claims]
        busy = self.busy_nodes
        if need.nats and any(h.nats for h in held):
            return None
        if need.service and any(h.service for h in held):
            return None
        if need.broker and (busy or any(h.broker for h in held)):
            return None
        node = None
        if need.nodes or need.fallback:
            if any(h.broker for h in held) or len(busy) + 1 >= self.nodes:
                return None
            node = pick(need.choice, need.nodes, busy)
            if node is None:
                node = pick(need.choice, need.fallback, busy)
            if node is None:
                return None
        claim = Claim(need, node, alongside=len(self.claims))
        self.claims.append(claim)
        return claim

    def release(self, claim: Claim) -> None:
        """The fault is over."""
        self.claims.remove(claim)
