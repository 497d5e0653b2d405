"""Several gRPC servers on one ingress port.

grpc.aio takes calls in one at a time per server: its serving task asks the core for the
next call only once the last one reached the event loop, so a server accepts at most about
one call per turn of the loop. Under load that turn is long, and calls wait in the core
while the broker has CPU to spare for work that batches (group commit, frames to
endpoints). Several servers bound to the same port with SO_REUSEPORT each accept on their
own; the kernel spreads the callers' connections over them.

SO_REUSEPORT would also let a second broker bind the port and take a share of the
connections unseen. `refuse_if_listened` keeps the single-server rule instead: the port must
be free when the broker starts.
"""

from __future__ import annotations

from ..addresses import in_use, listened


class PortInUse(RuntimeError):
    """The ingress port is served by another process already."""


def refuse_if_listened(address: str) -> None:
    """Raises `PortInUse` when something listens on `address` (`host:port`; port 0,
    an ephemeral one, is always free), naming the listener when it can."""
    if listened(address):
        raise PortInUse(
            f"the ingress address {address} is {in_use(address)}: stop it or give --ingress "
            "another port"
        )
