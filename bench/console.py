"""`python -m bench.console`: how fast the web console's pages load with many
invocations retained.

Fills a data dir with N completed invocations (default 100,000: records, journals and
expiry index written straight into RocksDB, the way the broker stores them, which takes
seconds rather than the hours real calls would), starts the broker on it with
`--console`, registers the demo services and runs a few real sagas (one of them failing)
so the timeline page has a real journal, then times each page over HTTP: median and
95th percentile of `--rounds` loads each.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
from durable.process import free_ports
from durable.v1 import admin_pb2, admin_pb2_grpc, invocation_pb2, journal_pb2
from trips import trips_pb2, trips_pb2_grpc

from bench.procs import BenchError, Cluster
from broker.storage import Batch, invocations, journal, open_kv

Status = invocation_pb2.InvocationStatus
DEMO = ("flights", "cars", "payments", "trips")
_DAY_MS = 24 * 3600 * 1000


def fill(data_dir: Path, count: int) -> float:
    """Writes `count` completed invocations (1 in 10 failed); returns the seconds taken."""
    started = time.perf_counter()
    kv = open_kv(str(data_dir))
    now = int(time.time() * 1000)
    batch = Batch()
    for i in range(count):
        created = now - (count - i) * 20  # one every 20 ms, oldest first
        failed = i % 10 == 0
        result = (
            journal_pb2.Result(failure=journal_pb2.Failure(code=9, message=f"trip {i} failed"))
            if failed
            else journal_pb2.Result(value=b'{"status": "success"}')
        )
        record = invocation_pb2.Invocation(
            id="inv_" + secrets.token_urlsafe(16),
            service="trips.Trips" if i % 2 else "flights.Flights",
            method="Reserve",
            key="" if i % 2 else f"trip-{i}",
            status=Status.COMPLETED,
            attempts=1,
            created_at_ms=created,
            modified_at_ms=created + 40,
            expires_at_ms=created + 40 + _DAY_MS,
            idempotency_key=f"bench-{i}",
            journal_length=2,
            result=result,
        )
        invocations.put(batch, record)
        invocations.schedule_expiry(batch, record.expires_at_ms, record.id)
        journal.put(batch, record.id, 0, journal_pb2.JournalEntry(input=journal_pb2.InputCommand()))
        output = journal_pb2.JournalEntry(output=journal_pb2.OutputCommand(), result=result)
        journal.put(batch, record.id, 1, output)
        if len(batch.puts) >= 20_000:
            kv.write(batch.puts)
            batch = Batch()
    kv.write(batch.puts)
    kv.sync()
    kv.close()
    return time.perf_counter() - started


def _get(url: str) -> tuple[int, float, int]:
    """(status, seconds, bytes) of one GET."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as e:
        body, status = e.read(), e.code
    return status, time.perf_counter() - started, len(body)


def _wait_indexed(admin: str, count: int) -> float:
    """Seconds until the broker's admin index covers the retained invocations."""
    started = time.perf_counter()
    with grpc.insecure_channel(admin) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            stats = stub.GetStats(admin_pb2.GetStatsRequest(), timeout=30)
            if stats.complete and stats.by_status["COMPLETED"] >= count:
                return time.perf_counter() - started
            time.sleep(0.2)  # polling interval; the deadline decides
    raise BenchError("the broker did not index the filled invocations within 300 s")


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints a table of page load times."""
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__)
    parser.add_argument("--invocations", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20, help="loads of each page")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        work = Path(tmp)
        data = work / "broker-data"
        print(f"filling {args.invocations:,} completed invocations ...", flush=True)
        print(f"  written in {fill(data, args.invocations):.1f} s", flush=True)
        ingress, admin, console, *ports = free_ports(3 + len(DEMO))
        base = f"http://127.0.0.1:{console}"
        with Cluster(work) as cluster:
            broker = cluster.spawn(
                "broker",
                "broker",
                f"127.0.0.1:{admin}",
                [
                    "-m",
                    "broker",
                    "--data-dir",
                    str(data),
                    "--ingress",
                    f"127.0.0.1:{ingress}",
                    "--admin",
                    f"127.0.0.1:{admin}",
                    "--console",
                    f"127.0.0.1:{console}",
                    "--log-level",
                    "WARNING",
                ],
            )
            started = time.perf_counter()
            cluster.wait_ready(broker)
            print(f"broker ready in {time.perf_counter() - started:.1f} s", flush=True)
            indexed = _wait_indexed(f"127.0.0.1:{admin}", args.invocations)
            print(f"admin index built {indexed:.1f} s later")
            uris = []
            for name, port in zip(DEMO, ports, strict=True):
                proc = cluster.spawn(
                    name,
                    "service",
                    f"127.0.0.1:{port}",
                    ["-m", f"services.{name}", "--listen", f"127.0.0.1:{port}"],
                )
                cluster.wait_ready(proc)
                uris.append(f"http://127.0.0.1:{port}")
            cluster.register(f"127.0.0.1:{admin}", uris)
            failed_id = ""
            with grpc.insecure_channel(f"127.0.0.1:{ingress}") as channel:
                stub = trips_pb2_grpc.TripsStub(channel)
                for i in range(10):
                    request = trips_pb2.ReserveTripRequest(run_type="failPayment" if i == 0 else "")
                    try:
                        stub.Reserve(request, timeout=60)
                    except grpc.RpcError as e:
                        failed_id = dict(e.initial_metadata())["invocation-id"]  # type: ignore[attr-defined]
            pages = {
                "overview /": "/",
                "invocations, page 1": "/invocations",
                "invocations, page 1000": "/invocations?page=1000",
                "live refresh (rows)": "/invocations/rows",
                "filter: failed trips": "/invocations?service=trips.Trips&status=failed",
                "filter: idempotency key": "/invocations?idempotency_key=bench-77777",
                "filter: handler + 1h": "/invocations?"
                + "service=flights.Flights&method=Reserve&since=1h",
                "one saga's timeline": f"/invocations/{failed_id}",
                "awaiting": "/awaiting",
                "a key": "/key?"
                + urllib.parse.urlencode({"service": "flights.Flights", "key": "trip-4"}),
            }
            print(f"\n{'page':<26} {'status':>6} {'median ms':>10} {'p95 ms':>8} {'KiB':>6}")
            worst = 0.0
            for label, path in pages.items():
                _get(base + path)  # warm-up
                times, status, size = [], 0, 0
                for _ in range(args.rounds):
                    status, seconds, size = _get(base + path)
                    times.append(seconds * 1000)
                times.sort()
                p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
                worst = max(worst, p95)
                median = statistics.median(times)
                print(f"{label:<26} {status:>6} {median:>10.1f} {p95:>8.1f} {size / 1024:>6.1f}")
            print(f"\nslowest p95: {worst:.0f} ms with {args.invocations:,} invocations retained")
    return 0


if __name__ == "__main__":
    sys.exit(main())
