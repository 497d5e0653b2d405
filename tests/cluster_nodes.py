"""A cluster of broker nodes over three NATS servers, with the four demo services.

`NodesCluster` is a `support.Cluster` whose broker is `nodes` processes started with
`--nats`: the same fixtures, stubs and helpers work on it. Stub calls go to the nodes in
turn (every node's ingress routes every call), grpcurl goes to the first node and the
admin API to the second, so each test crosses nodes.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from pathlib import Path
from typing import Any

import grpc
from durable.v1 import admin_pb2

from tests import support
from tools.natsd import NatsCluster

PARTITIONS = 4


class NodesCluster(support.Cluster):
    """Broker nodes on NATS JetStream, the demo services, registered.

    Args:
        tmp: Data, logs and the notification log.
        nodes: How many broker nodes.
        partitions: The cluster's partition count.
        kwargs: As `support.Cluster` (`suspend_after`, `broker_args`, ...).
    """

    def __init__(
        self, tmp: Path, nodes: int = 3, partitions: int = PARTITIONS, **kwargs: Any
    ) -> None:
        super().__init__(tmp, **kwargs)
        self.nats = NatsCluster(tmp / "nats", port_source=support.free_port)
        self.node_ingress = [f"127.0.0.1:{support.free_port()}" for _ in range(nodes)]
        self.node_admin = [f"127.0.0.1:{support.free_port()}" for _ in range(nodes)]
        self.node_metrics = [f"127.0.0.1:{support.free_port()}" for _ in range(nodes)]
        self.nodes = [
            support.Process(
                f"node{i + 1}",
                [
                    *(support.PYTHON, "-m", "broker", "--nats", ",".join(self.nats.urls)),
                    *("--node", f"node{i + 1}", "--partitions", str(partitions)),
                    *("--data-dir", str(tmp / f"node{i + 1}")),
                    *("--ingress", self.node_ingress[i], "--admin", self.node_admin[i]),
                    *("--metrics", self.node_metrics[i]),
                    *("--suspend-after", self.suspend_after, "--log-level", "DEBUG"),
                    *kwargs.get("broker_args", ()),
                ],
                self.log_dir / f"node{i + 1}.log",
            )
            for i in range(nodes)
        ]
        self.broker = self.nodes[0]
        self.ingress = self.node_ingress[0]
        self.admin_address = self.node_admin[1 % nodes]
        self._channels: list[grpc.Channel] = []
        self._turn = itertools.count()

    def start_broker(self) -> None:
        """Starts NATS (when not running) and every node not running; waits for health."""
        if not all(self.nats.alive(i) for i in range(self.nats.size)):
            self.nats.start()
            self.nats.wait_ready(support.STARTUP_TIMEOUT_S)
        for node in self.nodes:
            if not node.alive:
                node.start()
        deadline = time.monotonic() + support.STARTUP_TIMEOUT_S
        for i, node in enumerate(self.nodes):
            support.wait_healthy(self.node_ingress[i], deadline, node)
            support.wait_healthy(self.node_admin[i], deadline, node)
        self.wait_led(deadline)

    def wait_led(self, deadline: float) -> None:
        """Waits until every partition has a serving leader, the one it prefers once every
        running node sees the others: no handover is still to come."""

        def led() -> bool:
            try:
                status = self.admin.ClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=5)
            except grpc.RpcError:
                return False
            # Preferences are worked out from the nodes the answering node sees alive: one
            # that has not seen a node started a moment later yet finds every partition
            # "on its preferred node" while handovers to that node are still to come.
            running = {f"node{i + 1}" for i, node in enumerate(self.nodes) if node.alive}
            if not running <= {n.name for n in status.nodes if n.alive}:
                return False
            return bool(status.partitions) and all(
                p.serving and p.owner == p.preferred for p in status.partitions
            )

        support.wait_for(
            led, timeout=max(deadline - time.monotonic(), 1.0), message="every partition led"
        )

    def use_nodes(self, indexes: list[int]) -> None:
        """Sends every later call (stubs and admin) to these nodes only (the others are
        down, say)."""
        for channel in self._channels:
            channel.close()
        self._channels = [
            grpc.insecure_channel(self.node_ingress[i], options=support.CHANNEL_OPTIONS)
            for i in indexes
        ]
        if self._admin_channel is not None:
            self._admin_channel.close()
            self._admin_channel = None
        self.admin_address = self.node_admin[indexes[0]]
        self.ingress = self.node_ingress[indexes[0]]

    def status(self) -> admin_pb2.ClusterStatusResponse:
        """`ClusterStatus` through the admin node."""
        answer: admin_pb2.ClusterStatusResponse = self.admin.ClusterStatus(
            admin_pb2.ClusterStatusRequest(), timeout=10
        )
        return answer

    def leaders(self) -> dict[int, int]:
        """Partition -> the index of the node leading it now."""
        return {
            p.id: int(p.owner.removeprefix("node")) - 1 for p in self.status().partitions if p.owner
        }

    def start_node(self, i: int) -> None:
        """Starts node `i` again and waits until it is healthy."""
        self.nodes[i].start()
        deadline = time.monotonic() + support.STARTUP_TIMEOUT_S
        support.wait_healthy(self.node_ingress[i], deadline, self.nodes[i])

    def kill_broker(self) -> None:
        """SIGKILLs every node."""
        for node in self.nodes:
            node.kill()

    def restart_broker(self, kill: bool = False) -> None:
        """Stops every node (SIGTERM, or SIGKILL with `kill`) and starts them again."""
        for node in self.nodes:
            if kill:
                node.kill()
            else:
                code = node.terminate()
                assert code == 0, f"{node.name} exited with {code} on SIGTERM\n{node.log_tail()}"
        self.start_broker()

    def ensure_running(self) -> None:
        """Starts again whatever is not running."""
        if not all(node.alive for node in self.nodes):
            self.start_broker()
        super().ensure_running()

    @property
    def ingress_channel(self) -> grpc.Channel:
        """A channel to the next node's ingress, in turn."""
        if not self._channels:
            self._channels = [
                grpc.insecure_channel(a, options=support.CHANNEL_OPTIONS) for a in self.node_ingress
            ]
        return self._channels[next(self._turn) % len(self._channels)]

    def close(self) -> None:
        """Stops the services, the nodes, then NATS."""
        for channel in self._channels:
            channel.close()
        self._channels = []
        errors: list[str] = []
        try:
            super().close()  # the services and node 1 (`self.broker`)
        except AssertionError as e:
            errors.append(str(e))
        for node in self.nodes[1:]:
            try:
                node.terminate()
            except AssertionError as e:
                errors.append(str(e))
        with contextlib.suppress(Exception):
            self.nats.stop()
        assert not errors, "\n".join(errors)

    def processes(self) -> list[support.Process]:
        """Every process, every node's included."""
        return [*super().processes(), *self.nodes[1:]]
