"""`make run`: the broker and the four demo services, registered and ready to call.

Starts every process, waits until each answers gRPC health checks, registers the
services with the broker's admin API, prints how to call them, and on Ctrl-C, SIGTERM
or SIGHUP (the terminal closed) stops them all (SIGTERM, then SIGKILL after 10 s). If any
process dies on its own, it says so, stops the rest and exits non-zero.

Every port is checked before anything starts: a port already in use (another `make run`
still running, say) is named with the variable that moves it, and nothing is started.
Addresses come from the variables the processes read themselves: `BROKER_INGRESS`,
`BROKER_ADMIN`, `BROKER_DATA_DIR`, `BROKER_METRICS` (off unless set), `FLIGHTS_LISTEN`,
`CARS_LISTEN`, `PAYMENTS_LISTEN`, `TRIPS_LISTEN`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import grpc
from durable import process
from durable.v1 import admin_pb2, admin_pb2_grpc

from services.trips.notifications import DEFAULT_PATH as NOTIFICATION_LOG
from services.trips.service import RUN_TYPES

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
INGRESS = os.environ.get("BROKER_INGRESS", "127.0.0.1:9090")
ADMIN = os.environ.get("BROKER_ADMIN", "127.0.0.1:9091")
DATA_DIR = os.environ.get("BROKER_DATA_DIR", ".data/broker")
# The broker reads BROKER_METRICS itself; it is here only so its port is checked too.
METRICS = os.environ.get("BROKER_METRICS", "")
# The web console (the broker serves it; off unless the flag is given).
CONSOLE = os.environ.get("BROKER_CONSOLE", "127.0.0.1:9093")
# (module under services/, its address); the same variables the services read.
SERVICES = [
    ("flights", os.environ.get("FLIGHTS_LISTEN", "127.0.0.1:9101")),
    ("cars", os.environ.get("CARS_LISTEN", "127.0.0.1:9102")),
    ("payments", os.environ.get("PAYMENTS_LISTEN", "127.0.0.1:9103")),
    ("trips", os.environ.get("TRIPS_LISTEN", "127.0.0.1:9104")),
]
# What listens where, and the variable that moves it.
PORTS = [
    ("the broker's ingress", INGRESS, "BROKER_INGRESS"),
    ("the broker's admin API", ADMIN, "BROKER_ADMIN"),
    ("the broker's console", CONSOLE, "BROKER_CONSOLE"),
    *([("the broker's metrics", METRICS, "BROKER_METRICS")] if METRICS else []),
    *((name, address, f"{name.upper()}_LISTEN") for name, address in SERVICES),
]
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
WATCH_INTERVAL_S = 0.5


class Stop(Exception):
    """Ctrl-C or SIGTERM: shut everything down and exit 0."""


class DemoError(Exception):
    """A process failed to start or died: shut everything down and exit non-zero."""


@dataclasses.dataclass
class Child:
    """A process of the demo and the addresses it serves."""

    name: str
    addresses: list[str]
    process: subprocess.Popen[bytes]


def _check_ports() -> None:
    """Raises `DemoError` naming every port that is taken, before anything starts."""
    taken = []
    for what, address, variable in PORTS:
        problem = process.listen_problem(address)
        if problem is not None:
            taken.append(f"  {address} ({what}, {variable}): {problem.reason}\n")
    if taken:
        raise DemoError(
            "cannot start the demo:\n"
            + "".join(taken)
            + "Is another `make run` still running? Stop it, or move the ports with the "
            "variables named, e.g. BROKER_INGRESS=127.0.0.1:9190 make run"
        )


def _spawn(name: str, args: list[str], addresses: list[str]) -> Child:
    # Its own process group (`process.spawn`): Ctrl-C reaches only this script, which
    # stops the children in order with SIGTERM (their clean shutdown path) instead of
    # racing them. Their output stays on this terminal.
    started = process.spawn(name, [sys.executable, *args], cwd=ROOT)
    print(f"started {name} (pid {started.pid})", flush=True)
    return Child(name, addresses, started.popen)


def _watched(children: list[Child]) -> list[process.Child]:
    return [process.Child(child.name, child.process) for child in children]


def _check_alive(children: list[Child]) -> None:
    try:
        for watched in _watched(children):
            watched.check_alive()
    except process.ProcessError as e:
        raise DemoError(str(e)) from None


def _wait_healthy(child: Child, address: str, children: list[Child], deadline: float) -> None:
    """Polls `grpc.health.v1.Health/Check` on `address` until it reports SERVING."""
    try:
        process.wait_serving(
            address,
            deadline=deadline,
            watch=_watched(children),
            name=child.name,
            poll_timeout=1.0,
            interval=0.1,
        )
    except process.ProcessError as e:
        raise DemoError(str(e)) from None


def _register(uris: list[str]) -> None:
    with grpc.insecure_channel(ADMIN) as channel:
        # The generated *_pb2_grpc modules carry no type hints.
        admin = admin_pb2_grpc.AdminStub(channel)
        for uri in uris:
            try:
                deployment = admin.RegisterDeployment(
                    admin_pb2.RegisterDeploymentRequest(uri=uri), timeout=30
                )
            except grpc.RpcError as e:
                raise DemoError(f"registering {uri} failed: {e.code().name}: {e.details()}") from e
            print(f"registered {uri}: {', '.join(deployment.services)} ({deployment.id})")


def _shown(path: Path) -> str:
    # Relative paths read better, and the commands are meant to be run from the repo root.
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _usage() -> str:
    failures = ", ".join(t for t in RUN_TYPES if t.startswith("fail"))
    grpcurl = f"{_shown(BIN / 'grpcurl')} -plaintext"
    call = f"{grpcurl} -d"
    return f"""
The holiday demo is running: ingress {INGRESS}, admin {ADMIN}.
Console: http://{CONSOLE}/

Book a trip:
  {call} '{{}}' {INGRESS} trips.Trips/Reserve
Make a step fail, so the saga compensates (run_type: {failures}):
  {call} '{{"run_type": "failPayment"}}' {INGRESS} trips.Trips/Reserve
A flaky payment: it fails twice, is retried, and the trip succeeds:
  {call} '{{"run_type": "flakyPayment"}}' {INGRESS} trips.Trips/Reserve
A booking's state (the tripId from a response; also cars.Cars/Get, payments.Payments/Get):
  {call} '{{"trip_id": "<tripId>"}}' {INGRESS} flights.Flights/Get
What the ingress serves:
  {grpcurl} {INGRESS} list
Operate the broker: {_shown(BIN / "brokerctl")} --help
Notifications: {_shown(ROOT / os.environ.get("TRIPS_NOTIFICATION_LOG", NOTIFICATION_LOG))}

Press Ctrl-C to stop everything.
"""


def _stop_all(children: list[Child]) -> None:
    """SIGTERM every child still running, then SIGKILL whoever outlives the grace period."""
    running = [c for c in children if c.process.poll() is None]
    for child in running:
        child.process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in running:
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                print(
                    f"{child.name} did not stop in {STOP_TIMEOUT_S:.0f} s: killing it", flush=True
                )
            child.process.kill()
            child.process.wait()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def main() -> int:
    """Runs the demo until Ctrl-C/SIGTERM/SIGHUP (exit 0) or until a process fails (exit 1)."""
    # SIGHUP too: a closed terminal must not leave the children (each in its own process
    # group, so the hangup does not reach them) holding the ports and the data dir lock.
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in stop_signals:
        signal.signal(sig, _on_signal)
    children: list[Child] = []
    try:
        _check_ports()
        broker_args = ["-m", "broker", "--ingress", INGRESS, "--admin", ADMIN, "--console", CONSOLE]
        children.append(_spawn("broker", [*broker_args, "--data-dir", DATA_DIR], [INGRESS, ADMIN]))
        for name, address in SERVICES:
            args = ["-m", f"services.{name}", "--listen", address]
            children.append(_spawn(name, args, [address]))
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        for child in children:
            for address in child.addresses:
                _wait_healthy(child, address, children, deadline)
        _register([f"http://{address}" for _, address in SERVICES])
        print(_usage(), flush=True)
        while True:
            _check_alive(children)
            time.sleep(WATCH_INTERVAL_S)
    except Stop as e:
        # After a hangup the terminal may be gone: a failed print must not skip the stop.
        with contextlib.suppress(OSError):
            print(f"\n{e}: stopping the demo", flush=True)
        return 0
    except DemoError as e:
        tail = "; stopping the demo" if children else "; nothing was started"
        print(f"error: {e}{tail}", file=sys.stderr, flush=True)
        return 1
    finally:
        # A second Ctrl-C must not cut the shutdown short; it is bounded by the grace period.
        for sig in stop_signals:
            signal.signal(sig, signal.SIG_IGN)
        _stop_all(children)


if __name__ == "__main__":
    sys.exit(main())
