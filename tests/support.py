"""Helpers for tests that run the real broker and demo services as processes.

Everything synchronises by polling with a deadline (health checks, admin queries), never by
sleeping a fixed time. Every process writes its stdout and stderr to a log file under the
test's temporary directory; the tail of each log is attached to a failing test's report
(see `tests/conftest.py`).
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from cars import cars_pb2_grpc
from durable.process import Child, NotServing, ProcessExited, free_ports, spawn, wait_serving
from durable.v1 import admin_pb2, admin_pb2_grpc, ingress_pb2_grpc, invocation_pb2, journal_pb2
from flights import flights_pb2_grpc
from payments import payments_pb2_grpc
from playground import playground_pb2_grpc
from trips import trips_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(sys.executable).parent
GRPCURL = BIN / "grpcurl"
SERVICES = ("flights", "cars", "payments", "trips")
# The playground process (`python -m services.playground`): not started unless asked for,
# e.g. `Cluster(tmp, services=("playground",))` or `services=(*SERVICES, PLAYGROUND)`.
PLAYGROUND = "playground"
# The gRPC service each demo process hosts, as the ingress serves it.
SERVICE_NAMES = {
    "flights": "flights.Flights",
    "cars": "cars.Cars",
    "payments": "payments.Payments",
    "trips": "trips.Trips",
}
# The services the playground process hosts.
PLAYGROUND_SERVICES = (
    "playground.Waiter",
    "playground.Counter",
    "playground.Signup",
    "playground.Flaky",
    "playground.Busy",
)
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# Reconnect quickly after a process restarts (gRPC's default backoff starts at 1 s and grows).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
INVOCATION_ID_RE = re.compile(r"^inv_[A-Za-z0-9_-]+$")
TRIP_ID_IN_MESSAGE_RE = re.compile(r"trip (\S+) failed:")

Status = invocation_pb2.InvocationStatus
T = TypeVar("T")


class TestTimeout(AssertionError):
    """A condition polled by `wait_for` did not hold before its deadline."""

    __test__ = False  # not a test class, whatever pytest's name heuristics say


# Ports this process has handed out: a cluster whose admin port equals a service's port
# fails to start.
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing is bound to right now and no outgoing
    connection will take meanwhile (`durable.process.free_ports`), never the same one
    twice in one test run."""
    [port] = free_ports(1, avoid=_handed_out)
    _handed_out.add(port)
    return port


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Polls `predicate` until it returns something truthy, and returns that.

    A `grpc.RpcError` raised by the predicate counts as "not yet" (the broker may be
    restarting); the last one is shown if the deadline passes.

    Raises:
        TestTimeout: The predicate did not hold within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except grpc.RpcError as e:
            last_error = e
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message
            detail = f" (last error: {last_error})" if last_error else ""
            raise TestTimeout(f"timed out after {timeout:.1f} s waiting for {what}{detail}")
        time.sleep(interval)  # polling interval, not synchronisation: the deadline decides


def list_invocations(
    admin: admin_pb2_grpc.AdminStub,
    request: admin_pb2.ListInvocationsRequest,
    most: int = 0,
    timeout: float = 10,
) -> list[invocation_pb2.Invocation]:
    """Every invocation `request` matches (the first `most` if given), newest first,
    walked page by page with page_token: one page holds at most 1000."""
    asked = admin_pb2.ListInvocationsRequest()
    asked.CopyFrom(request)
    out: list[invocation_pb2.Invocation] = []
    while True:
        if most:
            asked.limit = min(most - len(out), 1000)
        response = admin.ListInvocations(asked, timeout=timeout)
        out.extend(response.invocations)
        if not response.next_page_token or (most and len(out) >= most):
            return out
        asked.page_token = response.next_page_token


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs; a zombie does not (it holds no port), and one
    reparented to a container's init may stay a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def listening(address: str) -> bool:
    """Whether something accepts TCP connections on `address` (HOST:PORT) now."""
    host, port = address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        return s.connect_ex((host, int(port))) == 0


def invocation_id_of(call: Any) -> str:
    """The `invocation-id` response metadata of a finished call (from `.with_call`)."""
    value = dict(call.initial_metadata()).get("invocation-id", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def trip_id_of(response: Any) -> str:
    """The trip id of a `ReserveTripResponse`, whether its field is `tripId` or `trip_id`."""
    value = getattr(response, "tripId", None) or getattr(response, "trip_id", None)
    return str(value or "")


def trip_id_from_error(message: str) -> str:
    """The trip id in a failed saga's message (`trip <id> failed: ...`)."""
    match = TRIP_ID_IN_MESSAGE_RE.search(message)
    assert match, f"no trip id in the error message {message!r}"
    return match.group(1)


class Process:
    """A subprocess whose stdout and stderr go to `log_path`.

    Args:
        name: Shown in messages and reports.
        args: The command line.
        log_path: Appended to, so a restarted process keeps the previous run's log.
        cwd: The working directory (default: the repository root, where `python -m
            services.x` finds the demo; a process that must not see this checkout, such
            as an installed broker in a user's project, gets its own).
        env: The whole environment (default: this process's when it starts).
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.cwd = cwd or ROOT
        self.env = dict(env) if env is not None else None
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        """Starts the process (in its own process group, so Ctrl-C stays with pytest)."""
        assert not self.alive, f"{self.name} is already running"
        child = spawn(
            self.name, self.args, log=self.log_path, append=True, cwd=self.cwd, env=self.env
        )
        self.popen = child.popen
        return self

    @property
    def pid(self) -> int | None:
        """The running process's id, if started."""
        return self.popen.pid if self.popen else None

    @property
    def alive(self) -> bool:
        """Whether the process is running."""
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=STOP_TIMEOUT_S)

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`; returns the exit code.

        Raises:
            AssertionError: It had to be SIGKILLed (the clean shutdown hung).
        """
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=STOP_TIMEOUT_S)
                raise AssertionError(
                    f"{self.name} ignored SIGTERM for {timeout:.0f} s and was killed\n"
                    + self.log_tail()
                ) from None
        return self.popen.returncode

    def check_alive(self) -> None:
        """Raises with the log tail if the process has exited."""
        if self.popen is not None and self.popen.poll() is not None:
            raise AssertionError(
                f"{self.name} exited with code {self.popen.returncode}\n" + self.log_tail()
            )

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the process's log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return f"--- {self.name}: no log at {self.log_path}"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- {self.name} ({self.log_path}), last {lines} lines:\n{tail}"


def wait_healthy(address: str, deadline: float, process: Process | None = None) -> None:
    """Polls `grpc.health.v1.Health/Check` on `address` until it reports SERVING.

    Args:
        address: host:port.
        deadline: `time.monotonic()` value after which to give up.
        process: Checked on every poll: fail at once (with its log) if it died.
    """
    watch = []
    if process is not None and process.popen is not None:
        watch.append(Child(process.name, process.popen, process.log_path))
    try:
        wait_serving(address, deadline=deadline, watch=watch, name=address)
    except ProcessExited as e:
        raise AssertionError(str(e)) from None
    except NotServing as e:
        raise TestTimeout(str(e)) from None


# The `make_cluster` fixture: `make_cluster(suspend_after="0", broker_args=[...])`.
MakeCluster = Callable[..., "Cluster"]

# Every cluster still running, so a failing test's report can show their logs.
LIVE_CLUSTERS: list[Cluster] = []


class Cluster:
    """The broker and the four demo services on free ports, registered and ready.

    Args:
        tmp: A directory for the broker's data, the logs and the notification log.
        suspend_after: The broker's `--suspend-after`.
        broker_args: More broker flags, e.g. `["--max-payload-bytes", "1024"]`.
        services: Which demo services to start (all four by default); add `PLAYGROUND`
            to also start `python -m services.playground`.
    """

    def __init__(
        self,
        tmp: Path,
        suspend_after: str = "1s",
        broker_args: Sequence[str] = (),
        services: Sequence[str] = SERVICES,
        service_args: Sequence[str] = (),
    ) -> None:
        self.tmp = tmp
        self.suspend_after = suspend_after
        # More flags for every service, e.g. ["--request-response"].
        self.service_args = list(service_args)
        self.data_dir = tmp / "broker-data"
        self.log_dir = tmp / "logs"
        self.notification_log = tmp / "trips" / "notifications.log"
        self.ingress = f"127.0.0.1:{free_port()}"
        self.admin_address = f"127.0.0.1:{free_port()}"
        self.service_addresses = {name: f"127.0.0.1:{free_port()}" for name in services}
        args = [PYTHON, "-m", "broker", "--data-dir", str(self.data_dir)]
        args += ["--ingress", self.ingress, "--admin", self.admin_address]
        args += ["--suspend-after", suspend_after, "--log-level", "DEBUG", *broker_args]
        self.broker = Process("broker", args, self.log_dir / "broker.log")
        self.services: dict[str, Process] = {
            name: Process(name, self._service_args(name, address), self.log_dir / f"{name}.log")
            for name, address in self.service_addresses.items()
        }
        self._ingress_channel: grpc.Channel | None = None
        self._admin_channel: grpc.Channel | None = None

    def _service_args(self, name: str, address: str) -> list[str]:
        args = [PYTHON, "-m", f"services.{name}", "--listen", address, *self.service_args]
        if name == "trips":
            args += ["--notification-log", str(self.notification_log)]
        return args

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Cluster:
        """Starts every process, waits until each is healthy, registers the services."""
        LIVE_CLUSTERS.append(self)
        try:
            # The services first: their ports were only picked, and a `--workers` broker
            # picks its workers' private ports from the same range (one took the trips
            # service's port in a CI run); bound, they are not picked.
            for name in self.services:
                self.services[name].start()
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            for name, process in self.services.items():
                wait_healthy(self.service_addresses[name], deadline, process)
            self.start_broker()
            for address in self.service_addresses.values():
                self.register(f"http://{address}")
        except BaseException as e:
            # `with Cluster(...)` never reaches __exit__ when start fails: stop what did
            # start, or it outlives the test run; the logs say why it failed.
            with contextlib.suppress(BaseException):
                self.close()
            e.add_note(self.log_tails(60))
            raise
        return self

    def register(self, uri: str) -> admin_pb2.Deployment:
        """Registers the endpoint at `uri` with the broker."""
        request = admin_pb2.RegisterDeploymentRequest(uri=uri)
        deployment: admin_pb2.Deployment = self.admin.RegisterDeployment(request, timeout=30)
        return deployment

    def start_broker(self) -> None:
        """Starts the broker (on the same ports and data dir as before) and waits for health."""
        self.broker.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        wait_healthy(self.ingress, deadline, self.broker)
        wait_healthy(self.admin_address, deadline, self.broker)

    def kill_broker(self) -> None:
        """SIGKILLs the broker."""
        self.broker.kill()

    def restart_broker(self, kill: bool = False) -> None:
        """Stops the broker (SIGTERM, or SIGKILL with `kill`) and starts it again."""
        if kill:
            self.broker.kill()
        else:
            code = self.broker.terminate()
            assert code == 0, f"broker exited with {code} on SIGTERM\n{self.broker.log_tail()}"
        self.start_broker()

    def kill_service(self, name: str) -> None:
        """SIGKILLs a demo service."""
        self.services[name].kill()

    def start_service(self, name: str) -> None:
        """Starts a demo service on its port and waits until it is healthy."""
        process = self.services[name]
        process.start()
        wait_healthy(self.service_addresses[name], time.monotonic() + STARTUP_TIMEOUT_S, process)

    def ensure_running(self) -> None:
        """Starts again whichever of the processes is not running (e.g. after a test that
        killed one failed before restarting it), so a shared cluster serves the next test."""
        if not self.broker.alive:
            self.start_broker()
        for name, process in self.services.items():
            if not process.alive:
                self.start_service(name)

    def close(self) -> None:
        """Stops every process (SIGTERM, SIGKILL as a last resort) and the channels.

        Raises:
            AssertionError: A process did not shut down cleanly on SIGTERM (after all of
                them were stopped).
        """
        errors: list[str] = []
        for channel in (self._ingress_channel, self._admin_channel):
            if channel is not None:
                channel.close()
        self._ingress_channel = self._admin_channel = None
        for process in [*self.services.values(), self.broker]:
            try:
                process.terminate()
            except AssertionError as e:
                errors.append(str(e))
            except Exception as e:  # stop the others regardless
                errors.append(f"{process.name}: {e!r}")
        if self in LIVE_CLUSTERS:
            LIVE_CLUSTERS.remove(self)
        assert not errors, "\n".join(errors)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def processes(self) -> list[Process]:
        """Every process this cluster started: the broker's first."""
        return [self.broker, *self.services.values()]

    def log_tails(self, lines: int = 40) -> str:
        """The tail of every process's log."""
        return "\n".join(p.log_tail(lines) for p in self.processes())

    # -- clients -----------------------------------------------------------------------

    @property
    def ingress_channel(self) -> grpc.Channel:
        """A channel to the ingress (reconnects quickly after a broker restart)."""
        if self._ingress_channel is None:
            self._ingress_channel = grpc.insecure_channel(self.ingress, options=CHANNEL_OPTIONS)
        return self._ingress_channel

    @property
    def admin(self) -> admin_pb2_grpc.AdminStub:
        """The admin API stub."""
        if self._admin_channel is None:
            self._admin_channel = grpc.insecure_channel(self.admin_address, options=CHANNEL_OPTIONS)
        return admin_pb2_grpc.AdminStub(self._admin_channel)

    @property
    def trips(self) -> trips_pb2_grpc.TripsStub:
        """`trips.Trips` through the ingress."""
        return trips_pb2_grpc.TripsStub(self.ingress_channel)

    @property
    def flights(self) -> flights_pb2_grpc.FlightsStub:
        """`flights.Flights` through the ingress."""
        return flights_pb2_grpc.FlightsStub(self.ingress_channel)

    @property
    def cars(self) -> cars_pb2_grpc.CarsStub:
        """`cars.Cars` through the ingress."""
        return cars_pb2_grpc.CarsStub(self.ingress_channel)

    @property
    def payments(self) -> payments_pb2_grpc.PaymentsStub:
        """`payments.Payments` through the ingress."""
        return payments_pb2_grpc.PaymentsStub(self.ingress_channel)

    @property
    def ingress_api(self) -> ingress_pb2_grpc.IngressStub:
        """`durable.v1.Ingress` (Attach, GetOutput) on the ingress port."""
        return ingress_pb2_grpc.IngressStub(self.ingress_channel)

    @property
    def waiter(self) -> playground_pb2_grpc.WaiterStub:
        """`playground.Waiter` through the ingress (needs the `PLAYGROUND` process)."""
        return playground_pb2_grpc.WaiterStub(self.ingress_channel)

    @property
    def counter(self) -> playground_pb2_grpc.CounterStub:
        """`playground.Counter` through the ingress."""
        return playground_pb2_grpc.CounterStub(self.ingress_channel)

    @property
    def signup(self) -> playground_pb2_grpc.SignupStub:
        """`playground.Signup` through the ingress."""
        return playground_pb2_grpc.SignupStub(self.ingress_channel)

    @property
    def busy(self) -> playground_pb2_grpc.BusyStub:
        """A stub of playground.Busy through the ingress."""
        return playground_pb2_grpc.BusyStub(self.ingress_channel)

    @property
    def flaky(self) -> playground_pb2_grpc.FlakyStub:
        """`playground.Flaky` through the ingress."""
        return playground_pb2_grpc.FlakyStub(self.ingress_channel)

    # -- the admin API ------------------------------------------------------------------

    def invocations(
        self,
        status: int | str = 0,
        service: str = "",
        key: str = "",
        method: str = "",
        limit: int = 0,
    ) -> list[invocation_pb2.Invocation]:
        """ListInvocations with its filters (`status` as the enum or its name, e.g.
        "SUSPENDED"): every match, page by page, or the first `limit`; `method` filters
        the result here."""
        wanted = (
            Status.Value(status.upper().replace("-", "_"))
            if isinstance(status, str)
            else Status.ValueType(status)
        )
        request = admin_pb2.ListInvocationsRequest(status=wanted, service=service, key=key)
        listed = list_invocations(self.admin, request, most=limit)
        return [i for i in listed if not method or i.method == method]

    def describe(self, invocation_id: str) -> admin_pb2.DescribeInvocationResponse:
        """DescribeInvocation: the record and its journal."""
        response: admin_pb2.DescribeInvocationResponse = self.admin.DescribeInvocation(
            admin_pb2.DescribeInvocationRequest(invocation_id=invocation_id), timeout=10
        )
        return response

    def invocation(self, invocation_id: str) -> invocation_pb2.Invocation:
        """One invocation's record."""
        return self.describe(invocation_id).invocation

    def by_idempotency_key(
        self, service: str, key: str, method: str = ""
    ) -> list[invocation_pb2.Invocation]:
        """The invocations of `service` (and `method`) started with idempotency key `key`."""
        return [
            i for i in self.invocations(service=service, method=method) if i.idempotency_key == key
        ]

    def journal_kinds(self, invocation_id: str) -> list[str]:
        """The command of each journal entry, e.g. `["input", "sleep", "output"]`."""
        return [str(e.WhichOneof("command")) for e in self.describe(invocation_id).journal]

    def journal_entries(self, invocation_id: str, kind: str) -> list[journal_pb2.JournalEntry]:
        """The journal entries of `invocation_id` whose command is `kind` (e.g. "sleep")."""
        return [e for e in self.describe(invocation_id).journal if e.WhichOneof("command") == kind]

    def awakeable_id(self, invocation_id: str) -> str:
        """The id of the awakeable `invocation_id` journaled ("" while there is none)."""
        entries = self.journal_entries(invocation_id, "awakeable")
        return entries[0].awakeable.awakeable_id if entries else ""

    def wait_status(
        self, invocation_id: str, status: int | str, timeout: float = 30.0
    ) -> invocation_pb2.Invocation:
        """Waits until the invocation has `status` (the enum or its name); returns its record."""
        name = status if isinstance(status, str) else Status.Name(Status.ValueType(status))
        wanted = Status.Value(name.upper().replace("-", "_"))

        def reached() -> invocation_pb2.Invocation | None:
            record = self.invocation(invocation_id)
            return record if record.status == wanted else None

        record = self.wait_for(
            reached,
            timeout=timeout,
            message=lambda: f"{invocation_id} to be {name}: {self.describe(invocation_id)}",
        )
        assert record is not None
        return record

    def cancel(self, invocation_id: str) -> invocation_pb2.Invocation:
        """CancelInvocation."""
        response = self.admin.CancelInvocation(
            admin_pb2.InvocationRequest(invocation_id=invocation_id), timeout=10
        )
        return response.invocation

    def kill(self, invocation_id: str) -> invocation_pb2.Invocation:
        """KillInvocation."""
        response = self.admin.KillInvocation(
            admin_pb2.InvocationRequest(invocation_id=invocation_id), timeout=10
        )
        return response.invocation

    def resume(self, invocation_id: str) -> invocation_pb2.Invocation:
        """ResumeInvocation."""
        response = self.admin.ResumeInvocation(
            admin_pb2.InvocationRequest(invocation_id=invocation_id), timeout=10
        )
        return response.invocation

    def resolve_awakeable(self, awakeable_id: str, value: Any = None) -> None:
        """ResolveAwakeable with `value` encoded as JSON."""
        self.admin.ResolveAwakeable(
            admin_pb2.ResolveAwakeableRequest(
                awakeable_id=awakeable_id, value=json.dumps(value).encode()
            ),
            timeout=10,
        )

    def reject_awakeable(self, awakeable_id: str, reason: str) -> None:
        """RejectAwakeable."""
        self.admin.RejectAwakeable(
            admin_pb2.RejectAwakeableRequest(awakeable_id=awakeable_id, reason=reason), timeout=10
        )

    def complete_promise(
        self,
        service: str,
        key: str,
        name: str,
        value: Any = None,
        rejection: str | None = None,
    ) -> None:
        """CompletePromise: resolves with `value` (as JSON), or rejects with `rejection`."""
        request = admin_pb2.CompletePromiseRequest(service=service, key=key, name=name)
        if rejection is not None:
            request.rejection = rejection
        else:
            request.value = json.dumps(value).encode()
        self.admin.CompletePromise(request, timeout=10)

    def state(self, service: str, key: str) -> dict[str, Any]:
        """GetState, each value decoded from JSON."""
        response = self.admin.GetState(
            admin_pb2.GetStateRequest(service=service, key=key), timeout=10
        )
        return {name: json.loads(value) for name, value in response.state.items()}

    def wait_for(
        self,
        predicate: Callable[[], T | None],
        timeout: float = 30.0,
        message: str | Callable[[], str] = "condition",
    ) -> T:
        """`wait_for`, also failing at once (with the log) if a process of ours died."""

        def checked() -> T | None:
            # A process we stopped on purpose has been waited for (its returncode is
            # set); any other that has exited died on its own.
            for process in [self.broker, *self.services.values()]:
                if process.popen is not None and process.popen.returncode is None:
                    process.check_alive()
            return predicate()

        return wait_for(checked, timeout=timeout, message=message)

    # -- the demo -----------------------------------------------------------------------

    def notifications(self, trip_id: str | None = None) -> list[dict[str, Any]]:
        """The trips service's notification records (those of `trip_id` if given)."""
        if not self.notification_log.exists():
            return []
        records = [
            json.loads(line)
            for line in self.notification_log.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        return [r for r in records if trip_id is None or r.get("trip_id") == trip_id]

    def grpcurl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Runs grpcurl with exactly `args` (e.g. `-plaintext ADDR list`); never raises on
        a non-zero exit, the caller reads `returncode`, `stdout` and `stderr`."""
        return subprocess.run(
            [str(GRPCURL), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )

    def grpcurl_call(
        self,
        method: str,
        body: dict[str, Any] | None = None,
        headers: Sequence[str] = (),
        verbose: bool = False,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """`grpcurl -plaintext [-v] [-H h]... -d BODY INGRESS METHOD`."""
        args = ["-plaintext", "-max-time", str(int(timeout))]
        if verbose:
            args.append("-v")
        for header in headers:
            args += ["-H", header]
        args += ["-d", json.dumps(body or {}), self.ingress, method]
        return self.grpcurl(*args, timeout=timeout + 10)


def parse_grpcurl_error(stderr: str) -> tuple[str, str]:
    """(code, message) from grpcurl's `ERROR:\\n  Code: X\\n  Message: Y` output."""
    code = re.search(r"^\s*Code: (\S+)\s*$", stderr, re.MULTILINE)
    message = re.search(r"^\s*Message: (.*)$", stderr, re.MULTILINE)
    assert code and message, f"not a grpcurl error report:\n{stderr}"
    return code.group(1), message.group(1).strip()


def grpcurl_json(stdout: str) -> dict[str, Any]:
    """The JSON response of a grpcurl call (without `-v`)."""
    value: dict[str, Any] = json.loads(stdout)
    return value


def grpcurl_verbose_parts(stdout: str) -> tuple[dict[str, str], dict[str, Any]]:
    """(response headers, JSON body) from `grpcurl -v` output."""
    headers: dict[str, str] = {}
    section = re.search(r"Response headers received:\n(.*?)\n\n", stdout, re.DOTALL)
    if section:
        for line in section.group(1).splitlines():
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
    body_match = re.search(r"Response contents:\n(\{.*?\n\})", stdout, re.DOTALL)
    body: dict[str, Any] = json.loads(body_match.group(1)) if body_match else {}
    return headers, body


@contextlib.contextmanager
def running_cluster(tmp: Path, **kwargs: Any) -> Iterator[Cluster]:
    """A started `Cluster`, closed (every process stopped) however the block ends; with
    `nodes=N`, a cluster of N broker nodes on NATS JetStream (`tests.cluster_nodes`)."""
    if "nodes" in kwargs:
        from tests.cluster_nodes import NodesCluster

        cluster: Cluster = NodesCluster(tmp, **kwargs)
    else:
        cluster = Cluster(tmp, **kwargs)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
