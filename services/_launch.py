"""What `make run` (`run_demo`) and `make cluster` (`run_cluster`) share: check ports,
start children in their own process groups, wait until they serve, register the demo
services, watch, and stop everything on Ctrl-C, SIGTERM or SIGHUP (SIGTERM, then SIGKILL
after 10 s), exiting non-zero if a process dies on its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

import grpc
from durable import process
from durable.v1 import admin_pb2, admin_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
WATCH_INTERVAL_S = 0.5


class Stop(Exception):
    """Ctrl-C, SIGTERM or SIGHUP: shut everything down and exit 0."""


class LaunchError(Exception):
    """A process failed to start or died: shut everything down and exit non-zero."""


@dataclasses.dataclass
class Child:
    """A started process and the addresses it serves."""

    name: str
    addresses: list[str]
    process: subprocess.Popen[bytes]


def check_ports(ports: Sequence[tuple[str, str, str]], what: str, hint: str) -> None:
    """Raises `LaunchError` naming every taken port, before anything starts.

    Args:
        ports: (what listens there, HOST:PORT, the variable that moves it).
        what: What cannot start, e.g. "the demo".
        hint: The sentence that ends the message: what to do about it.
    """
    taken = []
    for listener, address, variable in ports:
        problem = process.listen_problem(address)
        if problem is not None:
            taken.append(f"  {address} ({listener}, {variable}): {problem.reason}\n")
    if taken:
        raise LaunchError(f"cannot start {what}:\n" + "".join(taken) + hint)


def spawn(name: str, args: list[str], addresses: list[str]) -> Child:
    """Starts `python ARGS` from the repository root and says so."""
    # Its own process group (`process.spawn`): Ctrl-C reaches only this script, which
    # stops the children in order with SIGTERM (their clean shutdown path) instead of
    # racing them. Their output stays on this terminal.
    started = process.spawn(name, [sys.executable, *args], cwd=ROOT)
    print(f"started {name} (pid {started.pid})", flush=True)
    return Child(name, addresses, started.popen)


def _watched(children: list[Child]) -> list[process.Child]:
    return [process.Child(child.name, child.process) for child in children]


def check_alive(children: list[Child]) -> None:
    """Raises `LaunchError` if a child has exited."""
    try:
        for watched in _watched(children):
            watched.check_alive()
    except process.ProcessError as e:
        raise LaunchError(str(e)) from None


def wait_all_healthy(children: list[Child], timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Polls `grpc.health.v1.Health/Check` on every child's addresses until each reports
    SERVING, failing at once if any child exits."""
    deadline = time.monotonic() + timeout
    for child in children:
        for address in child.addresses:
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
                raise LaunchError(str(e)) from None


def register(admin: str, uris: list[str]) -> None:
    """Registers each deployment URI through the broker's admin API at `admin`."""
    with grpc.insecure_channel(admin) as channel:
        # The generated *_pb2_grpc modules carry no type hints.
        stub = admin_pb2_grpc.AdminStub(channel)
        for uri in uris:
            try:
                deployment = stub.RegisterDeployment(
                    admin_pb2.RegisterDeploymentRequest(uri=uri), timeout=30
                )
            except grpc.RpcError as e:
                raise LaunchError(
                    f"registering {uri} failed: {e.code().name}: {e.details()}"
                ) from e
            print(f"registered {uri}: {', '.join(deployment.services)} ({deployment.id})")


def shown(path: Path) -> str:
    """`path` relative to the working directory when it is under it: the printed commands
    are meant to be run from the repository root."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def stop_all(children: list[Child]) -> None:
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


def run(
    what: str,
    check: Callable[[], None],
    start: Callable[[list[Child]], str],
    watch: Callable[[], None] = lambda: None,
    stop_last: Callable[[], None] = lambda: None,
) -> int:
    """Runs until Ctrl-C/SIGTERM/SIGHUP (returns 0) or until a process fails (returns 1).

    Args:
        what: What runs, in messages ("the demo").
        check: Raises `LaunchError` if something would keep it from starting (a taken
            port); starts nothing.
        start: Starts everything, appending each child to the list it is given as soon as
            it is started (so a failure stops what did start); returns what to print
            once all is ready. Raises `LaunchError` to give up.
        watch: Called with each check of the children: raises `LaunchError` if something
            that is not a child (a NATS server) died.
        stop_last: Stops what must outlive the children (the NATS servers the brokers
            write to), once they have stopped.
    """
    # SIGHUP too: a closed terminal must not leave the children (each in its own process
    # group, so the hangup does not reach them) holding the ports and the data dir lock.
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in stop_signals:
        signal.signal(sig, _on_signal)
    children: list[Child] = []
    checked = False
    try:
        check()
        checked = True
        usage = start(children)
        print(usage, flush=True)
        while True:
            check_alive(children)
            watch()
            time.sleep(WATCH_INTERVAL_S)
    except Stop as e:
        # After a hangup the terminal may be gone: a failed print must not skip the stop.
        with contextlib.suppress(OSError):
            print(f"\n{e}: stopping {what}", flush=True)
        return 0
    except LaunchError as e:
        tail = f"; stopping {what}" if checked else "; nothing was started"
        print(f"error: {e}{tail}", file=sys.stderr, flush=True)
        return 1
    finally:
        # A second Ctrl-C must not cut the shutdown short; it is bounded by the grace period.
        for sig in stop_signals:
            signal.signal(sig, signal.SIG_IGN)
        stop_all(children)
        stop_last()
