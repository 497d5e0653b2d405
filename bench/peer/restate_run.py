"""Restate's side: its server and the benchmark's Restate services, started, readied and
registered, and the scenarios' calls over HTTP to its ingress.

Restate listens on its default ports (ingress 8080, admin 9070, node and metrics 5122):
the comparison runs in a network namespace of its own, where they are free.
"""

from __future__ import annotations

import base64
import itertools
import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from durable.process import free_ports

from bench.load import BadResponse, Call
from bench.peer.install import Peer
from bench.procs import STARTUP_TIMEOUT_S, BenchError, Cluster, Proc
from bench.run import keyed_key

HOST = "127.0.0.1"
INGRESS_PORT, ADMIN_PORT, NODE_PORT = 8080, 9070, 5122
FSYNC_METRIC = "restate_rocksdb_wal_synced_total"
POLL_S = 0.1
HERE = Path(__file__).resolve().parent

# Loopback only; telemetry off; durability at Restate's defaults (its metrics count the
# RocksDB WAL syncs, which the output shows per call).
SERVER_CONFIG = """\
node-name = "peer"
base-dir = "{data}"
bind-ip = "127.0.0.1"
advertised-host = "127.0.0.1"
listen-mode = "tcp"
disable-telemetry = true
log-filter = "warn"
log-disable-ansi-codes = true
"""
# As the SDK's own hypercorn config: Restate multiplexes invocations over a few long-lived
# HTTP/2 connections, so no caps on streams or requests. One process (`workers = 0`: no
# supervisor), on uvloop like our services.
SERVICE_CONFIG = """\
bind = "{bind}"
workers = 0
worker_class = "uvloop"
h2_max_concurrent_streams = 2147483647
keep_alive_max_requests = 2147483647
keep_alive_timeout = 2147483647
"""
SETTINGS = (
    "a single node, durability at its defaults (its RocksDB WAL syncs: fsyncs/call below); "
    "telemetry off; services on hypercorn, 1 process, uvloop, HTTP/2 to the server; "
    "load over HTTP/1.1 keep-alive (aiohttp), JSON bodies"
)


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def _wait(what: str, ready: Callable[[], bool], cluster: Cluster) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not ready():
        cluster.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not ready after {STARTUP_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def _register(service: str) -> None:
    body = json.dumps({"uri": f"http://{service}"}).encode()
    request = urllib.request.Request(
        f"http://{HOST}:{ADMIN_PORT}/deployments",
        data=body,
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            if response.status in (200, 201):
                return
            raise BenchError(f"registering {service} with Restate: HTTP {response.status}")
    except urllib.error.HTTPError as e:
        raise BenchError(f"registering {service} with Restate: HTTP {e.code}: {e.read()!r}") from e
    except OSError as e:
        raise BenchError(f"registering {service} with Restate: {e}") from e


def start(cluster: Cluster, peer: Peer) -> None:
    """Starts Restate's server and the services, waits until they serve, registers them."""
    for port in (INGRESS_PORT, ADMIN_PORT, NODE_PORT):
        if _listening(port):
            raise BenchError(f"port {port} is taken: Restate needs its default ports")
    config = cluster.workdir / "restate.toml"
    config.write_text(SERVER_CONFIG.format(data=cluster.workdir / "restate-data"))
    service = f"{HOST}:{free_ports(1)[0]}"
    service_config = cluster.workdir / "hypercorn.toml"
    service_config.write_text(SERVICE_CONFIG.format(bind=service))
    # The services first: children stop newest first, and the server's HTTP/2 connections
    # would hold the services' graceful shutdown open.
    services: Proc = cluster.spawn(
        "restate-services",
        "service",
        service,
        ["--config", str(service_config), "restate_app:app"],
        program=[str(peer.python), "-m", "hypercorn"],
        env={
            "PYTHONPATH": str(HERE),
            "PEER_NOTIFICATION_LOG": str(cluster.workdir / "notifications.log"),
        },
        # Hypercorn's graceful stop on SIGTERM hangs with Restate's app (seen with 0.18 and
        # restate-sdk 1.2.0); SIGINT cancels its main task and it exits at once.
        stop_signal=signal.SIGINT,
    )
    cluster.spawn(
        "restate-server",
        "broker",
        f"{HOST}:{INGRESS_PORT}",
        ["--config-file", str(config), "--no-logo"],
        program=[str(peer.server)],
    )
    _wait("Restate's admin API", lambda: _get(f"http://{HOST}:{ADMIN_PORT}/health") == 200, cluster)
    _wait(
        "Restate's ingress",
        lambda: _get(f"http://{HOST}:{INGRESS_PORT}/restate/health") == 200,
        cluster,
    )
    port = int(services.address.rsplit(":", 1)[1])
    _wait("the Restate services", lambda: _listening(port), cluster)
    _register(service)
    cluster.metrics_address, cluster.metric_names = f"{HOST}:{NODE_PORT}", (FSYNC_METRIC,)


def _post(
    session: aiohttp.ClientSession,
    path: Callable[[], str],
    body: dict[str, Any],
    check: Callable[[Any], str],
) -> Call:
    """A call POSTing `body` to the ingress at `path()`; `check` names what is wrong with
    the answer ("" when nothing is)."""
    base = f"http://{HOST}:{INGRESS_PORT}"
    data = json.dumps(body).encode()
    headers = {"content-type": "application/json"}

    async def call(timeout: float) -> None:
        try:
            async with session.post(
                base + path(),
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                raw = await response.read()
                status = response.status
        except TimeoutError as e:
            raise BadResponse("timed out") from e
        except aiohttp.ClientError as e:
            raise BadResponse(f"{type(e).__name__}: {e}") from e
        if status != 200:
            raise BadResponse(f"HTTP {status}: {raw[:200]!r}")
        problem = check(json.loads(raw))
        if problem:
            raise BadResponse(problem)

    return call


def calls(session: aiohttp.ClientSession, payload: bytes) -> dict[str, Callable[[], Call]]:
    """Each scenario's call maker (the keyed one walks the keys as ours does)."""
    text = base64.b64encode(payload).decode()

    def trivial() -> Call:
        def check(out: Any) -> str:
            return "" if out.get("payload") == text else "echoed another payload"

        return _post(session, lambda: "/bench/echo", {"payload": text}, check)

    def keyed() -> Call:
        keys = itertools.count()
        return _post(
            session,
            lambda: f"/counter/{keyed_key(next(keys))}/add",
            {"delta": 1},
            lambda out: "" if out.get("value", 0) >= 1 else f"counter went to {out!r}",
        )

    def saga() -> Call:
        body = {"from": "BER", "to": "LIS", "date": "2026-07-01", "amount_cents": 45000}
        return _post(
            session,
            lambda: "/trips/reserve",
            body,
            lambda out: "" if out.get("status") == "success" else f"saga status {out!r}",
        )

    return {"trivial": trivial, "keyed": keyed, "saga": saga}
