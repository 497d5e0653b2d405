"""What a suspended invocation costs: `python -m bench.suspended --count 10000`.

Starts COUNT invocations that each wait on an awakeable (playground.Waiter/Await),
lets them all suspend (the service holds nothing), reports the broker's RSS growth per
suspended invocation and the service's, then resolves every awakeable through the admin
API and reports how long it took until all had completed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import grpc
from durable import wire
from durable.process import free_ports
from durable.v1 import admin_pb2, admin_pb2_grpc, invocation_pb2
from playground import playground_pb2, playground_pb2_grpc

from .procs import ROOT, Cluster, install_signal_handlers, rss_bytes

SUSPENDED = invocation_pb2.InvocationStatus.SUSPENDED
COMPLETED = invocation_pb2.InvocationStatus.COMPLETED


async def _count(admin: admin_pb2_grpc.AdminStub, status: int) -> int:
    request = admin_pb2.ListInvocationsRequest(status=status, limit=1)  # type: ignore[arg-type]
    response = await admin.ListInvocations(request, timeout=120)  # type: ignore[misc]
    return int(response.total)


async def _ids(admin: admin_pb2_grpc.AdminStub, status: int) -> list[str]:
    """Every invocation with `status`, page by page (a page holds at most 1000)."""
    request = admin_pb2.ListInvocationsRequest(status=status)  # type: ignore[arg-type]
    ids: list[str] = []
    while True:
        listed = await admin.ListInvocations(request, timeout=120)  # type: ignore[misc]
        ids += [i.id for i in listed.invocations]
        if not listed.next_page_token:
            return ids
        request.page_token = listed.next_page_token


async def _until(admin: admin_pb2_grpc.AdminStub, status: int, count: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while await _count(admin, status) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} invocations reached status {status}")
        await asyncio.sleep(0.5)


async def _admin_timings(admin: admin_pb2_grpc.AdminStub) -> None:
    """How long the admin calls a console polls take with every invocation suspended:
    each is one pass of the broker's event loop, which serves no caller meanwhile. The
    median of 5 of each."""
    requests = {
        "GetStats": (admin.GetStats, admin_pb2.GetStatsRequest()),
        "ListInvocations (first page of 50)": (
            admin.ListInvocations,
            admin_pb2.ListInvocationsRequest(limit=50),
        ),
        "ListInvocations (suspended, filtered by service)": (
            admin.ListInvocations,
            admin_pb2.ListInvocationsRequest(
                status=SUSPENDED,
                service="playground.Waiter",
                limit=50,
            ),
        ),
    }
    for name, (call, request) in requests.items():
        took = []
        for _ in range(5):
            t = time.perf_counter()
            await call(request, timeout=120)  # type: ignore[operator]
            took.append((time.perf_counter() - t) * 1000)
        print(f"admin {name}: {statistics.median(took):.1f} ms (median of 5)")


async def _run(args: argparse.Namespace, workdir: Path) -> None:
    with Cluster(workdir) as cluster:
        ingress, admin_address, service = (f"127.0.0.1:{p}" for p in free_ports(3))
        broker = cluster.spawn(
            "broker",
            "broker",
            ingress,
            ["-m", "broker", "--data-dir", str(workdir / "broker"), "--ingress", ingress,
             "--admin", admin_address, "--suspend-after", "0", "--log-level", "WARNING"],
        )  # fmt: skip
        playground = cluster.spawn(
            "playground",
            "service",
            service,
            ["-m", "services.playground", "--listen", service, "--log-level", "WARNING"],
        )
        cluster.wait_ready(broker, ingress)
        cluster.wait_ready(broker, admin_address)
        cluster.wait_ready(playground)
        cluster.register(admin_address, [f"http://{service}"])
        async with (
            grpc.aio.insecure_channel(ingress) as channel,
            grpc.aio.insecure_channel(admin_address) as admin_channel,
        ):
            waiter = playground_pb2_grpc.WaiterStub(channel)
            admin = admin_pb2_grpc.AdminStub(admin_channel)
            base_broker, base_service = rss_bytes(broker.pid), rss_bytes(playground.pid)
            started = time.monotonic()
            gate = asyncio.Semaphore(256)
            # Start them in chunks and let go of each chunk once it has suspended: the
            # invocations keep waiting without their callers.
            for first in range(0, args.count, 256):
                chunk = range(first, min(first + 256, args.count))
                calls = [
                    waiter.Await(
                        playground_pb2.AwaitRequest(),
                        metadata=(("idempotency-key", f"wait-{i}"),),
                        timeout=600,
                    )
                    for i in chunk
                ]
                await _until(admin, SUSPENDED, chunk.stop, 600)
                for call in calls:
                    call.cancel()
            suspended_at = time.monotonic()
            await asyncio.sleep(2)  # let allocators settle
            grown = rss_bytes(broker.pid) - base_broker
            service_grown = rss_bytes(playground.pid) - base_service
            print(f"{args.count} invocations suspended on an awakeable "
                  f"in {suspended_at - started:.1f} s (suspend-after 0, fsync on)")  # fmt: skip
            print(f"broker RSS growth: {grown / 1e6:.1f} MB, "
                  f"{grown / args.count:.0f} bytes per suspended invocation")  # fmt: skip
            print(f"service RSS growth: {service_grown / 1e6:.1f} MB "
                  "(it holds nothing for suspended invocations)")  # fmt: skip

            await _admin_timings(admin)
            ids = await _ids(admin, SUSPENDED)
            resolve_started = time.monotonic()

            async def resolve(invocation_id: str) -> None:
                async with gate:
                    described = await admin.DescribeInvocation(
                        admin_pb2.DescribeInvocationRequest(invocation_id=invocation_id),
                        timeout=120,
                    )
                    awakeable = next(
                        e.awakeable.awakeable_id
                        for e in described.journal
                        if e.HasField("awakeable")
                    )
                    await admin.ResolveAwakeable(
                        admin_pb2.ResolveAwakeableRequest(awakeable_id=awakeable, value=b"1"),
                        timeout=120,
                    )

            await asyncio.gather(*(resolve(i) for i in ids))
            await _until(admin, COMPLETED, args.count, 600)
            print(f"resolved all {len(ids)} and all completed in "
                  f"{time.monotonic() - resolve_started:.1f} s")  # fmt: skip


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(prog="python -m bench.suspended", description=__doc__)
    p.add_argument("--count", type=int, default=10_000)
    args = p.parse_args()
    install_signal_handlers()
    base = ROOT / ".data" / "bench"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base, prefix="suspended-") as workdir:
        wire.run(_run(args, Path(workdir)))


if __name__ == "__main__":
    main()
