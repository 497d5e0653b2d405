"""Faults for the verification runner: a seeded schedule, the thread that injects it, and a
TCP proxy between the broker and the service whose connections can be broken.

Kinds of fault:
- `broker`: SIGKILL the broker, leave it down a moment, start it on the same data dir.
- `service`: SIGKILL the service process, leave it down a moment, start it again.
- `stream`: wait until an attempt is running, then either reset every connection between
  the broker and the service at the proxy (both processes live on; the streams break) or
  SIGKILL the service in the middle of that attempt.
- `worker` (with `--workers` only): SIGKILL one worker process (the supervisor restarts it).
- `node` (with `--cluster` only): SIGKILL one broker node, leave it down a moment (longer
  than a lease, or not), start it again on its data dir. `broker` kills every node.
- `nats` (with `--cluster` only): SIGKILL one NATS server, leave it down a moment, start it
  again and wait until JetStream is whole: at most one of the three servers (a minority)
  is ever down.
- `pause` (with `--cluster` only): SIGSTOP one broker node, one that leads a partition at
  that moment when any does (the cluster status says who leads what), for a drawn time of
  up to 5 s, then SIGCONT it. A short pause ends before its lease's 2 s TTL runs out (it
  goes on leading); a long one lets a follower take the lease over, and the node that
  wakes must find its appends fenced and step down, with nothing applied twice. A paused
  node is always resumed: after its time, when the run stops or fails (the fault under
  way completes), and before anything kills or stops it.

A fault starts once the previous one is over, unless `--overlap`: then each fault starts
at its time in a thread of its own while earlier ones may still be in effect, within an
invariant (`tests.chaos.runner_overlap`): never more than one NATS server down (a
majority stays), never every broker node killed or paused at once (nor one node hit by
two faults), the whole broker side and the service each hit by one fault at a time. A
fault that would break it waits until enough of the others are over. The plan (times,
kinds, downtimes, choices) is the seed's either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import select
import socket
import struct
import threading
import time
from collections import Counter

from durable.v1 import admin_pb2

from broker.replication.engine import LEASE_TTL_S
from tests.chaos.runner_cluster import ChaosBroker, ChaosCluster
from tests.chaos.runner_nodes import ChaosNodes
from tests.chaos.runner_overlap import Claim, InEffect, Need
from tests.support import Status

KINDS = ("broker", "service", "stream")
# With --workers only: SIGKILL one worker process (the supervisor restarts it).
WORKER = "worker"
# With --cluster only: SIGKILL one node / one NATS server, then start it again; SIGSTOP
# one node (a leader when there is one), then SIGCONT it.
NODE = "node"
NATS = "nats"
PAUSE = "pause"
CLUSTER_KINDS = (NODE, NATS, PAUSE, "service", "stream")
# Which process a fault hits is drawn from this many (then taken modulo their number).
_CHOICES = 1024
# The longest a process stays down, by kind: a node or a NATS server sometimes past a
# lease's TTL (a follower takes over) and sometimes not (it restarts still leading); a
# paused node from well within its lease to well past it.
MAX_DOWNTIME_S = {NODE: 4.0, NATS: 4.0, PAUSE: 5.0}
DEFAULT_MAX_DOWNTIME_S = 1.5
# How long a stream fault waits for a running attempt before it breaks the streams anyway.
RUNNING_WAIT_S = 3.0
# How often the processes are checked for exits the runner did not cause.
WATCH_INTERVAL_S = 0.25


@dataclasses.dataclass(frozen=True)
class Fault:
    """One planned fault: `at` seconds into the run, down for `downtime` seconds."""

    at: float
    kind: str
    downtime: float
    # For stream faults: "reset" (break the connections) or "kill" (SIGKILL the service).
    variant: str = ""

    @property
    def label(self) -> str:
        """The kind, and the variant of a stream fault: `stream/reset`."""
        return f"{self.kind}/{self.variant}" if self.kind == "stream" else self.kind


def schedule(seed: int, kinds: tuple[str, ...], duration: float, interval: float) -> list[Fault]:
    """Faults at seeded random moments of `[0, duration)`, `interval` s apart on average."""
    if not kinds or interval <= 0:
        return []
    rng = random.Random(f"{seed}-faults")
    faults: list[Fault] = []
    at = rng.uniform(0.3, 1.0) * interval
    while at < duration:
        kind = rng.choice(kinds)
        variant = (
            rng.choice(["reset", "kill"])
            if kind == "stream"
            # Which worker, node or NATS server (modulo their number; a paused node
            # modulo the number of those leading then).
            else str(rng.randrange(_CHOICES))
            if kind in (WORKER, NODE, NATS, PAUSE)
            else ""
        )
        downtime = rng.uniform(0.0, MAX_DOWNTIME_S.get(kind, DEFAULT_MAX_DOWNTIME_S))
        faults.append(Fault(at=at, kind=kind, downtime=downtime, variant=variant))
        at += rng.uniform(0.5, 1.5) * interval
    return faults


class FaultInjector:
    """Runs a fault schedule against a cluster in a background thread, and watches the
    processes: one that exits without being killed by the schedule is recorded in
    `unexpected_exits` (a failure of the run) and started again.

    Args:
        cluster: The broker and the chaos service.
        proxy: The proxy the broker reaches the service through (needed for stream resets).
        faults: The schedule, in order of `at`.
        overlap: A fault may start while earlier ones are still in effect (each in a
            thread of its own), within the rules of `tests.chaos.runner_overlap`; without
            it a fault starts once the previous one is over.
    """

    def __init__(
        self,
        cluster: ChaosCluster,
        proxy: TcpProxy | None,
        faults: list[Fault],
        overlap: bool = False,
    ) -> None:
        self.cluster = cluster
        self.proxy = proxy
        self.faults = faults
        self.overlap = overlap
        self.injected: Counter[str] = Counter()
        # Faults that started while others were in effect.
        self.overlapping = 0
        self.log: list[str] = []
        self.error: BaseException | None = None
        self.unexpected_exits: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-injector", daemon=True)
        self._start = 0.0
        nodes = len(cluster.nodes.nodes) if isinstance(cluster, ChaosNodes) else 0
        self._in_effect = InEffect(nodes)
        # Guards `_in_effect`, the log and the counts; notified when a fault is over.
        self._changed = threading.Condition()
        self._running: list[threading.Thread] = []

    def start(self) -> FaultInjector:
        """Starts injecting; `at` counts from now."""
        self._start = time.monotonic()
        self._thread.start()
        return self

    def stop(self, watch: bool = True) -> None:
        """Stops injecting and watching (the faults under way complete: their processes
        are restarted, a paused node resumed), then (with `watch`) checks the processes
        one last time."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for thread in self._running:
            thread.join()
        self.log.sort()  # by start time (overlapping faults end out of order)
        if watch:
            self.watch()

    def watch(self) -> None:
        """Records and restarts a process that exited on its own."""
        elapsed = time.monotonic() - self._start
        for exited in self.cluster.restart_exited():
            self.unexpected_exits.append(f"{elapsed:6.1f}s {exited}")

    def _run(self) -> None:
        try:
            for fault in self.faults:
                if self._sleep_watching(self._start + fault.at):
                    return
                claim = self._admit(fault)
                if claim is None:
                    return  # told to stop while it waited
                if not self.overlap:
                    self._inject_claimed(fault, claim)
                    continue
                thread = threading.Thread(
                    target=self._inject_claimed, args=(fault, claim), name=f"fault-{fault.label}"
                )
                self._running = [t for t in self._running if t.is_alive()] + [thread]
                thread.start()
            self._sleep_watching(float("inf"))
        except BaseException as e:  # reported by the runner as a failure of the run
            self.error = e

    def _sleep_watching(self, until: float) -> bool:
        """Watches the processes until `until` (monotonic); True when told to stop."""
        while not self._stop.wait(min(WATCH_INTERVAL_S, max(0.0, until - time.monotonic()))):
            # A process a fault under way killed is not back yet: watch between faults.
            # (Only this thread admits faults, so none starts while it watches.)
            with self._changed:
                quiet = not self._in_effect.claims
            if quiet:
                self.watch()
            if time.monotonic() >= until:
                return False
        return True

    def _admit(self, fault: Fault) -> Claim | None:
        """Waits until `fault` may start alongside the faults in effect (at once without
        `--overlap`: none is); its claim, or None when told to stop meanwhile."""
        while not self._stop.is_set():
            need = self._need(fault)
            with self._changed:
                claim = self._in_effect.admit(need)
                if claim is not None:
                    return claim
                self._changed.wait(WATCH_INTERVAL_S)
        return None

    def _need(self, fault: Fault) -> Need:
        """What `fault` takes down; for a node fault, which nodes it may pick from."""
        choice = int(fault.variant) if fault.variant.isdigit() else 0
        if fault.kind == NATS:
            return Need(nats=True)
        if fault.kind in ("service", "stream"):
            return Need(service=True)
        if fault.kind in ("broker", WORKER):
            return Need(broker=True)
        if fault.kind not in (NODE, PAUSE) or not isinstance(self.cluster, ChaosNodes):
            return Need()
        everyone = tuple(range(len(self.cluster.nodes.nodes)))
        if fault.kind == NODE:
            return Need(nodes=everyone, choice=choice)
        # A pause prefers a node leading partitions now; it is asked every time round, as
        # leaders move while the fault waits.
        alive = tuple(i for i in everyone if self.cluster.nodes.nodes[i].alive)
        leaders = tuple(i for i in sorted(self.cluster.leading()) if i in alive)
        return Need(nodes=leaders or alive, fallback=alive, choice=choice)

    def _inject_claimed(self, fault: Fault, claim: Claim) -> None:
        try:
            self._inject(fault, claim)
        except BaseException as e:  # the first failure is reported by the runner
            if self.error is None:
                self.error = e
            if not self.overlap:
                raise
        finally:
            with self._changed:
                self._in_effect.release(claim)
                self._changed.notify_all()

    def _inject(self, fault: Fault, claim: Claim) -> None:
        elapsed = time.monotonic() - self._start
        if fault.kind == "broker":
            self.cluster.kill_broker()
            time.sleep(fault.downtime)  # the broker stays down this long (seeded)
            self.cluster.start_broker()
            note = f"down {fault.downtime:.2f}s"
        elif fault.kind == "service":
            self._kill_service(fault.downtime)
            note = f"down {fault.downtime:.2f}s"
        elif fault.kind == WORKER:
            # The supervisor restarts it; its partitions resume as after a crash.
            assert isinstance(self.cluster, ChaosBroker), "worker faults need --workers"
            note = self.cluster.kill_worker(int(fault.variant))
        elif fault.kind in (NODE, NATS, PAUSE):
            assert isinstance(self.cluster, ChaosNodes), f"{fault.kind} faults need --cluster"
            note = self._cluster_fault(self.cluster, fault, claim.node)
        elif fault.kind == "stream":
            running = self._wait_running()
            if fault.variant == "reset" and self.proxy is not None:
                note = f"{self.proxy.reset()} connections reset during {running}"
            else:
                self._kill_service(fault.downtime)
                note = f"service killed during {running}"
        else:
            raise ValueError(f"unknown fault kind {fault.kind!r}")
        if claim.alongside:
            note += f" (started with {claim.alongside} other fault(s) in effect)"
        with self._changed:
            self.log.append(f"{elapsed:6.1f}s {fault.label}: {note}")
            self.injected[fault.label] += 1
            self.overlapping += claim.alongside > 0

    def _cluster_fault(self, cluster: ChaosNodes, fault: Fault, node: int | None) -> str:
        """Kills the claimed node, or one NATS server, and starts it again after
        `fault.downtime`; or pauses the claimed node for that long."""
        if fault.kind == PAUSE:
            return self._pause(cluster, fault, node)
        if fault.kind == NODE:
            assert node is not None, "a node fault claims a node"
            cluster.kill_node(node)
            time.sleep(fault.downtime)  # the node stays down this long (seeded)
            cluster.start_node(node)
            return f"{cluster.node_name(node)} down {fault.downtime:.2f}s"
        i = int(fault.variant) % cluster.nats.size
        cluster.kill_nats(i)
        time.sleep(fault.downtime)  # the server stays down this long (seeded)
        cluster.restart_nats(i)
        return f"{cluster.nats.name(i)} down {fault.downtime:.2f}s"

    def _pause(self, cluster: ChaosNodes, fault: Fault, node: int | None) -> str:
        """SIGSTOPs the claimed node (one leading partitions when it was claimed, if any
        did), SIGCONTs it after `fault.downtime`; says who led what before and after."""
        if node is None:
            return "no node running to pause"
        before = cluster.leading()
        cluster.pause_node(node)
        try:
            time.sleep(fault.downtime)  # the node stays paused this long (seeded)
        finally:
            cluster.resume_node(node)
        after = cluster.leading(ask_not=node)
        lease = "past" if fault.downtime > LEASE_TTL_S else "within"
        return (
            f"{cluster.node_name(node)} paused {fault.downtime:.2f}s ({lease} the "
            f"{LEASE_TTL_S:g} s lease), leading {_partitions(before.get(node))} before, "
            f"{_partitions(after.get(node))} just after (as another node sees it)"
        )

    def _kill_service(self, downtime: float) -> None:
        self.cluster.kill_service()
        time.sleep(downtime)  # the service stays down this long (seeded)
        self.cluster.start_service()

    def _wait_running(self) -> str:
        """The id of an invocation with an attempt in flight ("nothing running" if none
        showed up within `RUNNING_WAIT_S`)."""
        deadline = time.monotonic() + RUNNING_WAIT_S
        request = admin_pb2.ListInvocationsRequest(status=Status.RUNNING, limit=1)
        while time.monotonic() < deadline and not self._stop.is_set():
            with contextlib.suppress(Exception):
                running = self.cluster.admin.ListInvocations(request, timeout=2).invocations
                if running:
                    return str(running[0].id)
            time.sleep(0.05)  # polling for a running attempt, with a deadline
        return "nothing running"


def _partitions(ids: list[int] | None) -> str:
    """`partitions 0,3`, or `no partition`."""
    return f"partitions {','.join(map(str, sorted(ids)))}" if ids else "no partition"


class TcpProxy:
    """Forwards connections on `127.0.0.1:<port>` to `target`; `reset()` breaks them all.

    Args:
        target: host:port of the service endpoint.
    """

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="chaos-proxy", daemon=True)

    @property
    def address(self) -> str:
        """host:port the broker should use for the service."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        """Starts accepting connections."""
        self._thread.start()
        return self

    def reset(self) -> int:
        """Aborts every open connection (RST to both sides); returns how many there were."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.close(abort=True)
        return len(pairs)

    def close(self) -> None:
        """Stops accepting and aborts every connection."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.reset()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                readable, _, _ = select.select([self._listener], [], [], 0.1)
                if not readable:
                    continue
                client, _ = self._listener.accept()
            except (OSError, ValueError):
                return  # closed
            try:
                upstream = socket.create_connection(self.target, timeout=1.0)
            except OSError:
                _abort(client)  # the service is down: the broker sees a broken connection
                continue
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs = [p for p in self._pairs if not p.closed] + [pair]
            pair.start()


class _Pair:
    """Two connected sockets, pumped both ways by two threads."""

    def __init__(self, downstream: socket.socket, upstream: socket.socket) -> None:
        self.sockets = (downstream, upstream)
        self.closed = False
        self._lock = threading.Lock()

    def start(self) -> None:
        for source, sink in (self.sockets, self.sockets[::-1]):
            source.settimeout(None)
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self.closed:
                readable, _, _ = select.select([source], [], [], 0.1)
                if not readable:
                    continue
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except (OSError, ValueError):
            pass  # closed under us, or reset by a peer
        self.close(abort=False)

    def close(self, abort: bool) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        for sock in self.sockets:
            if abort:
                _abort(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()


def _abort(sock: socket.socket) -> None:
    """Closes with SO_LINGER 0: the peer gets a RST, not an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
