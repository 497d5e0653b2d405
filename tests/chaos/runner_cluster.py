"""The processes of a verification run: the broker side and the chaos service, on free ports.

`ChaosCluster` is what the runner, its checks and its fault injector talk to: the chaos
service (`python -m services.chaos`) and clients of the broker side (every ingress, the
admin API). `ChaosBroker` is the single broker (`--workers` included); the cluster of
broker nodes on NATS is `tests.chaos.runner_nodes.ChaosNodes`. Built on the stable core of
`tests/support.py` (`Process`, `wait_healthy`, `free_port`): every process logs to
`<workdir>/logs/`, the single broker's data is in `<workdir>/broker-data`, and killed
processes restart on the same ports and data dirs.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from durable.v1 import admin_pb2, admin_pb2_grpc, invocation_pb2

from tests.support import (
    CHANNEL_OPTIONS,
    PYTHON,
    STARTUP_TIMEOUT_S,
    Process,
    TestTimeout,
    free_port,
    list_invocations,
    wait_healthy,
)


def worker_pids(supervisor: int) -> list[int]:
    """The live child processes of `supervisor`, oldest first (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == supervisor and fields[0] != "Z":
            children.append((int(fields[19]), int(entry.name)))
    return [pid for _, pid in sorted(children)]


class ChaosCluster:
    """The broker side (subclasses) and the chaos service.

    Args:
        workdir: Data and logs go here.
        request_response: Serve the chaos service with `--request-response`.
    """

    def __init__(self, workdir: Path, request_response: bool = False) -> None:
        self.workdir = workdir
        self.service_address = f"127.0.0.1:{free_port()}"
        service = [PYTHON, "-m", "services.chaos", "--listen", self.service_address]
        if request_response:
            service.append("--request-response")
        self.service = Process("chaos", service, workdir / "logs" / "chaos.log")
        self._ingress_channels: list[grpc.Channel] = []
        self._admin_channel: grpc.Channel | None = None

    # -- the broker side (subclasses) -----------------------------------------------------

    @property
    def ingress_addresses(self) -> list[str]:
        """Every ingress address: the clients spread their calls over these."""
        raise NotImplementedError

    @property
    def admin_target(self) -> str:
        """The gRPC target of the admin API."""
        raise NotImplementedError

    def start_broker(self) -> None:
        """Starts the whole broker side and waits until it serves."""
        raise NotImplementedError

    def kill_broker(self) -> None:
        """SIGKILLs the whole broker side."""
        raise NotImplementedError

    def wait_serving(self, timeout: float) -> None:
        """Waits until every call can be served (after the faults, before the checks)."""

    def restart_exited(self) -> list[str]:
        """Starts again every process that exited although nothing killed it; says which
        (with its log tail). The fault injector calls this between faults only, so a
        process it killed on purpose is back already."""
        return self._restart_if_exited(self.service, self.start_service)

    def close_broker(self) -> list[str]:
        """Stops the broker side (SIGTERM); returns what did not shut down cleanly."""
        raise NotImplementedError

    def broker_log_tails(self, lines: int) -> list[str]:
        """The tails of the broker side's logs."""
        raise NotImplementedError

    # -- the chaos service ----------------------------------------------------------------

    def start_service(self) -> None:
        """Starts the chaos service on its port and waits until it serves."""
        self.service.start()
        wait_healthy(self.service_address, time.monotonic() + STARTUP_TIMEOUT_S, self.service)

    def kill_service(self) -> None:
        """SIGKILLs the chaos service."""
        self.service.kill()

    def close(self) -> list[str]:
        """Stops every process (SIGTERM); returns what did not shut down cleanly."""
        for channel in [*self._ingress_channels, self._admin_channel]:
            if channel is not None:
                channel.close()
        self._ingress_channels = []
        self._admin_channel = None
        return _terminate(self.service) + self.close_broker()

    def log_tails(self, lines: int = 40) -> str:
        """The tail of every log."""
        return "\n".join([*self.broker_log_tails(lines), self.service.log_tail(lines)])

    @staticmethod
    def _restart_if_exited(process: Process, restart: Callable[[], None]) -> list[str]:
        code = process.popen.poll() if process.popen is not None else None
        if code is None:
            return []
        # Exit code 0 after "shutting down": it got SIGTERM/SIGINT, not from the runner.
        exited = f"{process.name} exited on its own with code {code}\n" + process.log_tail(15)
        restart()
        return [exited]

    # -- clients --------------------------------------------------------------------------

    @property
    def ingress_channels(self) -> list[grpc.Channel]:
        """A channel to each ingress (each reconnects quickly after a restart)."""
        if not self._ingress_channels:
            self._ingress_channels = [
                grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
                for address in self.ingress_addresses
            ]
        return self._ingress_channels

    @property
    def ingress_channel(self) -> grpc.Channel:
        """A channel to the first ingress."""
        return self.ingress_channels[0]

    @property
    def admin(self) -> admin_pb2_grpc.AdminStub:
        """The admin API."""
        if self._admin_channel is None:
            # A listing page of 1,000 invocations with their payloads can pass gRPC's 4 MiB
            # default: allow a large reply. A target
            # of several addresses (a cluster's nodes): each call goes to one that is up.
            options = [
                *CHANNEL_OPTIONS,
                ("grpc.max_receive_message_length", 256 * 1024 * 1024),
                ("grpc.lb_policy_name", "round_robin"),
            ]
            self._admin_channel = grpc.insecure_channel(self.admin_target, options=options)
        return admin_pb2_grpc.AdminStub(self._admin_channel)

    def register(self, uri: str) -> None:
        """Registers the endpoint at `uri`."""
        self.admin.RegisterDeployment(admin_pb2.RegisterDeploymentRequest(uri=uri), timeout=30)

    def invocations(self, status: int = 0, limit: int = 0) -> list[invocation_pb2.Invocation]:
        """ListInvocations (every status unless `status`): all of them unless `limit`,
        page by page (a page holds at most 1000; a run makes more)."""
        request = admin_pb2.ListInvocationsRequest(status=status)  # type: ignore[arg-type]
        return list_invocations(self.admin, request, most=limit, timeout=30)

    def describe(self, invocation_id: str) -> admin_pb2.DescribeInvocationResponse:
        """DescribeInvocation: the record and its journal."""
        request = admin_pb2.DescribeInvocationRequest(invocation_id=invocation_id)
        response: admin_pb2.DescribeInvocationResponse = self.admin.DescribeInvocation(
            request, timeout=10
        )
        return response

    def state(self, service: str, key: str) -> dict[str, Any]:
        """GetState, each value decoded from JSON."""
        request = admin_pb2.GetStateRequest(service=service, key=key)
        response = self.admin.GetState(request, timeout=10)
        return {name: json.loads(value) for name, value in response.state.items()}


class ChaosBroker(ChaosCluster):
    """The single broker (its `--workers` processes included) and the chaos service.

    Args:
        workdir: Data and logs go here.
        suspend_after: The broker's `--suspend-after`.
        broker_args: More broker flags.
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
        self.data_dir = workdir / "broker-data"
        self.ingress = f"127.0.0.1:{free_port()}"
        self.admin_address = f"127.0.0.1:{free_port()}"
        broker = [PYTHON, "-m", "broker", "--data-dir", str(self.data_dir)]
        broker += ["--ingress", self.ingress, "--admin", self.admin_address]
        broker += ["--suspend-after", suspend_after, *broker_args]
        self.broker = Process("broker", broker, workdir / "logs" / "broker.log")

    @property
    def ingress_addresses(self) -> list[str]:
        return [self.ingress]

    @property
    def admin_target(self) -> str:
        return self.admin_address

    def start_broker(self) -> None:
        """Starts the broker (same ports, same data dir) and waits until it serves."""
        self.broker.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        wait_healthy(self.ingress, deadline, self.broker)
        wait_healthy(self.admin_address, deadline, self.broker)

    def kill_broker(self) -> None:
        """SIGKILLs the broker."""
        self.broker.kill()

    def restart_exited(self) -> list[str]:
        return self._restart_if_exited(self.broker, self.start_broker) + super().restart_exited()

    def kill_worker(self, choice: int) -> str:
        """SIGKILLs one of the broker's worker processes (`choice` modulo their number)
        and waits until the supervisor has started a new one; says which it was."""
        pid = self.broker.pid
        assert pid is not None, "the broker is not running"
        workers = worker_pids(pid)
        if not workers:
            return "no worker to kill"
        victim = workers[choice % len(workers)]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            now = worker_pids(pid)
            if victim not in now and len(now) == len(workers):
                break
            if time.monotonic() > deadline:
                raise TestTimeout(f"worker {victim} was not replaced: {self.broker.log_tail()}")
            time.sleep(0.05)
        wait_healthy(self.ingress, deadline, self.broker)
        return f"worker pid {victim} killed"

    def close_broker(self) -> list[str]:
        return _terminate(self.broker)

    def broker_log_tails(self, lines: int) -> list[str]:
        return [self.broker.log_tail(lines)]


def _terminate(process: Process) -> list[str]:
    """SIGTERMs `process`; what went wrong, if anything."""
    try:
        code = process.terminate()
    except AssertionError as e:
        return [str(e)]
    if code not in (None, 0, -15):
        return [f"{process.name} exited with {code} on SIGTERM"]
    return []
