"""Storage growth under steady load: does the data dir stop growing once retention
purges what completed? `python -m bench.storage --retention 10s --duration 90`.

Runs the trivial echo through the broker with N closed-loop clients for the whole
duration and prints, every interval, the calls completed, the completed invocations the
admin API lists (all those retained, or with a `*` only the newest `--admin-index-rows`),
the data dir's size on disk and the broker's resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import grpc
from benchsvc import benchsvc_pb2, benchsvc_pb2_grpc
from durable import wire
from durable.process import free_ports
from durable.v1 import admin_pb2, admin_pb2_grpc

from broker.config import ADMIN_INDEX_ROWS

from .procs import ROOT, Cluster, install_signal_handlers, rss_bytes


def dir_bytes(path: Path) -> int:
    """Bytes of every file under `path`."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass  # RocksDB removes files while we walk
    return total


async def _load(ingress: str, clients: int, stop: asyncio.Event, done: list[int]) -> None:
    async with grpc.aio.insecure_channel(ingress) as channel:
        stub = benchsvc_pb2_grpc.BenchStub(channel)
        request = benchsvc_pb2.EchoRequest(payload=b"x" * 64)

        async def client() -> None:
            while not stop.is_set():
                await stub.Echo(request, timeout=30)
                done[0] += 1

        await asyncio.gather(*(client() for _ in range(clients)))


async def _run(args: argparse.Namespace, workdir: Path) -> None:
    with Cluster(workdir) as cluster:
        ingress, admin, service = (f"127.0.0.1:{p}" for p in free_ports(3))
        broker = cluster.spawn(
            "broker",
            "broker",
            ingress,
            ["-m", "broker", "--data-dir", str(workdir / "broker"), "--ingress", ingress,
             "--admin", admin, "--retention", args.retention, "--log-level", "WARNING",
             "--admin-index-rows", str(args.admin_index_rows)],
        )  # fmt: skip
        bench = cluster.spawn(
            "bench", "service", service, ["-m", "bench.service", "--listen", service]
        )
        cluster.wait_ready(broker, ingress)
        cluster.wait_ready(broker, admin)
        cluster.wait_ready(bench)
        cluster.register(admin, [f"http://{service}"])
        print(
            f"retention {args.retention}, admin index {args.admin_index_rows} rows, "
            f"{args.clients} clients, fsync on, 64-byte payload"
        )
        print(
            f"{'t s':>6} {'calls':>8} {'calls/s':>8} {'listed':>9} {'data dir MB':>12} "
            f"{'broker RSS MB':>14}"
        )
        stop, done = asyncio.Event(), [0]
        load = asyncio.create_task(_load(ingress, args.clients, stop, done))
        started, last_calls, last_t = time.monotonic(), 0, time.monotonic()
        with grpc.insecure_channel(admin) as channel:
            stub = admin_pb2_grpc.AdminStub(channel)
            while (now := time.monotonic()) - started < args.duration:
                await asyncio.sleep(args.interval)
                cluster.check_alive()
                now = time.monotonic()
                listed = stub.ListInvocations(admin_pb2.ListInvocationsRequest(limit=1), timeout=30)
                retained = f"{listed.total}{'*' if listed.partial else ''}"
                rate = (done[0] - last_calls) / (now - last_t)
                last_calls, last_t = done[0], now
                size = dir_bytes(workdir / "broker") / 1e6
                rss = rss_bytes(broker.pid) / 1e6
                print(
                    f"{now - started:6.0f} {done[0]:8d} {rate:8.0f} {retained:>9} {size:12.2f} "
                    f"{rss:14.1f}"
                )
        stop.set()
        await asyncio.wait_for(load, timeout=60)


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__)
    p.add_argument("--retention", default="10s")
    p.add_argument("--duration", type=float, default=90)
    p.add_argument("--interval", type=float, default=10)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--admin-index-rows", type=int, default=ADMIN_INDEX_ROWS)
    args = p.parse_args()
    install_signal_handlers()
    base = ROOT / ".data" / "bench"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base, prefix="storage-") as workdir:
        wire.run(_run(args, Path(workdir)))


if __name__ == "__main__":
    main()
