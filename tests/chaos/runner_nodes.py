"""The verification runner's cluster: three broker nodes over three NATS servers.

`ChaosNodes` is the runner's `ChaosCluster` whose broker side is a `NodesCluster` (no demo
services): 3 NATS servers with JetStream, 3 nodes started with `--nats`, 4 partitions.
The clients spread their calls over every node's ingress; the admin API goes to any node
that is up. The fault injector kills and restarts single nodes and single NATS servers.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.chaos.runner_cluster import ChaosCluster
from tests.cluster_nodes import NodesCluster
from tests.support import STARTUP_TIMEOUT_S, wait_healthy

NODES = 3
PARTITIONS = 4


class ChaosNodes(ChaosCluster):
    """Broker nodes on NATS JetStream, and the chaos service.

    Args:
        workdir: Data and logs go here (`logs/nodeN.log`, `nats/nN/nats.log`).
        suspend_after: The nodes' `--suspend-after`.
        broker_args: More flags for every node.
        request_response: Serve the chaos service with `--request-response`.
    """

    def __init__(
        self,
        workdir: Path,
        suspend_after: str,
        broker_args: Sequence[str],
        request_response: bool = False,
    ) -> None:
        super().__init__(workdir, request_response)
        self.nodes = NodesCluster(
            workdir,
            nodes=NODES,
            partitions=PARTITIONS,
            suspend_after=suspend_after,
            broker_args=broker_args,
            services=(),
        )
        self.nats = self.nodes.nats
        # NATS servers are tethered to the *thread* that starts them (tools/natsd.py): the
        # fault injector's thread ends before the checks, so every start happens on this
        # thread, which lives until `close`.
        self._nats_thread = ThreadPoolExecutor(1, thread_name_prefix="chaos-nats")

    @property
    def ingress_addresses(self) -> list[str]:
        return list(self.nodes.node_ingress)

    @property
    def admin_target(self) -> str:
        return "ipv4:" + ",".join(self.nodes.node_admin)

    def node_name(self, i: int) -> str:
        """Node `i`'s name (`node1`, ...)."""
        return self.nodes.nodes[i].name

    # -- processes ------------------------------------------------------------------------

    def start_broker(self) -> None:
        """Starts whatever NATS server and node is not running; waits until every
        partition is led."""
        if not all(self.nats.alive(i) for i in range(self.nats.size)):
            self._nats_thread.submit(self.nats.start).result()
            self.nats.wait_ready(STARTUP_TIMEOUT_S)
        self.nodes.start_broker()

    def kill_broker(self) -> None:
        """SIGKILLs every node (NATS runs on)."""
        self.nodes.kill_broker()

    def kill_node(self, i: int) -> None:
        """SIGKILLs node `i`."""
        self.nodes.nodes[i].kill()

    def start_node(self, i: int) -> None:
        """Starts node `i` again (same ports, same data dir); waits until it serves."""
        self.nodes.start_node(i)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        wait_healthy(self.nodes.node_admin[i], deadline, self.nodes.nodes[i])

    def kill_nats(self, i: int) -> None:
        """SIGKILLs NATS server `i`."""
        self.nats.kill(i)

    def restart_nats(self, i: int) -> None:
        """Starts NATS server `i` again (same ports, same store); waits until JetStream is
        usable on every server again, so that the next NATS fault never leaves a majority
        of the servers behind."""
        self._nats_thread.submit(self.nats.restart, i).result()
        self.nats.wait_ready(STARTUP_TIMEOUT_S)

    def wait_serving(self, timeout: float) -> None:
        """Waits until every partition is led again (after the last fault)."""
        self.nodes.wait_led(time.monotonic() + timeout)

    def restart_exited(self) -> list[str]:
        exited: list[str] = []
        for i, node in enumerate(self.nodes.nodes):
            exited += self._restart_if_exited(node, functools.partial(self.start_node, i))
        for i in range(self.nats.size):
            if not self.nats.alive(i):
                exited.append(
                    f"NATS server {self.nats.name(i)} exited on its own\n" + self.nats.log_tails(15)
                )
                self.restart_nats(i)
        return exited + super().restart_exited()

    def close_broker(self) -> list[str]:
        try:
            self.nodes.close()  # the nodes (SIGTERM), then NATS
        except AssertionError as e:
            return [str(e)]
        finally:
            self._nats_thread.shutdown()
        return []

    def broker_log_tails(self, lines: int) -> list[str]:
        return [self.nodes.log_tails(lines), self.nats.log_tails(lines)]
