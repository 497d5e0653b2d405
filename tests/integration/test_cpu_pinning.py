"""The broker process keeps its Python threads on one CPU while calls come one at a time,
and sets every thread free the moment two attempts run at once (broker/affinity.py).

Read from outside, as an operator would: each thread's `Cpus_allowed_list` in /proc.
"""

from __future__ import annotations

import os
from pathlib import Path

from flights import flights_pb2
from trips import trips_pb2

from tests.support import Cluster, wait_for

# Threads that gRPC and RocksDB start in C++: never pinned, whatever the broker's state.
NATIVE_PREFIXES = ("event_engine", "rocksdb", "grpc_global_tim", "lifeguard")
PINNED_LINE = "--no-pin-when-quiet turns this off"


def _cpus(text: str) -> set[int]:
    """CPUs of a list such as `0-1,4`."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _threads(pid: int) -> dict[int, tuple[str, set[int]]]:
    """Each thread of `pid`: its name and the CPUs it may run on."""
    threads: dict[int, tuple[str, set[int]]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except FileNotFoundError:
            continue  # ended meanwhile
        [line] = [x for x in status.splitlines() if x.startswith("Cpus_allowed_list:")]
        threads[int(tid)] = (name, _cpus(line.split(":", 1)[1].strip()))
    return threads


def _main_thread_cpus(pid: int) -> set[int]:
    return _threads(pid)[pid][1]


def _reserve_flight(cluster: Cluster, n: int) -> None:
    reply = cluster.flights.Reserve(flights_pb2.ReserveRequest(trip_id=f"pin-{n}"), timeout=30)
    assert reply.state == "reserved"


def test_lone_calls_pin_python_threads_and_two_attempts_free_every_thread(
    tmp_path: Path,
) -> None:
    allowed = os.sched_getaffinity(0)  # the broker inherits the test's CPUs
    with Cluster(tmp_path, services=("flights", "cars", "payments", "trips")) as cluster:
        pid = cluster.broker.pid
        assert pid is not None
        _reserve_flight(cluster, 0)
        threads = _threads(pid)
        if len(allowed) < 2:
            # One CPU: nothing to gain, nothing moved.
            assert all(cpus == allowed for _, cpus in threads.values())
            return
        [cpu] = _main_thread_cpus(pid)  # the event loop's thread, on one CPU
        assert cpu in allowed
        # Said once, at INFO, naming the way out: `taskset -p` would puzzle an operator.
        wait_for(
            lambda: PINNED_LINE in (cluster.log_dir / "broker.log").read_text(),
            message="the broker's log line about pinning",
        )
        native = {
            tid: cpus for tid, (name, cpus) in threads.items() if name.startswith(NATIVE_PREFIXES)
        }
        assert native, f"no gRPC or RocksDB thread among {threads}"
        assert all(cpus == allowed for cpus in native.values()), threads

        # A trip's attempt waits on its flight's, which starts beside it: two at once.
        trip = cluster.trips.Reserve(trips_pb2.ReserveTripRequest(), timeout=60)
        assert trip.tripId
        assert all(cpus == allowed for _, cpus in _threads(pid).values()), _threads(pid)

        # Quiet again for a while (SETTLE_S): a lone call pins again.
        calls = iter(range(1, 1000))

        def pinned_again() -> bool:
            _reserve_flight(cluster, next(calls))
            return len(_main_thread_cpus(pid)) == 1

        wait_for(pinned_again, timeout=30, message="the main thread pinned after a lone call")
        assert (cluster.log_dir / "broker.log").read_text().count(PINNED_LINE) == 1


def test_no_pin_when_quiet_leaves_every_thread_to_the_kernel(tmp_path: Path) -> None:
    allowed = os.sched_getaffinity(0)
    with Cluster(tmp_path, broker_args=["--no-pin-when-quiet"], services=("flights",)) as cluster:
        pid = cluster.broker.pid
        assert pid is not None
        for n in range(3):
            _reserve_flight(cluster, n)
        assert all(cpus == allowed for _, cpus in _threads(pid).values()), _threads(pid)
        assert PINNED_LINE not in (cluster.log_dir / "broker.log").read_text()
