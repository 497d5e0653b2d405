"""The verification runner's cluster: three broker nodes over three NATS servers.

`ChaosNodes` is the runner's `ChaosCluster` whose broker side is a `NodesCluster` (no demo
services): 3 NATS servers with JetStream, 3 nodes started with `--nats`, 4 partitions.
The clients spread their calls over every node's ingress; the admin API goes to any node
that is up. The fault injector kills and restarts single nodes and single NATS servers,
and pauses single nodes (SIGSTOP, then SIGCONT): a paused node is always resumed before
it is killed or stopped, so that no teardown waits on a process that cannot run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from durable.v1 import admin_pb2, admin_pb2_grpc

from tests.chaos.runner_cluster import ChaosCluster
from tests.cluster_nodes import NodesCluster
from tests.support import CHANNEL_OPTIONS, STARTUP_TIMEOUT_S, wait_healthy

NODES = 3
PARTITIONS = 4
# How long one node gets to say who leads what (a paused node never answers).
STATUS_TIMEOUT_S = 2.0


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
        # Nodes SIGSTOPped and not resumed yet (by index); faults run in several threads
        # with --overlap.
        self.paused: set[int] = set()
        self._paused_lock = threading.Lock()
        self._status_channels = [
            grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
            for address in self.nodes.node_admin
        ]

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
        self.resume_all()
        self.nodes.kill_broker()

    def kill_node(self, i: int) -> None:
        """SIGKILLs node `i`."""
        self.resume_node(i)
        self.nodes.nodes[i].kill()

    def pause_node(self, i: int) -> None:
        """SIGSTOPs node `i`: it keeps its sockets and its state but runs no code (its
        lease is not renewed) until `resume_node`."""
        pid = self.nodes.nodes[i].pid
        assert pid is not None and self.nodes.nodes[i].alive, f"{self.node_name(i)} is not running"
        with self._paused_lock:
            self.paused.add(i)
        os.kill(pid, signal.SIGSTOP)

    def resume_node(self, i: int) -> None:
        """SIGCONTs node `i` if it is paused."""
        with self._paused_lock:
            if i not in self.paused:
                return
            self.paused.discard(i)
        node = self.nodes.nodes[i]
        if node.pid is not None and node.alive:
            with contextlib.suppress(ProcessLookupError):  # it died meanwhile
                os.kill(node.pid, signal.SIGCONT)

    def resume_all(self) -> None:
        """SIGCONTs every paused node."""
        with self._paused_lock:
            paused = sorted(self.paused)
        for i in paused:
            self.resume_node(i)

    def leading(self, ask_not: int | None = None) -> dict[int, list[int]]:
        """Node index -> the partitions it leads now, as the first live, unpaused node
        (but `ask_not`: one just resumed still believes what it believed when paused) to
        answer `ClusterStatus` says ({} when none answered within `STATUS_TIMEOUT_S`)."""
        names = {self.node_name(i): i for i in range(len(self.nodes.nodes))}
        for i, channel in enumerate(self._status_channels):
            if i in self.paused or i == ask_not or not self.nodes.nodes[i].alive:
                continue
            try:
                status = admin_pb2_grpc.AdminStub(channel).ClusterStatus(
                    admin_pb2.ClusterStatusRequest(), timeout=STATUS_TIMEOUT_S
                )
            except grpc.RpcError:
                continue  # down or busy: ask the next node
            leading: dict[int, list[int]] = {}
            for p in status.partitions:
                if p.owner in names:
                    leading.setdefault(names[p.owner], []).append(p.id)
            return leading
        return {}

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
        # A paused node would hold its SIGTERM until the stop timeout and be SIGKILLed.
        self.resume_all()
        for channel in self._status_channels:
            channel.close()
        self._status_channels = []
        try:
            self.nodes.close()  # the nodes (SIGTERM), then NATS
        except AssertionError as e:
            return [str(e)]
        finally:
            self._nats_thread.shutdown()
        return []

    def broker_log_tails(self, lines: int) -> list[str]:
        return [self.nodes.log_tails(lines), self.nats.log_tails(lines)]
