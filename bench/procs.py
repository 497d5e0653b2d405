"""The processes under test: start them on free ports, wait until they serve, register
them with the broker, read their CPU time, and stop them all, whatever happens.

Every child runs in its own process group (a Ctrl-C reaches only the benchmark, which then
stops the children in order: SIGTERM, then SIGKILL after a timeout) and asks the kernel to
SIGTERM it should the benchmark itself die without cleaning up.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType

import grpc
from durable.process import Child, ProcessError, spawn, wait_serving
from durable.v1 import admin_pb2, admin_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 20
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """A process failed to start, to become ready or to register, or died."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP reached the benchmark: stop everything and exit."""


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` so far, from /proc/<pid>/stat.

    Returns 0.0 for a process that is gone (its time is then lost, not guessed).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (a broker's worker processes), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out += children
        todo += children
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and of its live descendants."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in descendants(pid))


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy (not idle, not waiting on I/O) so far, from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return 0.0
    # cpu user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    # already counted in user and nice.
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid` (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Minimal work between fork and exec: one prctl call through the already-loaded libc.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclasses.dataclass
class Proc:
    """A child process of the benchmark.

    Attributes:
        name: What it is, e.g. `broker`, `trips`.
        role: Whose CPU it counts as: `broker` or `service`.
        address: Its gRPC address (the ingress for the broker).
        popen: The process.
        log: Where its stdout and stderr go.
        stop_signal: What asks it to stop.
    """

    name: str
    role: str
    address: str
    popen: subprocess.Popen[bytes]
    log: Path
    stop_signal: signal.Signals = signal.SIGTERM

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    @property
    def child(self) -> Child:
        """The process as `durable.process` watches it."""
        return Child(self.name, self.popen, self.log)

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last `lines` lines of its log."""
        return self.child.tail(lines)


def broker_supports(flag: str) -> bool:
    """Whether this checkout's `python -m broker --help` lists `flag`."""
    out = subprocess.run(
        [sys.executable, "-m", "broker", "--help"], cwd=ROOT, capture_output=True, check=False
    )
    return flag.encode() in out.stdout


def scrape_metrics(address: str, names: tuple[str, ...]) -> dict[str, float]:
    """The broker's Prometheus counters named in `names`, each summed over its labels.

    Returns `metric:<name>` keys; nothing (an empty dict) if the endpoint does not answer.
    """
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out = dict.fromkeys((f"metric:{n}" for n in names), 0.0)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        name = sample.split("{", 1)[0]
        if name in names:
            out[f"metric:{name}"] += float(value)
    return out


class Cluster:
    """The children of one benchmark run; a context manager that always stops them.

    Args:
        workdir: Holds each child's log and data; must exist.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []
        # Set once the broker serves Prometheus metrics: where, and which counters to read.
        self.metrics_address: str | None = None
        self.metric_names: tuple[str, ...] = ()
        # Processes this class did not start but whose CPU counts (a NATS server): by role.
        self.watched: list[tuple[str, int]] = []

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def spawn(
        self,
        name: str,
        role: str,
        address: str,
        args: list[str],
        *,
        program: list[str] | None = None,
        env: dict[str, str] | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        append: bool = False,
        tether: bool = False,
        cwd: Path | None = None,
    ) -> Proc:
        """Starts `python <args>` (or `<program> <args>`) as child `name`, serving on
        `address`, with `env` added to this process's environment; `stop` sends it
        `stop_signal`. With `append`, a restarted child keeps its previous run's log.
        `cwd` (default this tree) is where `python -m` finds the module to run.

        With `tether`, the child is tied to this process by `broker.cluster.tether` (SIGKILL
        when it dies) instead of by a `preexec_fn`: running Python between fork and exec
        is unsafe once gRPC's threads are busy in this process (a node restarted while
        calls are in flight died of SIGSEGV before its exec).
        """
        log = self.workdir / f"{name}.log"
        full_env = {**os.environ, **(env or {})}
        full_env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)  # tracing would measure the exporter
        argv = [*(program or [sys.executable]), *args]
        if tether:
            argv = [sys.executable, "-m", "broker.cluster.tether", str(os.getpid()), *argv]
        child = spawn(
            name,
            argv,
            log=log,
            append=append,
            cwd=cwd or ROOT,
            env=full_env,
            preexec_fn=None if tether else _die_with_parent,
        )
        proc = Proc(name, role, address, child.popen, log, stop_signal)
        self.procs.append(proc)
        return proc

    def watch(self, role: str, pid: int) -> None:
        """Counts the CPU of process `pid` (started by someone else) as `role`'s."""
        self.watched.append((role, pid))

    def kill(self, proc: Proc) -> None:
        """SIGKILLs `proc` at once (a crash, not a stop), reaps it and forgets it, so that
        `check_alive` no longer fails on it; spawning it again is up to the caller."""
        with contextlib.suppress(ProcessLookupError):
            proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait()
        self.procs.remove(proc)

    def check_alive(self) -> None:
        """Raises `BenchError` (with its log's tail) if any child has exited."""
        try:
            for p in self.procs:
                p.child.check_alive(LOG_TAIL_LINES)
        except ProcessError as e:
            raise BenchError(str(e)) from None

    def wait_ready(self, proc: Proc, address: str | None = None) -> None:
        """Polls `grpc.health.v1.Health/Check` on `address` (default the proc's) until SERVING.

        Fails at once, with the log tail, if any child exits meanwhile.
        """
        others = [p.child for p in self.procs if p is not proc]
        try:
            wait_serving(
                address or proc.address,
                deadline=time.monotonic() + STARTUP_TIMEOUT_S,
                watch=[proc.child, *others],
                poll_timeout=1.0,
                tail_lines=LOG_TAIL_LINES,
            )
        except ProcessError as e:
            raise BenchError(str(e)) from None

    def register(self, admin: str, uris: list[str]) -> None:
        """Registers each endpoint with the broker's admin API."""
        with grpc.insecure_channel(admin) as channel:
            stub = admin_pb2_grpc.AdminStub(channel)
            for uri in uris:
                try:
                    stub.RegisterDeployment(
                        admin_pb2.RegisterDeploymentRequest(uri=uri), timeout=30
                    )
                except grpc.RpcError as e:
                    raise BenchError(
                        f"registering {uri} failed: {e.code().name}: {e.details()}"
                    ) from e

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far: by role, `client` for this process, and `other` for every
        other process on the machine (other load skews the figures; the report shows it)."""
        machine = machine_busy_seconds()
        totals: dict[str, float] = {"client": cpu_seconds(os.getpid())}
        for p in self.procs:
            # The broker's workers are its children: their time is the broker's.
            totals[p.role] = totals.get(p.role, 0.0) + tree_cpu_seconds(p.pid)
        for role, pid in self.watched:
            totals[role] = totals.get(role, 0.0) + tree_cpu_seconds(pid)
        totals["other"] = machine - sum(totals.values())
        return totals

    def probe(self) -> dict[str, float]:
        """`cpu()` plus the broker's counters, when it serves metrics."""
        totals = self.cpu()
        if self.metrics_address is not None:
            totals.update(scrape_metrics(self.metrics_address, self.metric_names))
        return totals

    def reset(self, workdir: Path) -> None:
        """Forgets the stopped processes; the next ones log and keep data in `workdir`."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.procs = []
        self.watched = []
        self.metrics_address = None
        self.metric_names = ()

    def stop(self) -> None:
        """Stops every live child (SIGTERM unless it asked for another signal), newest first,
        then SIGKILL what outlives the timeout.

        Ctrl-C is ignored meanwhile, so a second one cannot leave children behind.
        """
        with _signals_ignored():
            live = [p for p in reversed(self.procs) if p.popen.poll() is None]
            for p in live:
                with contextlib.suppress(ProcessLookupError):
                    p.popen.send_signal(p.stop_signal)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for p in live:
                try:
                    p.popen.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    print(f"{p.name} (pid {p.pid}) ignored SIGTERM; killing it", file=sys.stderr)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
                    p.popen.wait()


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    previous = {
        sig: signal.signal(sig, signal.SIG_IGN)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def install_signal_handlers() -> None:
    """Ctrl-C raises KeyboardInterrupt (even when started with SIGINT ignored, as background
    jobs of scripts are); SIGTERM and SIGHUP raise `Interrupted`."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
