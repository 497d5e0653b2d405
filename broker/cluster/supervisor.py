"""`python -m broker --workers N`: starts the workers, restarts any that dies, and
serves the public admin API (and /metrics and the console) in front of them.

Start-up: the data dir's partition count is recorded (`layout.create`), every
partition's private ports are picked (127.0.0.1, free now), the public ingress gets a
concrete port (every worker binds it, SO_REUSEPORT), and the workers start with the
same directory (`BROKER_CLUSTER`) and their number (`BROKER_CLUSTER_WORKER`). Once every
partition's admin API reports SERVING the front serves `--admin` and the broker logs
its ready line. A worker that exits is started again, same ports and environment, after
a backoff that doubles while it keeps dying young. SIGTERM or SIGINT stops the front,
SIGTERMs every worker and SIGKILLs those still running after `STOP_TIMEOUT_S`.
Workers die with the supervisor (see `tether`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from durable import tracing, wire
from durable.process import Child, spawn
from durable.v1 import admin_pb2

from ..config import Settings
from . import launch, layout, repair, scrape
from .directory import ENV, WORKER_ENV, Directory
from .forward import Partitions
from .front import AdminFront, FrontServer

if TYPE_CHECKING:
    from . import console

log = logging.getLogger("broker")

# Which module runs a worker; tests may point it at a stand-in.
WORKER_MODULE_ENV = "BROKER_CLUSTER_WORKER_MODULE"
WORKER_MODULE = "broker.cluster.worker"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 8.0
RESTART_INITIAL_S = 0.1
RESTART_MAX_S = 5.0
# A worker that ran this long before it exited restarts without delay growth.
STABLE_S = 10.0
_WATCH_INTERVAL_S = 0.1  # how often exits are looked for, not a synchronisation


def restart_delay(young_exits: int) -> float:
    """Seconds before a worker is started again after `young_exits` exits in a row, each
    before it had run `STABLE_S` (0: it had run long enough): doubling, bounded."""
    return min(RESTART_INITIAL_S * 2.0 ** max(young_exits - 1, 0), RESTART_MAX_S)


class StartFailed(Exception):
    """The workers did not all come up; the message says which and why."""


@dataclasses.dataclass
class Worker:
    """One worker process, across its restarts."""

    index: int
    partitions: list[int]
    child: Child | None = None
    started_at: float = 0.0
    restarts: int = 0
    # Exits in a row of a worker that had not run `STABLE_S`: the backoff's exponent.
    young_exits: int = 0
    restart_at: float | None = None

    @property
    def alive(self) -> bool:
        """Whether its process is running."""
        return self.child is not None and self.child.popen.poll() is None

    def node(self) -> admin_pb2.ClusterNode:
        """As ClusterStatus shows it."""
        return admin_pb2.ClusterNode(
            name=f"worker-{self.index}",
            index=self.index,
            pid=self.child.pid if self.alive and self.child else 0,
            alive=self.alive,
            restarts=self.restarts,
            partitions=self.partitions,
        )


class Supervisor:
    """The worker processes.

    Args:
        settings: The broker's settings.
        argv: The broker's own flags (the workers get them, minus the supervisor's).
        directory: The partitions' addresses.
        ingress: The public ingress with its concrete port.
    """

    def __init__(self, settings: Settings, argv: list[str], directory: Directory, ingress: str):
        self.directory = directory
        module = os.environ.get(WORKER_MODULE_ENV) or WORKER_MODULE
        self._command = [
            sys.executable,
            "-m",
            "broker.cluster.tether",
            str(os.getpid()),
            sys.executable,
            "-m",
            module,
            *launch.worker_argv(argv, ingress),
        ]
        env = {k: v for k, v in os.environ.items() if k not in launch.SUPERVISOR_ENV}
        env[ENV] = directory.to_json()
        self._env = env
        self.workers = [Worker(i, directory.owned_by(i)) for i in range(directory.workers)]
        self.stopping = False

    def _spawn(self, worker: Worker) -> None:
        worker.child = spawn(
            f"worker-{worker.index}",
            self._command,
            env={**self._env, WORKER_ENV: str(worker.index)},
        )
        worker.started_at = time.monotonic()
        worker.restart_at = None
        log.info(
            "worker %d (pid %d) started: partitions %s",
            worker.index,
            worker.child.pid,
            ", ".join(map(str, worker.partitions)),
        )

    def start(self) -> None:
        """Starts every worker."""
        for worker in self.workers:
            self._spawn(worker)

    def nodes(self) -> list[admin_pb2.ClusterNode]:
        """Every worker as ClusterStatus shows it."""
        return [w.node() for w in self.workers]

    async def wait_ready(self, partitions: Partitions, timeout: float = READY_TIMEOUT_S) -> None:
        """Returns once every partition's admin API reports SERVING.

        Raises:
            StartFailed: a worker exited first, or the deadline passed.
        """
        deadline = time.monotonic() + timeout
        waiting = set(range(partitions.count))
        while waiting:
            for worker in self.workers:
                if not worker.alive and worker.child is not None:
                    code = worker.child.popen.returncode
                    raise StartFailed(
                        f"worker {worker.index} exited with code {code} while starting"
                    )
            if time.monotonic() > deadline:
                raise StartFailed(
                    f"partitions {sorted(waiting)} were not serving after {timeout:.0f} s"
                )
            answers = await asyncio.gather(*(partitions.serving(p) for p in sorted(waiting)))
            waiting -= {p for p, ok in zip(sorted(waiting), answers, strict=True) if ok}
            if waiting:
                await asyncio.sleep(_WATCH_INTERVAL_S)  # polling with the deadline above

    async def watch(self) -> None:
        """Restarts workers that exit, until `stop`."""
        while not self.stopping:
            now = time.monotonic()
            for worker in self.workers:
                if worker.child is None or worker.alive:
                    continue
                if worker.restart_at is None:
                    self._schedule(worker, now)
                elif now >= worker.restart_at:
                    worker.restarts += 1
                    self._spawn(worker)
            await asyncio.sleep(_WATCH_INTERVAL_S)

    def _schedule(self, worker: Worker, now: float) -> None:
        assert worker.child is not None
        young = now - worker.started_at < STABLE_S
        worker.young_exits = worker.young_exits + 1 if young else 0
        delay = restart_delay(worker.young_exits)
        worker.restart_at = now + delay
        log.warning(
            "worker %d (pid %d) exited with code %s; restarting it in %.1f s",
            worker.index,
            worker.child.pid,
            worker.child.popen.returncode,
            delay,
        )

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to every worker; SIGKILL to those still running after `timeout`."""
        self.stopping = True
        running = [w.child for w in self.workers if w.alive and w.child is not None]
        for child in running:
            child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(c.popen.poll() is None for c in running) and time.monotonic() < deadline:
            await asyncio.sleep(_WATCH_INTERVAL_S)  # polling with the deadline above
        for child in running:
            if child.popen.poll() is None:
                log.error("worker %s ignored SIGTERM for %.0f s: killing it", child.name, timeout)
                child.popen.kill()
                child.popen.wait()


async def _run(settings: Settings, argv: list[str], partitions: int) -> int:
    assert settings.workers is not None and settings.data_dir is not None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    layout.create(settings.data_dir, partitions)
    ingress = launch.resolve_ingress(settings.ingress)
    own = [ingress, settings.admin, settings.metrics or "", settings.console or ""]
    directory = launch.plan(
        settings.workers,
        partitions,
        metrics=bool(settings.metrics),
        avoid=[launch.split_address(a)[1] for a in own if a],
    )
    supervisor = Supervisor(settings, argv, directory, ingress)
    clients = Partitions(directory)
    routes = AdminFront(clients, supervisor.nodes)
    front = FrontServer(settings, routes)
    metrics: asyncio.Server | None = None
    web: console.FrontConsole | None = None
    supervisor.start()
    try:
        ready = asyncio.create_task(supervisor.wait_ready(clients))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait((ready, stopped), return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            return 0
        stopped.cancel()
        ready.result()
        admin_port = await front.start(settings.admin)
        if settings.metrics:
            metrics = await scrape.serve(directory, settings.metrics)
        if settings.console:
            # Imported only here: the console (aiohttp) is off by default.
            from . import console

            web = await console.start(settings, routes)
        log.info(
            "broker ready: ingress 127.0.0.1:%d, admin 127.0.0.1:%d, data %s, %d workers, "
            "%d partitions",
            launch.split_address(ingress)[1],
            admin_port,
            settings.data_dir,
            settings.workers,
            partitions,
        )
        watcher = asyncio.create_task(supervisor.watch())
        token = settings.admin_token
        credentials = (("authorization", f"Bearer {token}"),) if token else ()
        repairer = asyncio.create_task(repair.run(clients, routes.changes, credentials))
        await stop.wait()
        log.info("shutting down")
        watcher.cancel()
        repairer.cancel()
        return 0
    finally:
        # Each step whatever the one before did: the workers above all must be told to
        # stop (SIGTERM, with its grace for running attempts), not left to be killed.
        if web is not None:
            await _quietly(web.stop(), "the console")
        if metrics is not None:
            metrics.close()
        await _quietly(front.stop(), "the admin front")
        await supervisor.stop()


async def _quietly(stopping: Awaitable[None], what: str) -> None:
    try:
        await stopping
    except Exception:
        log.exception("stopping %s failed", what)


def main(settings: Settings, argv: list[str], partitions: int) -> int:
    """Runs the supervisor until SIGTERM or SIGINT; returns the exit code."""
    tracing.configure("broker")
    try:
        return wire.run(_run(settings, argv, partitions))
    except Exception as e:
        log.critical("broker failed: %s", e)
        return 1
    finally:
        tracing.shutdown()
