"""Start a process and wait until it serves: for tests and scripts that run a broker or
service endpoints as processes of their own.

`durable.testing` runs the broker in-process; when your test (or a script like the demo's
`make run`) needs real processes instead, e.g. your service endpoint to register with
`DurableTestEnvironment(endpoints=[...])`, start each with `spawn` and wait for it with
`wait_serving`::

    from durable.process import free_ports, spawn, wait_serving

    address = f"127.0.0.1:{free_ports(1)[0]}"
    endpoint = spawn("shop", [sys.executable, "-m", "shop", "--listen", address],
                     log=tmp_path / "shop.log")
    try:
        wait_serving(address, deadline=time.monotonic() + 30, watch=[endpoint])
        ...
    finally:
        endpoint.popen.terminate()

Readiness is the `grpc.health.v1.Health/Check` every durable endpoint and the broker
serve, polled until it answers SERVING: a port that accepts connections is not yet a
server that answers. If a watched process exits meanwhile, or the deadline passes, the
wait fails at once with the process's log tail, so a test says why it could not start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import random
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Literal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = [
    "Child",
    "ListenProblem",
    "NotServing",
    "ProcessError",
    "ProcessExited",
    "free_ports",
    "listen_problem",
    "spawn",
    "wait_serving",
]

# Reconnect quickly while a server is still binding its port (gRPC's default starts at 1 s).
# The backoff stays at 100 ms: with one growing to 500 ms the probe noticed a local process
# serving ~0.2 s after it was, on every start (tests start hundreds of processes).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 100),
]


class ProcessError(RuntimeError):
    """A spawned process did not come up; the message ends with its log tail, if any."""


class ProcessExited(ProcessError):
    """A watched process exited."""


class NotServing(ProcessError):
    """An address did not report SERVING before the deadline."""


@dataclasses.dataclass
class Child:
    """A started process.

    Attributes:
        name: What it is, in messages (`broker`, `trips`).
        popen: The process.
        log: Where its stdout and stderr go; None when they are this process's own.
    """

    name: str
    popen: subprocess.Popen[bytes]
    log: Path | None = None

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def tail(self, lines: int = 40) -> str:
        """The last `lines` lines of its log (`""` without a log or when it cannot be read)."""
        if self.log is None:
            return ""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_block(self, lines: int = 40) -> str:
        """`tail` under a heading that names the process and its log; `""` without a log."""
        if self.log is None:
            return ""
        return f"--- {self.name} ({self.log}), last {lines} lines:\n{self.tail(lines)}"

    def check_alive(self, lines: int = 40) -> None:
        """Raises `ProcessExited`, with the log tail, if the process has exited."""
        code = self.popen.poll()
        if code is not None:
            block = self.log_block(lines)
            raise ProcessExited(
                f"{self.name} (pid {self.pid}) exited with code {code}"
                + (f"\n{block}" if block else "")
            )


def spawn(
    name: str,
    args: Sequence[str],
    *,
    log: Path | None = None,
    append: bool = False,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Child:
    """Starts `args` in a process group of its own, with unbuffered Python output.

    Its own process group: Ctrl-C in a terminal reaches only the caller, which can then
    stop its children in order (SIGTERM, their clean shutdown) instead of racing them.

    Args:
        name: What it is, in messages.
        args: The command line (`[sys.executable, "-m", "broker", ...]`).
        log: A file for its stdout and stderr (its folder is created); None leaves them
            on this process's own.
        append: Append to `log`, under a `=== start: ARGS` line, rather than replace it
            (a restarted process keeps the previous run's log).
        cwd: Its working directory (default: this process's).
        env: Its whole environment (default: this process's).
        preexec_fn: Run in the child before it executes `args`.

    Returns:
        The started process.
    """
    environment = {**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1"}
    if log is None:
        popen = subprocess.Popen(
            list(args),
            cwd=cwd,
            env=environment,
            stdin=subprocess.DEVNULL,
            process_group=0,
            preexec_fn=preexec_fn,
        )
        return Child(name, popen)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab" if append else "wb") as out:
        if append:
            out.write(f"=== start: {' '.join(args)}\n".encode())
            out.flush()
        popen = subprocess.Popen(
            list(args),
            cwd=cwd,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,
            preexec_fn=preexec_fn,
        )
    return Child(name, popen, log)


def wait_serving(
    address: str,
    *,
    deadline: float,
    watch: Sequence[Child] = (),
    name: str | None = None,
    poll_timeout: float = 0.5,
    interval: float = 0.05,
    tail_lines: int = 40,
) -> None:
    """Polls `grpc.health.v1.Health/Check` on `address` until it reports SERVING.

    Args:
        address: `host:port`.
        deadline: The `time.monotonic()` value after which to give up.
        watch: Processes checked on every poll: the wait fails at once if one exited.
            The first one's log tail ends the message of a timeout.
        name: What serves there, in messages (default: the first watched process's name,
            else the address).
        poll_timeout: The longest one check may wait for an answer.
        interval: The pause before checking again an address that answers but does not
            serve yet.
        tail_lines: How many log lines a failure shows.

    Raises:
        ProcessExited: A watched process exited.
        NotServing: Not SERVING by `deadline`.
    """
    what = name or (watch[0].name if watch else address)
    last = "no answer yet"
    started = time.monotonic()
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            for child in watch:
                child.check_alive(tail_lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                block = watch[0].log_block(tail_lines) if watch else ""
                raise NotServing(
                    f"{what} is not healthy on {address} after "
                    f"{time.monotonic() - started:.0f} s: {last}" + (f"\n{block}" if block else "")
                )
            try:
                # wait_for_ready: block until the port accepts connections, not fail fast.
                response = health.Check(
                    health_pb2.HealthCheckRequest(),
                    timeout=min(poll_timeout, remaining),
                    wait_for_ready=True,
                )
            except grpc.RpcError as e:
                last = f"{e.code().name}: {e.details()}"
                continue
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                return
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            last = f"health status {status}"
            time.sleep(interval)  # answering but not serving yet: poll again shortly


@dataclasses.dataclass(frozen=True)
class ListenProblem:
    """Why a server could not listen on an address right now.

    Attributes:
        kind: `malformed` (not HOST:PORT), `unresolved` (the host does not resolve) or
            `taken` (binding it fails, e.g. another process listens there).
        reason: A sentence saying so.
    """

    kind: Literal["malformed", "unresolved", "taken"]
    reason: str


def listen_problem(address: str) -> ListenProblem | None:
    """Why `address` (HOST:PORT) cannot be listened on right now, or None if it can.

    Binds and releases a socket with SO_REUSEADDR, as gRPC servers do, so a port left in
    TIME_WAIT by a previous run passes and one with a listener does not. Port 0 passes.
    A taken port's reason names the process listening on it when this one may see it
    (`listener`).
    """
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return ListenProblem("malformed", f"{address!r} is not HOST:PORT")
    if int(port) > 65535:
        # gRPC would bind the port modulo 65536 without a word.
        return ListenProblem("malformed", f"port {port} is out of range (0 to 65535)")
    host = host.strip("[]") or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except OSError as e:
        return ListenProblem("unresolved", f"cannot resolve {host!r}: {e}")
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return ListenProblem("taken", taken_by(int(port)))
                return ListenProblem("taken", e.strerror or str(e))
    return None


# A listening TCP socket in /proc/net/tcp's `st` column.
_LISTEN = "0A"
# How many processes a lookup of a port's listener looks through, at most.
_MAX_PROCESSES = 100_000


def listener(port: int, proc: Path = Path("/proc")) -> str | None:
    """Who listens on TCP `port` on this machine, as `pid N (command line)`, for an error
    message: None when nothing does, when the listener is a process this user may not
    look into, or on a system without Linux's /proc."""
    wanted = f":{port:04X}"
    inodes: set[str] = set()
    for table in ("net/tcp", "net/tcp6"):
        try:
            rows = (proc / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            # sl, local address:port (hex), remote, state, ..., inode (the tenth field).
            fields = row.split()
            if len(fields) > 9 and fields[3] == _LISTEN and fields[1].endswith(wanted):
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for seen, entry in enumerate(proc.iterdir()):
        if seen >= _MAX_PROCESSES:
            break
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue  # gone, or not ours to look into
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    return f"pid {entry.name} ({_command(entry)})"
            except OSError:
                continue
    return None


def taken_by(port: int) -> str:
    """`already in use by pid N (command line)` for a port something listens on, naming
    `another program` when `listener` cannot see which."""
    return f"already in use by {listener(port) or 'another program'}"


def _command(process: Path, limit: int = 120) -> str:
    try:
        raw = (process / "cmdline").read_bytes()
    except OSError:
        return "?"
    command = raw.replace(b"\0", b" ").decode(errors="replace").strip() or "?"
    return command if len(command) <= limit else command[: limit - 3] + "..."


# Below the kernel's ephemeral range (32768-60999 by default), 12,000 ports wide.
_BELOW_EPHEMERAL = 12_000
_LINUX_EPHEMERAL_LOW = 32_768
_random = random.Random()  # its own: a caller seeding `random` must not fix our ports


def _ports_below_the_ephemeral_range() -> range:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low = int(text.split()[0])
    except (OSError, ValueError, IndexError):
        low = _LINUX_EPHEMERAL_LOW
    return range(max(1024, low - _BELOW_EPHEMERAL), low)


def free_ports(count: int = 1, host: str = "127.0.0.1", avoid: Collection[int] = ()) -> list[int]:
    """`count` distinct TCP ports on `host` that nothing is bound to right now, for
    processes you are about to start (and may restart) on them.

    They are chosen below the kernel's ephemeral range. A port the kernel hands out for
    `bind(0)` comes from that range, and so does the local port of every outgoing
    connection: one found free there can be taken by any connection opened before your
    process binds it, or while a crashed process is down and before it binds again.
    Below the range only an explicit bind takes it. If that range is empty or full, the
    kernel picks.

    Args:
        count: How many ports.
        host: The address they will be bound on.
        avoid: Ports not to return (ones already handed out).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = _ports_below_the_ephemeral_range()
    ports: list[int] = []
    # Every chosen port stays bound until all are chosen: no port is returned twice.
    with contextlib.ExitStack() as held:
        tries = 0
        while len(ports) < count:
            tries += 1
            port = _random.choice(candidates) if candidates and tries <= 100 * count else 0
            if port and (port in avoid or port in ports):
                continue
            s = held.enter_context(socket.socket(family, socket.SOCK_STREAM))
            try:
                s.bind((host, port))
            except OSError:
                if port == 0:
                    raise
                continue  # in use, or lingering from an earlier connection
            port = int(s.getsockname()[1])
            if port not in avoid and port not in ports:
                ports.append(port)
    return ports
