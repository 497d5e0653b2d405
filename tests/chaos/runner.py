"""The verification runner: random programs under crashes, checked against a model.

    python -m tests.chaos.runner --seed 7 --programs 200 --duration 60 \
        --faults broker,service,stream
    python -m tests.chaos.runner --cluster --seed 7 --programs 300 --duration 90

From the seed it generates programs for `chaos.Counters` (increments of shared counters,
nested calls and sends three levels deep, sleeps, side effects that succeed, fail once or
are slow, awakeables resolved by a sibling invocation, terminal errors recovered from) and
the model of their effects: every program's outcome and every counter's final value. It
starts a real broker and the chaos service (`python -m services.chaos`) on free ports,
submits each program on its own key with its own idempotency key (at most `--concurrency`
at a time, spread over `--duration`), and meanwhile SIGKILLs and restarts the broker and
the service and breaks the streams between them at seeded random moments. A client whose
call fails retries with the same idempotency key until it gets an answer.

With `--cluster` the broker is three nodes (`--nats`, four partitions) over three NATS
servers, and the faults kill and restart single nodes and single NATS servers, and pause
single nodes (SIGSTOP, mostly a leader, from within its lease to well past it, then
SIGCONT: a deposed leader that wakes must be fenced), as well as the service and the
streams. Each client sends its tries to the nodes' ingresses in turn
(program i's try k to node (i + k) mod 3): a call that fails on a node that is down, or
that died under it, is retried on the next node with the same idempotency key, so the
broker's idempotency must hold across nodes for the checks to pass.

Faults come one at a time unless `--overlap`: then a fault may start while earlier ones
are still in effect, but never two NATS servers down at once nor every broker node killed
or paused (`tests.chaos.runner_faults`, `tests.chaos.runner_overlap`).

At the end, once no invocation is pending, running, suspended or backing off, it checks
that every program answered its expected outcome exactly once, that every program, Add,
Resolve and Fail has exactly one invocation with the right result, that each program's
handler changed its state exactly once, and that every counter equals the model: nothing
lost, nothing applied twice. On failure it prints the seed, the mismatches and the records
and journals of the invocations involved, keeps the logs, and exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from chaos import chaos_pb2 as pb
from chaos import chaos_pb2_grpc

from tests.chaos.runner_check import (
    ClientResult,
    Verdict,
    dump,
    report_problems,
    verify,
    wait_quiescent,
)
from tests.chaos.runner_cluster import ChaosBroker, ChaosCluster
from tests.chaos.runner_faults import (
    CLUSTER_KINDS,
    KINDS,
    NATS,
    NODE,
    PAUSE,
    WORKER,
    FaultInjector,
    TcpProxy,
    schedule,
)
from tests.chaos.runner_model import Model, generate
from tests.chaos.runner_nodes import NODES, PARTITIONS, ChaosNodes

# Quick retries, so that invocations whose endpoint was down resume soon after it is back.
BROKER_ARGS = ("--log-level", "INFO", "--retry-initial", "50ms", "--retry-max", "1s")
SUSPEND_AFTER_CHOICES = ("0", "100ms", "1s")
# One try of a client's call; it retries (same idempotency key) until its deadline.
ATTEMPT_TIMEOUT_S = 20.0
RETRY_PAUSE_S = 0.2
# Tries of the slowest program shown in the report (its last ones).
MAX_TRIES_SHOWN = 8


@dataclasses.dataclass(frozen=True)
class Options:
    """What to run. Everything random derives from `seed`."""

    seed: int
    programs: int = 200
    # Seconds over which programs are submitted and faults injected.
    duration: float = 60.0
    faults: tuple[str, ...] = KINDS
    # Mean seconds between two faults.
    fault_interval: float = 5.0
    concurrency: int = 16
    counters: int = 10
    # Seconds the clients (then the invocations) get after `duration` to finish.
    settle: float = 120.0
    # The broker's --suspend-after; empty: chosen by the seed.
    suspend_after: str = ""
    # Serve the chaos service with --request-response (one unary call per attempt).
    request_response: bool = False
    # The broker's --workers (0: the single process); `worker` faults need it.
    workers: int = 0
    # Three broker nodes on three NATS servers instead of one broker; `node`, `nats` and
    # `pause` faults need it.
    cluster: bool = False
    # A fault may start while earlier ones are still in effect (tests.chaos.runner_overlap).
    overlap: bool = False

    def effective_suspend_after(self) -> str:
        """The --suspend-after of the run (seeded unless given)."""
        return self.suspend_after or random.Random(f"{self.seed}-config").choice(
            SUSPEND_AFTER_CHOICES
        )

    def command(self) -> str:
        """The command line that replays this run."""
        faults = ",".join(self.faults) or "none"
        return (
            f"python -m tests.chaos.runner --seed {self.seed} --programs {self.programs} "
            f"--duration {self.duration:g} --faults {faults} "
            f"--fault-interval {self.fault_interval:g} --concurrency {self.concurrency} "
            f"--counters {self.counters} --suspend-after {self.effective_suspend_after()}"
            + (" --request-response" if self.request_response else "")
            + (f" --workers {self.workers}" if self.workers else "")
            + (" --cluster" if self.cluster else "")
            + (" --overlap" if self.overlap else "")
        )


@dataclasses.dataclass
class Report:
    """The outcome of a run and its printable report."""

    passed: bool
    text: str
    faults: Counter[str]
    elapsed: float
    invocations: int


# Called once every invocation finished, before the checks (the runner's own tests use it
# to break something on purpose and see the checks catch it).
Tamper = Callable[[ChaosCluster, Model], None]


def run(options: Options, workdir: Path, tamper: Tamper | None = None) -> Report:
    """Runs the programs of `options.seed` under faults in `workdir`; checks the result."""
    began = time.monotonic()
    model = generate(options.seed, options.programs, options.counters)
    faults = schedule(options.seed, options.faults, options.duration, options.fault_interval)
    cluster: ChaosCluster
    if options.cluster:
        cluster = ChaosNodes(
            workdir,
            options.effective_suspend_after(),
            BROKER_ARGS,
            request_response=options.request_response,
        )
    else:
        cluster = ChaosBroker(
            workdir,
            options.effective_suspend_after(),
            [*BROKER_ARGS, *(["--workers", str(options.workers)] if options.workers else [])],
            request_response=options.request_response,
        )
    proxy: TcpProxy | None = None
    verdict = Verdict()
    dumped = ""
    results: dict[str, ClientResult] = {}
    injector: FaultInjector | None = None
    try:
        cluster.start_broker()
        cluster.start_service()
        endpoint = cluster.service_address
        if "stream" in options.faults:
            proxy = TcpProxy(endpoint).start()
            endpoint = proxy.address
        cluster.register(f"http://{endpoint}")

        started = time.monotonic()
        deadline = started + options.duration + options.settle
        injector = FaultInjector(cluster, proxy, faults, overlap=options.overlap).start()
        results = _submit(model, cluster, options, started, deadline)
        injector.stop()
        if injector.error is not None:
            verdict.problems.append(f"fault injection failed: {injector.error!r}")
        verdict.problems += injector.unexpected_exits

        # After the last fault a cluster's partitions may still be moving to new leaders.
        cluster.wait_serving(max(10.0, deadline - time.monotonic()))
        stuck = wait_quiescent(cluster, timeout=max(10.0, deadline - time.monotonic()))
        if tamper is not None:
            tamper(cluster, model)
        checked = verify(model, results, cluster)
        verdict.problems += checked.problems
        verdict.suspects.update(checked.suspects)
        verdict.invocations = checked.invocations
        verdict.retried = checked.retried
        verdict.max_attempts = checked.max_attempts
        if stuck:
            verdict.problems.insert(0, f"{len(stuck)} invocations still active at the deadline")
        if not verdict.passed:
            dumped = dump(cluster, verdict.suspects.items())
    except Exception:  # the run itself broke (e.g. a process did not restart): a failure
        verdict.problems.append(f"the run was aborted:\n{traceback.format_exc()}")
    finally:
        if injector is not None:
            injector.stop(watch=False)
        verdict.problems += [f"unclean shutdown: {e}" for e in cluster.close()]
        if proxy is not None:
            proxy.close()
    elapsed = time.monotonic() - began
    if not verdict.passed:
        dumped += "\n" + cluster.log_tails(30)
    text = _report(options, model, injector, results, verdict, dumped, elapsed, workdir)
    injected = injector.injected if injector is not None else Counter[str]()
    return Report(verdict.passed, text, injected, elapsed, verdict.invocations)


def _submit(
    model: Model, cluster: ChaosCluster, options: Options, started: float, deadline: float
) -> dict[str, ClientResult]:
    """Submits every root program, spread over the duration, and waits for every answer."""
    names = _ingress_names(cluster)
    stubs = [
        (name, chaos_pb2_grpc.CountersStub(channel))
        for name, channel in zip(names, cluster.ingress_channels, strict=True)
    ]
    spacing = options.duration / max(1, len(model.roots))
    results = {root.key: ClientResult(root.key) for root in model.roots}
    with ThreadPoolExecutor(options.concurrency, thread_name_prefix="chaos-client") as pool:
        for index, root in enumerate(model.roots):
            pool.submit(
                _client,
                stubs[index:] + stubs[:index],
                root,
                model.idempotency_key(root.key),
                results[root.key],
                started,
                started + index * spacing,
                deadline,
            )
    return results


def invocation_id_of(call: grpc.Call) -> str:
    """The `invocation-id` response metadata of a call ("" if it has none)."""
    for key, value in call.initial_metadata() or ():
        if key == "invocation-id":
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def _ingress_names(cluster: ChaosCluster) -> list[str]:
    """What to call each ingress in the client's record of its tries."""
    if isinstance(cluster, ChaosNodes):
        return [cluster.node_name(i) for i in range(len(cluster.ingress_addresses))]
    return ["" for _ in cluster.ingress_addresses]


def _client(
    stubs: Sequence[tuple[str, chaos_pb2_grpc.CountersStub]],
    program: pb.Program,
    idempotency_key: str,
    result: ClientResult,
    started: float,
    start_at: float,
    deadline: float,
) -> None:
    """Calls Execute until it answers (same idempotency key every time) or the deadline.

    With several ingresses (a cluster's nodes) each try goes to the next one in `stubs`,
    and does not wait for a node that is down: it fails at once and the next try goes to
    another node. With one, each try waits for the broker to be back.
    """
    time.sleep(max(0.0, start_at - time.monotonic()))  # paced submission
    first_try = time.monotonic()
    metadata = (("idempotency-key", idempotency_key),)
    wait_for_ready = len(stubs) == 1
    while (timeout := min(ATTEMPT_TIMEOUT_S, deadline - time.monotonic())) > 0:
        node, stub = stubs[result.attempts % len(stubs)]
        result.attempts += 1
        began = time.monotonic() - started
        try:
            outcome, call = stub.Execute.with_call(
                program, metadata=metadata, timeout=timeout, wait_for_ready=wait_for_ready
            )
        except grpc.RpcError as e:
            code = e.code().name if e.code() is not None else "?"
            result.errors[code] = result.errors.get(code, 0) + 1
            result.last_error = f"{code}: {e.details()}"
            invocation_id = invocation_id_of(e) if isinstance(e, grpc.Call) else ""
            result.record_try(began, time.monotonic() - started, code, invocation_id, node)
            time.sleep(RETRY_PAUSE_S)  # between retries of a failed call
            continue
        except Exception as e:  # not a gRPC failure: record it, do not hide it
            result.last_error = f"client error: {e!r}"
            return
        result.outcome = outcome
        result.record_try(began, time.monotonic() - started, "OK", invocation_id_of(call), node)
        result.latency = time.monotonic() - first_try
        return


def _report(
    options: Options,
    model: Model,
    injector: FaultInjector | None,
    results: dict[str, ClientResult],
    verdict: Verdict,
    dumped: str,
    elapsed: float,
    workdir: Path,
) -> str:
    injected = injector.injected if injector is not None else Counter[str]()
    errors: Counter[str] = Counter()
    for result in results.values():
        errors.update(result.errors)
    answered = [r for r in results.values() if r.outcome is not None]
    latencies = sorted(r.latency for r in answered) or [0.0]
    faults = ", ".join(f"{kind} {n}" for kind, n in sorted(injected.items())) or "none"
    retried = ", ".join(f"{code} {n}" for code, n in errors.most_common()) or "none"
    lines = [
        f"chaos: seed {options.seed} · suspend-after {options.effective_suspend_after()} · "
        f"faults {','.join(options.faults) or 'none'} every ~{options.fault_interval:g} s · "
        f"{'request/response' if options.request_response else 'stream'} endpoint"
        + (
            f" · cluster of {NODES} nodes, {PARTITIONS} partitions, 3 NATS servers"
            if options.cluster
            else ""
        ),
        f"  programs: {model.describe()}",
        f"  counters: {sum(model.adds.values())} increments of {len(model.counter_keys)} keys",
        f"  faults injected: {sum(injected.values())} ({faults})"
        + (
            f" · {injector.overlapping} started while others were in effect"
            if injector is not None and options.overlap
            else ""
        ),
        f"  clients: {len(answered)}/{len(model.roots)} answered · "
        f"{sum(r.attempts for r in results.values())} calls (failed tries: {retried}) · "
        f"latency median {statistics.median(latencies):.2f} s, max {latencies[-1]:.2f} s",
        f"  invocations: {verdict.invocations} (model {model.expected_invocations}), "
        f"{verdict.retried} retried (at most {verdict.max_attempts} attempts) · "
        f"elapsed {elapsed:.1f} s",
    ]
    if answered:
        # Where the time went for the slowest program (a try that hung until its timeout
        # is worth a look even when every check passed).
        slowest = max(answered, key=lambda r: r.latency)
        tries = "; ".join(slowest.tries[-MAX_TRIES_SHOWN:])
        lines.append(f"  slowest answer: {slowest.key} after {slowest.latency:.2f} s: {tries}")
    # A try that waited out its whole timeout is worth a look even when the run passes: an
    # invocation that ended without answering a caller that waited on it, say.
    timed_out = [
        f"{r.key} {t}" for r in results.values() for t in r.tries if " DEADLINE_EXCEEDED " in t
    ]
    if timed_out:
        shown = "; ".join(timed_out[:MAX_TRIES_SHOWN])
        lines.append(f"  tries that ran into their {ATTEMPT_TIMEOUT_S:g} s timeout: {shown}")
    if injector is not None and injector.log:
        lines.append("  fault log:")
        lines += [f"    {entry}" for entry in injector.log]
    if verdict.passed:
        lines.append("PASS")
        return "\n".join(lines)
    lines += [
        f"FAIL: {len(verdict.problems)} problems (seed {options.seed})",
        report_problems(verdict.problems),
    ]
    if dumped:
        lines += ["stuck or wrong invocations:", dumped]
    lines += [
        f"logs and data: {workdir}",
        f"replay: {options.command()}",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, Path | None, bool]:
    """Options, the work directory (None: a temporary one) and whether to keep it."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos.runner",
        description="Random programs under crashes, checked against a model.",
    )
    parser.add_argument("--seed", type=int, help="replays a run (default: a random seed)")
    parser.add_argument("--programs", type=int, default=200, help="root programs (default 200)")
    parser.add_argument(
        "--duration",
        type=float,
        default=60.0,
        help="seconds over which programs are submitted and faults injected (default 60)",
    )
    parser.add_argument(
        "--faults",
        default=",".join(KINDS),
        help=f"comma-separated kinds among {', '.join(KINDS)}, or none (default: all)",
    )
    parser.add_argument(
        "--fault-interval", type=float, default=5.0, help="mean seconds between faults"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="programs in flight at most")
    parser.add_argument("--counters", type=int, default=10, help="shared counter keys")
    parser.add_argument(
        "--settle",
        type=float,
        default=120.0,
        help="seconds after the duration for every program to finish (default 120)",
    )
    parser.add_argument(
        "--suspend-after", default="", help="the broker's --suspend-after (default: seeded)"
    )
    parser.add_argument(
        "--request-response",
        action="store_true",
        help="serve the chaos service in request/response mode instead of streams",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run the broker with --workers N (partitions over N processes); adds the "
        "`worker` fault kind (SIGKILL one worker) to the default kinds",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help=f"run {NODES} broker nodes (--nats, {PARTITIONS} partitions) over 3 NATS servers "
        f"instead of one broker; adds the `{NODE}`, `{NATS}` and `{PAUSE}` (SIGSTOP a node, "
        f"then SIGCONT) fault kinds (default kinds: {','.join(CLUSTER_KINDS)}; `broker` "
        "kills every node)",
    )
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="let a fault start while earlier ones are still in effect (never two NATS "
        "servers down, never every node down or paused, one fault at a time on the service "
        "and on the whole broker); a shorter --fault-interval overlaps more",
    )
    parser.add_argument("--workdir", type=Path, help="data and logs here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    default_kinds = ",".join(KINDS)
    faults = args.faults
    if args.cluster and args.workers:
        parser.error("--cluster runs nodes of one process each: leave out --workers")
    if args.workers and faults == default_kinds:
        faults += f",{WORKER}"
    if args.cluster and faults == default_kinds:
        faults = ",".join(CLUSTER_KINDS)
    kinds = tuple(k for k in faults.split(",") if k and k != "none")
    if WORKER in kinds and not args.workers:
        parser.error("the worker fault kind needs --workers N")
    for kind in (NODE, NATS, PAUSE):
        if kind in kinds and not args.cluster:
            parser.error(f"the {kind} fault kind needs --cluster")
    unknown = set(kinds) - {*KINDS, WORKER, NODE, NATS, PAUSE}
    if unknown:
        parser.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    options = Options(
        seed=seed,
        programs=args.programs,
        duration=args.duration,
        faults=kinds,
        fault_interval=args.fault_interval,
        concurrency=args.concurrency,
        counters=args.counters,
        settle=args.settle,
        suspend_after=args.suspend_after,
        request_response=args.request_response,
        workers=args.workers,
        cluster=args.cluster,
        overlap=args.overlap,
    )
    return options, args.workdir, args.keep


def main(argv: Sequence[str] | None = None) -> int:
    """Runs once; 0 when every check passed, 1 otherwise."""
    options, workdir, keep = parse_args(argv)
    print(f"chaos: seed {options.seed} · {options.programs} programs · {options.duration:g} s")
    print(f"  replay: {options.command()}", flush=True)
    temporary = workdir is None
    path = workdir or Path(tempfile.mkdtemp(prefix=f"chaos-{options.seed}-"))
    report = run(options, path)
    print(report.text, flush=True)
    if report.passed and temporary and not keep:
        shutil.rmtree(path, ignore_errors=True)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
