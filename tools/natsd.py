"""Local NATS servers with JetStream, for tests and `make cluster`.

    with NatsCluster(tmp / "nats") as nats:     # three servers, clustered, JetStream on
        nats.wait_ready(timeout=20)
        client = await nats_py.connect(servers=nats.urls)
        nats.kill(1)                            # SIGKILL one server
        nats.restart(1)                         # same ports, same store

Each server listens on 127.0.0.1 only, on free ports chosen once (a restarted server
comes back where it was, with its JetStream store), and writes its log next to its
config under `base_dir`. `size=1` is one server with JetStream and no cluster block;
`jetstream=False` leaves JetStream off (a plain NATS server, for the bad-input tests).

Every server is started through `broker.cluster.tether`, in a process group of its own:
the kernel SIGKILLs it should the process that started it die without stopping it (a
test killed by its timeout, a demo killed by SIGKILL), so no server outlives its owner
holding ports and store. The tether fires when the *thread* that started the server
exits: start servers from the main thread, or from a thread that lives as long as they do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from durable.process import Child, free_ports, spawn

__all__ = ["NatsCluster", "NatsError", "ServerPorts", "find_binary"]

STOP_TIMEOUT_S = 10.0
_POLL_INTERVAL_S = 0.05
_HTTP_TIMEOUT_S = 1.0
# Where Debian's package (`make nats`) puts it; /usr/sbin is not on every user's PATH.
_DEBIAN_BINARY = Path("/usr/sbin/nats-server")


class NatsError(RuntimeError):
    """A server could not start, died, or JetStream was not ready in time."""


def find_binary() -> Path:
    """The `nats-server` to run: the one on PATH, else Debian's.

    Raises:
        NatsError: None is installed (`make nats` installs it).
    """
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    if os.access(_DEBIAN_BINARY, os.X_OK):
        return _DEBIAN_BINARY
    raise NatsError("nats-server is not installed: run `make nats` (apt-get install nats-server)")


@dataclasses.dataclass(frozen=True)
class ServerPorts:
    """The ports of one server: clients, routes between servers, HTTP monitoring."""

    client: int
    route: int
    http: int


class NatsCluster:
    """`size` NATS servers with JetStream, clustered when more than one.

    Args:
        base_dir: Holds `nN/` per server: its config, log and JetStream store.
        size: How many servers (1: a single server, no cluster block).
        max_payload: The largest message a server accepts, in bytes (NATS's default is
            1 MiB; a partition's write batch may be larger).
        port_source: Picks one free port per call (tests pass `tests.support.free_port`,
            so their other processes never get these ports); default: the kernel's.
        cluster_name: The cluster block's `name`.
        ports: Each server's ports, instead of free ones (`make cluster`'s fixed ports).
        jetstream: Whether the servers run JetStream (off: plain NATS, which a broker
            node must refuse).
    """

    def __init__(
        self,
        base_dir: Path,
        size: int = 3,
        max_payload: int = 8 * 1024 * 1024,
        port_source: Callable[[], int] | None = None,
        cluster_name: str = "durable",
        ports: Sequence[ServerPorts] | None = None,
        jetstream: bool = True,
    ) -> None:
        if size < 1:
            raise ValueError(f"a NATS cluster needs at least one server, not {size}")
        if ports is not None and len(ports) != size:
            raise ValueError(f"{len(ports)} servers' ports given for {size} servers")
        self.base_dir = base_dir
        self.size = size
        self.max_payload = max_payload
        self.cluster_name = cluster_name
        self.jetstream = jetstream
        if ports is not None:
            self.ports = list(ports)
        else:
            picked = (
                [port_source() for _ in range(3 * size)] if port_source else free_ports(3 * size)
            )
            self.ports = [ServerPorts(*picked[3 * i : 3 * i + 3]) for i in range(size)]
        self._children: list[Child | None] = [None] * size

    # -- addresses and files --------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """Every server's client URL, `nats://127.0.0.1:P`."""
        return [f"nats://127.0.0.1:{p.client}" for p in self.ports]

    def name(self, i: int) -> str:
        """Server `i`'s `server_name` (`n1`, `n2`, ...; JetStream clustering needs one)."""
        return f"n{i + 1}"

    def server_dir(self, i: int) -> Path:
        """Server `i`'s folder: `nats.conf`, `nats.log` and `jetstream/`."""
        return self.base_dir / self.name(i)

    def log_path(self, i: int) -> Path:
        """Server `i`'s log (appended to across restarts)."""
        return self.server_dir(i) / "nats.log"

    def config(self, i: int) -> str:
        """Server `i`'s configuration file, in NATS's config syntax."""
        ports = self.ports[i]
        store = self.server_dir(i) / "jetstream"
        lines = [
            f"server_name: {self.name(i)}",
            f"listen: 127.0.0.1:{ports.client}",
            f"http: 127.0.0.1:{ports.http}",
            f"max_payload: {self.max_payload}",
        ]
        if self.jetstream:
            lines.append(f"jetstream {{\n  store_dir: {json.dumps(str(store))}\n}}")
        if self.size > 1:
            # Every server lists every route, its own included (NATS skips that one): one
            # list for all, and any server may start first.
            routes = "\n".join(f"    nats-route://127.0.0.1:{p.route}" for p in self.ports)
            lines.append(
                f"cluster {{\n  name: {self.cluster_name}\n"
                f"  listen: 127.0.0.1:{ports.route}\n  routes: [\n{routes}\n  ]\n}}"
            )
        return "\n".join(lines) + "\n"

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> NatsCluster:
        """Writes every config and starts every server not running (no wait: `wait_ready`)."""
        binary = find_binary()
        for i in range(self.size):
            if not self.alive(i):
                self._start(i, binary)
        return self

    def _start(self, i: int, binary: Path) -> None:
        folder = self.server_dir(i)
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "nats.conf"
        conf.write_text(self.config(i), encoding="utf-8")
        tether = [sys.executable, "-m", "broker.cluster.tether", str(os.getpid())]
        self._children[i] = spawn(
            f"nats {self.name(i)}",
            [*tether, str(binary), "-c", str(conf)],
            log=self.log_path(i),
            append=True,
        )

    def alive(self, i: int) -> bool:
        """Whether server `i` is running."""
        child = self._children[i]
        return child is not None and child.popen.poll() is None

    def pid(self, i: int) -> int | None:
        """Server `i`'s process id, while it runs."""
        child = self._children[i]
        return child.pid if child is not None and self.alive(i) else None

    def kill(self, i: int) -> None:
        """SIGKILLs server `i` (no shutdown at all) and reaps it."""
        child = self._children[i]
        if child is None:
            return
        if child.popen.poll() is None:
            child.popen.send_signal(signal.SIGKILL)
        child.popen.wait(timeout=STOP_TIMEOUT_S)

    def restart(self, i: int) -> None:
        """Starts server `i` again on its ports with its store (stopping it first if it
        runs). Does not wait: `wait_ready`."""
        if self.alive(i):
            self._terminate([i])
        self._start(i, find_binary())

    def stop(self) -> None:
        """SIGTERM every running server, then SIGKILL any still running after
        `STOP_TIMEOUT_S` (the whole bound, not per server)."""
        self._terminate(list(range(self.size)))

    def _terminate(self, indexes: list[int]) -> None:
        running = [c for i in indexes if (c := self._children[i]) and c.popen.poll() is None]
        for child in running:
            child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in running:
            try:
                child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.popen.kill()
                child.popen.wait(timeout=STOP_TIMEOUT_S)

    def check_alive(self) -> None:
        """Raises `NatsError`, with its log tail, if a started server has exited."""
        for child in self._children:
            if child is not None and child.popen.poll() is not None:
                raise NatsError(
                    f"{child.name} exited with code {child.popen.returncode}\n" + child.log_block()
                )

    def __enter__(self) -> NatsCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- readiness ------------------------------------------------------------------

    def _monitor(self, i: int, path: str) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of server `i`'s monitoring endpoint `path`."""
        url = f"http://127.0.0.1:{self.ports[i].http}{path}"
        try:
            with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT_S) as response:
                return int(response.status), json.loads(response.read())
        except urllib.error.HTTPError as e:
            # /healthz answers 503 with a JSON reason while JetStream is not ready.
            with contextlib.suppress(ValueError):
                return e.code, json.loads(e.read())
            return e.code, {}

    def not_ready(self, indexes: list[int] | None = None) -> str | None:
        """Why JetStream is not yet usable on the servers `indexes` (default: all), or None.

        Usable: each server's `/healthz` is ok (JetStream on and current with its meta
        leader) and, clustered, each knows the same meta leader, which sees every other
        server as a current peer (so an R=size stream can be placed at once). Without
        JetStream: each server's `/healthz` is ok.
        """
        wanted = list(range(self.size)) if indexes is None else indexes
        leaders = set()
        for i in wanted:
            child = self._children[i]
            if child is None or child.popen.poll() is not None:
                return f"{self.name(i)} is not running"
            try:
                status, health = self._monitor(i, "/healthz")
                if status != 200:
                    return f"{self.name(i)} /healthz: {status} {health.get('error', health)}"
                _, jsz = self._monitor(i, "/jsz")
            except OSError as e:
                return f"{self.name(i)} monitoring: {e}"
            if self.size == 1 or not self.jetstream:
                continue  # no meta group to agree on
            meta = jsz.get("meta_cluster") or {}
            leader = meta.get("leader")
            if not leader:
                return f"{self.name(i)} knows no JetStream meta leader yet"
            leaders.add(leader)
            replicas = meta.get("replicas")
            if replicas is not None:  # only the leader lists its peers
                current = [r for r in replicas if r.get("current") and not r.get("offline")]
                if len(current) < self.size - 1:
                    return f"meta leader {leader} sees {len(current)} current peers"
        if len(leaders) > 1:
            return f"servers disagree on the meta leader: {sorted(leaders)}"
        return None

    def wait_ready(self, timeout: float = 30.0, indexes: list[int] | None = None) -> None:
        """Polls the monitoring endpoints until JetStream is usable (`not_ready`).

        Raises:
            NatsError: A started server died (with its log tail), or not ready within
                `timeout`.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            reason = self.not_ready(indexes)
            if reason is None:
                return
            if time.monotonic() >= deadline:
                raise NatsError(f"JetStream not ready after {timeout:.0f} s: {reason}")
            time.sleep(_POLL_INTERVAL_S)  # polling interval; the deadline decides

    def log_tails(self, lines: int = 40) -> str:
        """Every started server's log tail, for a failure's report."""
        return "\n".join(c.log_block(lines) for c in self._children if c is not None)
