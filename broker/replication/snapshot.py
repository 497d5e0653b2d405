"""Snapshots: a partition's store as of a log position, so the log can be cut below it.

A leader takes a RocksDB checkpoint (consistent, hard links, taken between two writes
on the event loop, so its position key is exactly what it holds), packs it as a tar
and stores it as object `p<n>` in the `durable_snapshots` object store, replicated like
the logs. A follower whose next log entry was trimmed away (a wiped or long-dead node)
restores the latest snapshot and follows the log from its position.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import tarfile
import uuid

import nats.js.errors
from nats.js.api import ObjectMeta
from nats.js.object_store import ObjectStore

from ..storage import position
from ..storage.kv import RocksKV

log = logging.getLogger("broker.replication")


def name(partition: int) -> str:
    """The snapshot object of `partition`."""
    return f"p{partition}"


async def take(store: ObjectStore, partition: int, kv: RocksKV, work_dir: str) -> int:
    """Stores a snapshot of `kv`; returns the log position it covers."""
    staging = os.path.join(work_dir, f".snapshot-{uuid.uuid4().hex}")
    os.makedirs(work_dir, exist_ok=True)
    covered = position.get(kv)
    kv.checkpoint(staging)  # no await between: the position read is what it holds
    try:
        data = await asyncio.to_thread(_pack, staging)
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)
    meta = ObjectMeta(name=name(partition), description=json.dumps({"position": covered}))
    await store.put(name(partition), data, meta=meta)
    log.info(
        "partition %d: snapshot at log entry %d stored (%d bytes)", partition, covered, len(data)
    )
    return covered


# A read of a snapshot replaced meanwhile waits for chunks the replacement purged, and
# nats-py's `get` has no deadline of its own: a read gets this long plus a second per
# this many bytes, then fails and is tried again.
READ_BASE_S = 10.0
READ_BYTES_PER_S = 1_000_000


class SnapshotUnreadable(Exception):
    """The stored snapshot could not be read in time (replaced while it was read, say)."""


async def latest(
    store: ObjectStore, partition: int, base_s: float = READ_BASE_S
) -> tuple[int, bytes] | None:
    """The latest snapshot of `partition` (its position and bytes), or None.

    Raises:
        SnapshotUnreadable: Reading it took longer than its size allows.
        nats.errors.TimeoutError: Asking for its size went unanswered.
    """
    try:
        info = await store.get_info(name(partition))
    except nats.js.errors.ObjectNotFoundError:
        return None
    # Only the read is bounded here: NATS's own request timeout (a TimeoutError too)
    # must not be reported as a read that overran, before the read even had a bound.
    limit = base_s + (info.size or 0) / READ_BYTES_PER_S
    try:
        result = await asyncio.wait_for(store.get(name(partition)), limit)
    except nats.js.errors.ObjectNotFoundError:
        return None
    except TimeoutError:
        raise SnapshotUnreadable(
            f"reading snapshot {name(partition)} ({info.size} bytes) took over {limit:.0f} s"
        ) from None
    description = json.loads(result.info.description or "{}")
    return int(description.get("position", 0)), result.data or b""


async def position_of(store: ObjectStore, partition: int) -> int:
    """The position the latest snapshot of `partition` covers (0: none)."""
    try:
        info = await store.get_info(name(partition))
    except nats.js.errors.ObjectNotFoundError:
        return 0
    return int(json.loads(info.description or "{}").get("position", 0))


class BadSnapshot(Exception):
    """The stored snapshot is not one a leader took: it does not unpack into a store at
    the position it claims."""


def stage(data: bytes, path: str, covered: int) -> str:
    """Unpacks the snapshot in `data` beside the store at `path` and checks that it is a
    store at log position `covered`; returns where it is, for `swap`. The store at
    `path` is not touched, so a bad snapshot leaves it as it was.

    Raises:
        BadSnapshot: It does not unpack, does not open, or holds another position.
    """
    staging = f"{path}.restoring"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            tar.extractall(staging, filter="data")
        kv = RocksKV(staging)
        try:
            held = position.get(kv)
        finally:
            kv.close()
    except Exception as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise BadSnapshot(f"it does not unpack into a store ({e})") from None
    if held != covered:
        shutil.rmtree(staging, ignore_errors=True)
        raise BadSnapshot(f"it holds log position {held}, not the {covered} it claims")
    return staging


def swap(staging: str, path: str) -> None:
    """Replaces the store at `path` (closed) with the one `stage` unpacked."""
    old = f"{path}.replaced"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(path):
        os.rename(path, old)
    os.rename(staging, path)
    shutil.rmtree(old, ignore_errors=True)


def _pack(directory: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for entry in sorted(os.listdir(directory)):
            tar.add(os.path.join(directory, entry), arcname=entry)
    return out.getvalue()
