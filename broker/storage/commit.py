"""Group commit: many callers' writes share one RocksDB write and one fsync."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .kv import KV

log = logging.getLogger("broker.storage")


class Batch:
    """Writes that become durable together, and what to do once they are."""

    def __init__(self) -> None:
        self.puts: list[tuple[bytes, bytes | None]] = []
        self.after: list[Callable[[], None]] = []
        self.queued: list[Callable[[], None]] = []

    def put(self, key: bytes, value: bytes) -> None:
        """Sets `key` to `value`."""
        self.puts.append((key, value))

    def delete(self, key: bytes) -> None:
        """Removes `key`."""
        self.puts.append((key, None))

    def then(self, action: Callable[[], None]) -> None:
        """Runs `action` once the batch is durable (actions run in commit order)."""
        self.after.append(action)

    def once_queued(self, action: Callable[[], None]) -> None:
        """Runs `action` right after the batch is queued: for work that orders itself
        behind the batch (a barrier) instead of waiting a whole commit round for it."""
        self.queued.append(action)


class Committer:
    """Writes batches in submission order, fsyncing each group once.

    While one group is being fsynced the next accumulates, so the group size follows
    the load: one batch per fsync when idle, hundreds under pressure.

    Args:
        kv: The store; `write` runs on the loop, `sync` in a worker thread.
        sync: False skips fsync (tests only); durability then rests on the OS.
    """

    def __init__(
        self,
        kv: KV,
        sync: bool = True,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        self._kv = kv
        self._sync = sync
        # Told (batches in the group, fsync seconds) after each group commit.
        self._observe = observe
        self._pending: list[tuple[Batch, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self.groups = 0
        self.batches = 0
        self.sync_seconds = 0.0

    def submit(self, batch: Batch) -> asyncio.Future[None]:
        """Queues `batch`; the future resolves once it is durable and its actions ran."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((batch, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush_loop())
        for action in batch.queued:
            action()
        return future

    async def commit(self, batch: Batch) -> None:
        """Submits `batch` and waits until it is durable."""
        await self.submit(batch)

    def barrier(self) -> asyncio.Future[None]:
        """Resolves once everything submitted so far is durable."""
        return self.submit(Batch())

    async def drain(self) -> None:
        """Waits until nothing is pending."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        # Let the events already on the loop add their batches to this first group.
        await asyncio.sleep(0)
        while self._pending:
            group, self._pending = self._pending, []
            puts = [p for batch, _ in group for p in batch.puts]
            synced = 0.0
            try:
                if puts:
                    self._kv.write(puts)
                    if self._sync:
                        started = time.perf_counter()
                        await loop.run_in_executor(None, self._kv.sync)
                        synced = time.perf_counter() - started
                        self.sync_seconds += synced
            except Exception as e:  # a failed write must not be acknowledged
                log.critical("journal write failed: %r", e)
                for _, future in group:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.groups += 1
            self.batches += len(group)
            if self._observe is not None and puts:
                self._observe(len(group), synced)
            for batch, future in group:
                for action in batch.after:
                    try:
                        action()
                    except Exception:
                        log.exception("post-commit action failed")
                if not future.done():
                    future.set_result(None)
