"""A data dir's partition count, fixed when the data dir is created.

A data dir made by the single-process broker is its one partition's RocksDB itself. A
data dir made with `--workers` holds `CLUSTER` (the partition count, as JSON) and one
RocksDB per partition under `partitions/`. The two kinds never open as each other: the
partition count is what routes every key and id, so a start that disagrees with it is
refused before anything is written.
"""

from __future__ import annotations

import json
import os

MARKER = "CLUSTER"
# The most partitions a data dir can have: each is a RocksDB and a worker's share of it.
MAX_PARTITIONS = 256


class LayoutError(Exception):
    """The data dir and the requested start disagree; the message says how to fix it."""


def partition_dir(data_dir: str, partition: int) -> str:
    """Where partition `partition`'s journal lives."""
    return os.path.join(data_dir, "partitions", f"p{partition:03d}")


def read(data_dir: str) -> int | None:
    """The partition count recorded in `data_dir`, or None if it has none."""
    path = os.path.join(data_dir, MARKER)
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LayoutError(f"{path} is unreadable ({e}); restore it from a backup") from e
    count = raw.get("partitions") if isinstance(raw, dict) else None
    if not isinstance(count, int) or not 1 <= count <= MAX_PARTITIONS:
        raise LayoutError(f"{path} holds no valid partition count: {raw!r}")
    return count


def is_single_process(data_dir: str) -> bool:
    """Whether `data_dir` is a single-process broker's journal (RocksDB's own files)."""
    return os.path.exists(os.path.join(data_dir, "CURRENT"))


def check(data_dir: str, workers: int, partitions: int | None) -> int:
    """The partition count to run `workers` workers with, without writing anything.

    Args:
        data_dir: The data dir (may not exist yet).
        workers: The number of worker processes asked for.
        partitions: The count asked for (None: the recorded one, else one per worker).

    Raises:
        LayoutError: the numbers are impossible or disagree with the data dir.
    """
    if workers < 1:
        raise LayoutError(f"--workers must be at least 1, got {workers}")
    if partitions is not None and not 1 <= partitions <= MAX_PARTITIONS:
        raise LayoutError(f"--partitions must be between 1 and {MAX_PARTITIONS}, got {partitions}")
    if is_single_process(data_dir):
        raise LayoutError(
            f"{data_dir} is a single-process broker's data dir; start it without "
            "--workers, or give --workers a new data dir"
        )
    recorded = read(data_dir)
    if recorded is not None and partitions is not None and partitions != recorded:
        raise LayoutError(
            f"{data_dir} was created with {recorded} partitions, not {partitions}: the "
            f"partition count is fixed when a data dir is created; start with "
            f"--partitions {recorded} (or without --partitions)"
        )
    count = recorded or partitions or workers
    if workers > count:
        raise LayoutError(
            f"--workers {workers} is more than the {count} partitions of {data_dir}: "
            f"each worker owns at least one partition; use --workers {count} or fewer"
        )
    return count


def create(data_dir: str, partitions: int) -> None:
    """Records the partition count (once: an existing record is left as it is)."""
    if read(data_dir) is not None:
        return
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, MARKER)
    temp = path + ".tmp"
    with open(temp, "w", encoding="utf-8") as f:
        json.dump({"partitions": partitions}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def refuse_cluster_dir(data_dir: str) -> None:
    """Stops a single-process start on a data dir made for workers."""
    count = read(data_dir)
    if count is not None:
        raise LayoutError(
            f"{data_dir} holds {count} partitions made with --workers; start it with "
            "--workers (1 or more)"
        )
