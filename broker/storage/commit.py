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
        # False while writes fail (e.g. a full disk); they are retried until they succeed.
        self.healthy = True
        self.last_error = ""

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
        # Let the events already on the loop add their batches to this first group.
        await asyncio.sleep(0)
        while self._pending:
            group, self._pending = self._pending, []
            puts = [p for batch, _ in group for p in batch.puts]
            synced = await self._write_until_durable(puts) if puts else 0.0
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

    async def _write_until_durable(self, puts: list[tuple[bytes, bytes | None]]) -> float:
        """Writes and syncs one group, retrying until it is durable; returns fsync seconds.

        A failed write (a full disk, an I/O error) is never acknowledged and never
        dropped: the group waits, the store is reopened if it needs to be, and the write is
        tried again with backoff. Writes are idempotent puts and deletes, so retrying one
        that half succeeded is safe. Meanwhile `healthy` is False, which the ingress reads
        to turn new work away.
        """
        loop = asyncio.get_running_loop()
        delay = 0.05
        while True:
            try:
                self._kv.write(puts)
                synced = 0.0
                if self._sync:
                    started = time.perf_counter()
                    await loop.run_in_executor(None, self._kv.sync)
                    synced = time.perf_counter() - started
                    self.sync_seconds += synced
                if not self.healthy:
                    log.warning("journal writes succeed again")
                self.healthy = True
                self.last_error = ""
                return synced
            except Exception as e:
                if self.healthy:
                    log.critical("journal write failed, retrying until it succeeds: %s", e)
                self.healthy = False
                self.last_error = str(e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                try:
                    self._kv.recover()
                except Exception as reopen_error:
                    log.error("reopening the journal store failed: %s", reopen_error)
