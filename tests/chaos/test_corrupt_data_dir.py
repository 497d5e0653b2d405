"""A damaged data dir never starts the broker with less than it acknowledged.

Each test fills a broker with acknowledged, idempotent `playground.Counter/Add` calls,
stops it (SIGKILL, or SIGTERM for the files only a clean stop leaves settled), damages
one file of its data dir and starts it again. The broker either starts with every
acknowledged invocation, or exits at once with one line saying what is wrong and what to
do, having changed nothing in the data dir. `--accept-data-loss` (here through its
environment variable) starts anyway and says what was lost.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from playground import playground_pb2 as pb

from tests.support import PLAYGROUND, Cluster, MakeCluster, Status, wait_for

CALLS = 300
COUNTER = "playground.Counter"
HIGH_WATER = "BROKER-HIGH-WATER"


def _add(cluster: Cluster, i: int) -> grpc.Future[Any]:
    return cluster.counter.Add.future(
        pb.AddRequest(name=f"c{i % 7}", amount=1),
        metadata=(("idempotency-key", f"add-{i}"),),
        timeout=60,
    )


def _fill(cluster: Cluster, calls: int = CALLS) -> float:
    """Makes `calls` acknowledged calls, 25 at a time; returns when the last was acked."""
    for start in range(0, calls, 25):
        futures = [_add(cluster, i) for i in range(start, min(start + 25, calls))]
        for future in futures:
            future.result()
    return time.time()


def _wait_high_water(cluster: Cluster, acked_at: float) -> None:
    """Waits until the high-water mark was written after `acked_at` (it lags by design)."""
    mark = cluster.data_dir / HIGH_WATER
    cluster.wait_for(
        lambda: mark.exists() and mark.stat().st_mtime > acked_at,
        message="the high-water mark to cover the acknowledged calls",
    )


def _adds(cluster: Cluster) -> list[str]:
    """Idempotency keys of the completed Add invocations."""
    return [
        i.idempotency_key
        for i in cluster.invocations(service=COUNTER, method="Add")
        if i.status == Status.COMPLETED
    ]


def _wals(cluster: Cluster) -> list[Path]:
    return sorted(cluster.data_dir.glob("*.log"))


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def _refused(cluster: Cluster) -> str:
    """Starts the broker, expects it to exit non-zero; returns its one-line message."""
    log_start = cluster.broker.log_path.stat().st_size
    cluster.broker.start()
    popen = cluster.broker.popen
    assert popen is not None

    def exit_code() -> tuple[int] | None:
        # In a tuple: an exit code of 0 is falsy, and wait_for waits for a truthy value.
        code = popen.poll()
        return None if code is None else (code,)

    (code,) = wait_for(exit_code, timeout=30, message="the broker to refuse the data dir")
    with cluster.broker.log_path.open("rb") as f:
        f.seek(log_start)
        output = f.read().decode(errors="replace")
    assert code != 0, output
    assert "Traceback" not in output, output
    failures = [line for line in output.splitlines() if "CRITICAL" in line]
    assert len(failures) == 1, output
    return failures[0]


def _flip(path: Path, at: int | None = None, count: int = 16) -> None:
    """Inverts `count` bytes in the middle of `path` (or at `at`)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if at is None else at
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def filled(make_cluster: MakeCluster) -> Iterator[Cluster]:
    """A cluster with CALLS acknowledged adds, its broker SIGKILLed once the high-water
    mark covers them."""
    cluster = make_cluster(services=(PLAYGROUND,))
    acked_at = _fill(cluster)
    _wait_high_water(cluster, acked_at)
    cluster.kill_broker()
    yield cluster


def test_flipped_bytes_in_the_log_refuse_to_start_until_the_loss_is_accepted(
    filled: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = max(_wals(filled), key=lambda p: p.stat().st_size)
    _flip(wal)
    before = _digest(filled.data_dir)

    message = _refused(filled)
    assert wal.name in message and "damaged" in message, message
    assert "--accept-data-loss" in message, message
    assert _digest(filled.data_dir) == before, "a refused start changed the data dir"

    monkeypatch.setenv("BROKER_ACCEPT_DATA_LOSS", "1")
    filled.start_broker()
    log = filled.broker.log_path.read_text(errors="replace")
    assert "bytes of the write-ahead log were not replayed" in log, filled.broker.log_tail()
    assert len(_adds(filled)) < CALLS

    # What is left is the journal now: the next start needs no flag.
    monkeypatch.delenv("BROKER_ACCEPT_DATA_LOSS")
    filled.restart_broker()
    assert len(_adds(filled)) < CALLS


def test_a_log_truncated_to_half_refuses_to_start(filled: Cluster) -> None:
    wal = max(_wals(filled), key=lambda p: p.stat().st_size)
    os.truncate(wal, wal.stat().st_size // 2)
    before = _digest(filled.data_dir)
    message = _refused(filled)
    assert "missing acknowledged journal writes" in message, message
    assert "--accept-data-loss" in message, message
    assert _digest(filled.data_dir) == before


def test_a_deleted_log_refuses_to_start(filled: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    for wal in _wals(filled):
        wal.unlink()
    message = _refused(filled)
    assert "missing acknowledged journal writes" in message, message

    monkeypatch.setenv("BROKER_ACCEPT_DATA_LOSS", "1")
    filled.start_broker()
    assert "fsynced write(s) are gone" in filled.broker.log_path.read_text(errors="replace")


def test_sigkill_under_load_restarts_with_everything_acknowledged(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(services=(PLAYGROUND,))
    acked: set[str] = set()
    for round_ in range(3):
        keys = range(round_ * 1000, round_ * 1000 + 150)
        futures = {f"add-{i}": _add(cluster, i) for i in keys}
        # Kill while calls are in flight: some are acknowledged, the rest are not.
        cluster.wait_for(
            lambda futures=futures: sum(f.done() for f in futures.values()) >= 40,  # type: ignore[misc]
            message="some calls to be acknowledged",
        )
        cluster.kill_broker()
        for key, future in futures.items():
            try:
                future.result()
            except grpc.RpcError:
                continue
            acked.add(key)
        cluster.start_broker()  # a refusal fails here, with the broker's log
        present = set(_adds(cluster))
        missing = acked - present
        assert not missing, f"round {round_}: acknowledged but gone after SIGKILL: {missing}"
    log = cluster.broker.log_path.read_text(errors="replace")
    assert "damaged" not in log and "missing acknowledged" not in log


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path]]:
    """A cluster whose broker holds CALLS adds in an SST file (and a few in the log),
    stopped with SIGTERM, and a pristine copy of its data dir."""
    cluster = Cluster(tmp_path_factory.mktemp("stopped"), services=(PLAYGROUND,))
    with cluster:
        _fill(cluster)
        cluster.restart_broker()  # opening replays the log into an SST file
        _fill(cluster, 20)  # the same keys again: nothing new, but the log is not empty
        assert cluster.broker.terminate() == 0
        pristine = cluster.tmp / "pristine"
        shutil.copytree(cluster.data_dir, pristine)
        assert list(pristine.glob("*.sst")), sorted(os.listdir(pristine))
        yield cluster, pristine


def _damage(data_dir: Path, name: str) -> Path:
    """Damages the file `name` names (a glob), the way a bad disk would."""
    path = sorted(data_dir.glob(name))[-1]
    size = path.stat().st_size
    if size == 0:  # LOCK: its content means nothing, but it should not matter either
        path.write_bytes(b"\xff" * 16)
    elif size < 64:  # CURRENT, IDENTITY, the high-water mark: garble what is there
        _flip(path, at=max(0, size // 2 - 4), count=8)
    else:
        _flip(path)
    return path


@pytest.mark.parametrize(
    "name",
    [
        "MANIFEST-*",
        "CURRENT",
        "OPTIONS-*",
        "*.sst",
        "IDENTITY",
        "LOCK",
        HIGH_WATER,
        "rocksdict-config.json",
    ],
)
def test_a_damaged_file_starts_with_everything_or_refuses(
    stopped: tuple[Cluster, Path], name: str
) -> None:
    cluster, pristine = stopped
    shutil.rmtree(cluster.data_dir)
    shutil.copytree(pristine, cluster.data_dir)
    damaged = _damage(cluster.data_dir, name)
    log_start = cluster.broker.log_path.stat().st_size
    try:
        cluster.start_broker()
    except AssertionError:
        with cluster.broker.log_path.open("rb") as f:
            f.seek(log_start)
            output = f.read().decode(errors="replace")
        failures = [line for line in output.splitlines() if "CRITICAL" in line]
        assert len(failures) == 1 and "Traceback" not in output, output
        assert "restore" in failures[0], failures[0]
        return
    try:
        try:
            adds = _adds(cluster)
        except grpc.RpcError as e:  # a read that hits the damage: loud, not silent
            assert "damaged" in (e.details() or ""), e
            return
        assert len(adds) == CALLS, f"started with {len(adds)} of {CALLS} after damaging {damaged}"
    finally:
        cluster.broker.terminate()
