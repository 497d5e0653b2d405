"""Starts of `python -m broker --workers` (and of the single-process broker on a workers'
data dir) that cannot work: exit code 2, one line on stderr saying what to change, and
nothing written: a new data dir is not created, an existing one is left byte for byte."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from broker.cluster import layout
from tests.support import PYTHON, ROOT, Process, free_port, wait_healthy


def _start(*args: str) -> subprocess.CompletedProcess[str]:
    ports = ["--ingress", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{free_port()}"]
    return subprocess.run(
        [PYTHON, "-m", "broker", *ports, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def _refused(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("python -m broker: error: "), lines[0]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.mark.parametrize(
    ("flags", "phrases"),
    [
        (["--workers", "0"], ["--workers must be at least 1, got 0"]),
        (["--workers", "-2"], ["--workers must be at least 1, got -2"]),
        (["--workers", "3", "--partitions", "2"], ["--workers 3 is more than the 2 partitions"]),
        (["--workers", "1", "--partitions", "0"], ["--partitions must be between 1 and 256"]),
        (["--workers", "1", "--partitions", "999"], ["--partitions must be between 1 and 256"]),
        (["--partitions", "4"], ["--partitions 4 needs --workers"]),
    ],
    ids=[
        "workers-0",
        "workers-negative",
        "more-workers-than-partitions",
        "partitions-0",
        "partitions-too-many",
        "partitions-without-workers",
    ],
)
def test_impossible_start_writes_nothing(
    tmp_path: Path, flags: list[str], phrases: list[str]
) -> None:
    data = tmp_path / "data"

    result = _start("--data-dir", str(data), *flags)

    _refused(result, *phrases)
    assert not data.exists()


def test_workers_need_a_data_dir(tmp_path: Path) -> None:
    _refused(_start("--data-dir", "", "--workers", "2"), "--workers needs a --data-dir")


def test_another_partition_count_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    layout.create(str(data), 2)
    before = _tree(data)

    result = _start("--data-dir", str(data), "--workers", "1", "--partitions", "4")

    _refused(result, "was created with 2 partitions, not 4", "--partitions 2")
    assert _tree(data) == before
    # More workers than the recorded count, without --partitions.
    _refused(_start("--data-dir", str(data), "--workers", "3"), "more than the 2 partitions")
    assert _tree(data) == before


def test_single_process_start_on_a_workers_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    layout.create(str(data), 3)
    before = _tree(data)

    result = _start("--data-dir", str(data))

    _refused(result, "holds 3 partitions made with --workers", "start it with --workers")
    assert _tree(data) == before


def test_workers_on_a_single_process_data_dir_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    admin = f"127.0.0.1:{free_port()}"
    args = [PYTHON, "-m", "broker", "--data-dir", str(data), "--admin", admin]
    single = Process("broker", [*args, "--ingress", f"127.0.0.1:{free_port()}"], tmp_path / "b.log")
    single.start()
    try:
        wait_healthy(admin, time.monotonic() + 30, single)
    finally:
        assert single.terminate() == 0
    before = _tree(data)

    result = _start("--data-dir", str(data), "--workers", "2")

    _refused(result, "is a single-process broker's data dir", "start it without --workers")
    assert _tree(data) == before
