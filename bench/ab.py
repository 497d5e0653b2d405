"""`python -m bench.ab`: is broker variant B faster or slower than A on lone calls?

Two whole `make bench` runs, one per variant, differ by 10-20% on this kind of machine
from one minute to the next, which hides the few percent a change to the call path is
worth. Here both brokers run at once, against one service endpoint, and one client
alternates blocks of lone calls between them (ABBA order): drift hits both alike, and
each round gives one paired difference. The answer is the median difference and a
sign test over the rounds.

A variant is an environment (`--a-env`/`--b-env KEY=VALUE`, for a change behind a
toggle) and a source tree for its broker (`--b-tree DIR`, e.g. a `git worktree` of
another commit; the SDK, the service and this client come from this tree). With
`--a-service-env`/`--b-service-env`, each variant gets a service process of its own with
that environment (for a change on the SDK's side); otherwise one service serves both.

The processes started second came out faster: identical variants differed by 1.5-3.3%
in B's favour over 30 rounds (2026-12-01), a bias of the order of the changes measured.
So the rounds run in two legs, each on freshly started processes: A's started first in
the first, B's in the second; their paired differences are pooled, and each leg's
median difference is printed too (half the gap between them is the start order's share).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from benchsvc import benchsvc_pb2, benchsvc_pb2_grpc
from durable.process import free_ports

from bench.procs import Cluster, cpu_seconds
from bench.run import KEYED_KEYS

Call = Callable[[], Awaitable[object]]
TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class Paired:
    """Per-round p50s (ms) of A and B, taken in pairs, and each round's broker CPU per
    call (ms; empty when not measured)."""

    a: list[float]
    b: list[float]
    cpu_a: list[float] = dataclasses.field(default_factory=list)
    cpu_b: list[float] = dataclasses.field(default_factory=list)

    @property
    def diffs(self) -> list[float]:
        """B minus A, round by round (negative: B was faster)."""
        return _diffs(self.a, self.b)

    def __add__(self, other: Paired) -> Paired:
        """Both runs' rounds, pooled."""
        return Paired(
            self.a + other.a, self.b + other.b, self.cpu_a + other.cpu_a, self.cpu_b + other.cpu_b
        )

    @property
    def b_faster(self) -> int:
        """Rounds in which B's p50 was below A's."""
        return _lower(self.a, self.b)


def _diffs(a: list[float], b: list[float]) -> list[float]:
    return [y - x for x, y in zip(a, b, strict=True)]


def _lower(a: list[float], b: list[float]) -> int:
    """Rounds in which B's figure was below A's."""
    return sum(d < 0 for d in _diffs(a, b))


def sign_test(wins: int, rounds: int) -> float:
    """Two-sided p-value of `wins` out of `rounds` if either variant were as likely to
    win each round (exact binomial)."""
    if rounds == 0:
        return 1.0
    low = min(wins, rounds - wins)
    tail = sum(math.comb(rounds, k) for k in range(low + 1)) / float(2**rounds)
    return min(1.0, 2 * tail)


def _verdict(a: list[float], b: list[float], label: str, better: str) -> str:
    """Medians of `a` and `b` (ms), the median paired difference, and how often B came
    out `better` (lower), with its sign test."""
    median_a, rounds = statistics.median(a), len(a)
    diff = statistics.median(_diffs(a, b))
    wins = _lower(a, b)
    return (
        f"A {label}{median_a:.3f} ms, B {label}{statistics.median(b):.3f} ms; "
        f"B - A {diff:+.3f} ms ({diff / median_a:+.1%}), B {better} in {wins} of "
        f"{rounds} rounds (sign test p = {sign_test(wins, rounds):.2f})"
    )


def summary(paired: Paired) -> str:
    """The verdict line: medians, the median paired difference and the sign test; and
    the same for the brokers' CPU per call when it was measured."""
    line = _verdict(paired.a, paired.b, "p50 ", "faster")
    if paired.cpu_a and paired.cpu_b:
        line += "\nbroker CPU per call: " + _verdict(paired.cpu_a, paired.cpu_b, "", "cheaper")
    return line


def legs_line(legs: list[tuple[str, Paired]]) -> str:
    """Each leg's median paired difference of the p50s, named by what started first."""
    parts = []
    for first, paired in legs:
        diff = statistics.median(paired.diffs)
        parts.append(
            f"{first} started first: B - A {diff:+.3f} ms "
            f"({diff / statistics.median(paired.a):+.1%}, {len(paired.a)} rounds)"
        )
    return "legs: " + "; ".join(parts)


def leg_rounds(rounds: int) -> list[tuple[tuple[str, str], int]]:
    """The start order of each leg and its rounds: A's processes first for half of them,
    B's first for the rest (a leg without rounds is left out)."""
    first = rounds // 2
    legs = [(("A", "B"), first), (("B", "A"), rounds - first)]
    return [(order, n) for order, n in legs if n > 0]


def _caller(scenario: str, channel: grpc.aio.Channel, payload: bytes) -> Call:
    if scenario == "keyed":
        counter = benchsvc_pb2_grpc.CounterStub(channel)
        calls = iter(range(sys.maxsize))

        def add() -> Awaitable[object]:
            key = f"k{next(calls) % KEYED_KEYS}"
            return counter.Add(benchsvc_pb2.AddRequest(key=key, delta=1), timeout=TIMEOUT_S)

        return add
    bench = benchsvc_pb2_grpc.BenchStub(channel)
    request = benchsvc_pb2.EchoRequest(payload=payload)
    return lambda: bench.Echo(request, timeout=TIMEOUT_S)


async def block_p50_ms(call: Call, calls: int, concurrency: int = 1) -> float:
    """The median latency of `calls` calls made by `concurrency` callers in a closed
    loop (each sends its next call when its last one is answered)."""
    took: list[float] = []
    left = iter(range(calls))

    async def caller() -> None:
        for _ in left:
            started = time.perf_counter()
            await call()
            took.append(time.perf_counter() - started)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return statistics.median(took) * 1e3


async def measure(
    ingress: dict[str, str],
    scenario: str,
    rounds: int,
    block: int,
    payload: bytes,
    concurrency: int = 1,
    pids: dict[str, int] | None = None,
) -> Paired:
    """`rounds` rounds of `block` calls to each of A and B (the keys of `ingress`, in the
    order their processes started), ABBA order, `concurrency` callers at a time; with
    `pids`, each broker's CPU per call in each round too."""
    channels = {name: grpc.aio.insecure_channel(address) for name, address in ingress.items()}
    try:
        calls = {name: _caller(scenario, ch, payload) for name, ch in channels.items()}
        for call in calls.values():
            await block_p50_ms(call, block, concurrency)  # warm-up: connections, caches, attempts
        p50: dict[str, list[float]] = {"A": [], "B": []}
        cpu: dict[str, list[float]] = {"A": [], "B": []}
        # ABBA, led by the variant whose processes started first (the dict's order).
        first, second = list(ingress)
        for r in range(rounds):
            for name in (first, second) if r % 2 == 0 else (second, first):
                before = cpu_seconds(pids[name]) if pids else 0.0
                p50[name].append(await block_p50_ms(calls[name], block, concurrency))
                if pids:
                    cpu[name].append((cpu_seconds(pids[name]) - before) / block * 1e3)
        return Paired(p50["A"], p50["B"], cpu["A"], cpu["B"])
    finally:
        for channel in channels.values():
            await channel.close(None)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One side of the comparison: its broker's environment, flags and source tree, and
    the environment of a service of its own (None: the service both sides share)."""

    env: dict[str, str]
    broker_args: list[str]
    tree: Path | None = None
    service_env: dict[str, str] | None = None

    def describe(self) -> str:
        """The variant as the output's header names it."""
        out = f"env {self.env or '-'}, tree {self.tree or 'this one'}"
        if self.broker_args:
            out += f", broker args {' '.join(self.broker_args)}"
        if self.service_env is not None:
            out += f", service env {self.service_env or '-'}"
        return out


def _env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--a-env/--b-env take KEY=VALUE, not {pair!r}")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=("trivial", "keyed"), default="trivial")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=200, help="calls per block")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="callers at a time (1: lone calls); in a closed loop the p50 then follows "
        "the throughput",
    )
    parser.add_argument("--payload", type=int, default=64, help="bytes (trivial)")
    parser.add_argument("--a-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--b-tree", type=Path, help="source tree of broker B")
    parser.add_argument(
        "--a-broker-arg", action="append", default=[], metavar="ARG", help="e.g. --log-level=INFO"
    )
    parser.add_argument("--b-broker-arg", action="append", default=[], metavar="ARG")
    parser.add_argument("--a-service-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--b-service-env", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    own_services = bool(args.a_service_env or args.b_service_env)
    variants = {
        "A": Variant(
            _env(args.a_env),
            args.a_broker_arg,
            service_env=_env(args.a_service_env) if own_services else None,
        ),
        "B": Variant(
            _env(args.b_env),
            args.b_broker_arg,
            args.b_tree,
            _env(args.b_service_env) if own_services else None,
        ),
    }
    print(
        f"{args.scenario}, concurrency {args.concurrency}, fsync on, payload {args.payload} B, "
        f"{args.rounds} rounds of {args.block} calls each to A and B (ABBA), in two legs on "
        f"fresh processes; A: {variants['A'].describe()}; B: {variants['B'].describe()}"
    )
    legs: list[tuple[str, Paired]] = []
    for order, rounds in leg_rounds(args.rounds):
        legs.append((order[0], _leg(args, variants, order, rounds, own_services)))
    print(summary(sum((paired for _, paired in legs[1:]), legs[0][1])))
    print(legs_line(legs))
    return 0


def _leg(
    args: argparse.Namespace,
    variants: dict[str, Variant],
    order: tuple[str, str],
    rounds: int,
    own_services: bool,
) -> Paired:
    """Starts the services and brokers in `order`, measures `rounds` rounds, stops them."""
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as work, Cluster(Path(work)) as cluster:
        ports = iter(free_ports(6))
        services: dict[str, str] = {}
        for name in order if own_services else (order[0],):
            services[name] = f"127.0.0.1:{next(ports)}"
            cluster.wait_ready(
                cluster.spawn(
                    f"service-{name}" if own_services else "service",
                    "service",
                    services[name],
                    ["-m", "bench.service", "--listen", services[name], "--log-level", "WARNING"],
                    env=variants[name].service_env,
                )
            )
        ingress, pids = {}, {}
        for name in order:
            variant = variants[name]
            service = services.get(name, services[order[0]])
            ingress[name], admin = f"127.0.0.1:{next(ports)}", f"127.0.0.1:{next(ports)}"
            broker = cluster.spawn(
                f"broker-{name}",
                "broker",
                ingress[name],
                [
                    *("-m", "broker", "--data-dir", str(Path(work) / f"data-{name}")),
                    *("--ingress", ingress[name], "--admin", admin),
                    *("--suspend-after", "1s"),
                    *variant.broker_args,
                ],
                env=variant.env,
                cwd=variant.tree,
            )
            cluster.wait_ready(broker)
            cluster.register(admin, [f"http://{service}"])
            pids[name] = broker.pid
        return asyncio.run(
            measure(
                ingress,
                args.scenario,
                rounds,
                args.block,
                b"x" * args.payload,
                args.concurrency,
                pids,
            )
        )


if __name__ == "__main__":
    sys.exit(main())
