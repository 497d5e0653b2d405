"""Group commit: many callers' writes share one RocksDB write and one fsync."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Protocol

from . import position
from .kv import KV, AppendInDoubt, StoreUnavailable

Write = tuple[bytes, bytes | None]

log = logging.getLogger("broker.storage")


class Batch:
    """Writes that become durable together, and the actions that follow them.

    Actions are data (`broker.core.actions`); storage only keeps them in order and hands
    them to the committer's `carry_out` once the writes are durable. `urgent` ones are
    handed over as soon as the batch is queued: work that orders itself behind the batch
    (a barrier) or must not wait for it.
    """

    __slots__ = ("actions", "puts", "urgent")

    def __init__(self) -> None:
        self.puts: list[tuple[bytes, bytes | None]] = []
        self.actions: list[object] = []
        self.urgent: list[object] = []

    def put(self, key: bytes, value: bytes) -> None:
        """Sets `key` to `value`."""
        self.puts.append((key, value))

    def delete(self, key: bytes) -> None:
        """Removes `key`."""
        self.puts.append((key, None))

    def then(self, action: object) -> None:
        """Carries `action` out once the batch is durable (in commit order)."""
        self.actions.append(action)

    def now(self, action: object) -> None:
        """Carries `action` out as soon as the batch is queued."""
        self.urgent.append(action)


class _SyncThread:
    """Runs fsyncs on a thread of its own.

    Handing a request to a waiting thread and hearing back through
    `call_soon_threadsafe` costs the loop less than an executor's futures do (about
    70 us per commit here), and the fsync itself runs without the GIL.
    """

    def __init__(self, sync: Callable[[], None]) -> None:
        self._sync = sync
        self._requests: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self) -> asyncio.Future[None]:
        """Schedules one sync; the future resolves (or raises) when it is done."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._serve, name="journal-sync", daemon=True)
            self._thread.start()
        self._requests.put((loop, future))
        return future

    def _serve(self) -> None:
        while True:
            loop, future = self._requests.get()
            error: BaseException | None = None
            try:
                self._sync()
            except BaseException as e:  # handed to the waiting coroutine, which retries
                error = e
            try:
                loop.call_soon_threadsafe(_settle, future, error)
            except RuntimeError:
                pass  # the loop is closed: nobody waits any more


# A disk whose last fsync took longer than this (seconds) is never synced on the loop.
INLINE_SYNC_LIMIT = 0.005
# How often a bounded `drain` looks at the writes' health.
_DRAIN_POLL_S = 0.25


class _Abandoned(StoreUnavailable):
    """A failing write given up at shutdown (see `Committer.drain`)."""


# Batches cut from the queue together, with the futures their submitters wait on.
_Group = list[tuple[Batch, asyncio.Future[None]]]


class Log(Protocol):
    """A replicated log the committer appends to before applying (cluster mode)."""

    async def append_batches(self, batches: list[list[Write]]) -> list[tuple[list[Write], int]]:
        """Appends the batches' writes as one or more entries, each once a quorum stored
        it; returns each entry's writes and sequence, in order. Raises `StoreUnavailable`
        when this node may no longer append (another leads)."""
        ...

    def turn(self) -> AbstractAsyncContextManager[None]:
        """Waits until this partition may append (`broker.replication.turns`): the
        committer cuts its next group inside, so batches wait in the queue meanwhile."""
        ...


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class Committer:
    """Writes batches in submission order, fsyncing each group once.

    While one group is being fsynced the next accumulates, so the group size follows
    the load: one batch per fsync when idle, hundreds under pressure.

    Args:
        kv: The store; `write` runs on the loop, `sync` on a thread of its own.
        sync: False skips fsync (tests only); durability then rests on the OS.
        log: Cluster mode: a group is durable once this replicated log stored it; it is
            then applied to `kv` (with its log position) and never fsynced here, the log
            being the copy that counts.
        quiet: Whether a single flow of work is using the loop (one attempt in flight).
            Then a group that hands no urgent work over is fsynced on the loop itself:
            nothing else could run meanwhile, and it saves the sync thread's two
            wake-ups, about 0.2 ms of a lone call's latency here. A disk slower than
            `INLINE_SYNC_LIMIT` is always synced on the thread.
    """

    def __init__(
        self,
        kv: KV,
        sync: bool = True,
        observe: Callable[[int, float], None] | None = None,
        carry_out: Callable[[list[object]], None] | None = None,
        log: Log | None = None,
        quiet: Callable[[], bool] | None = None,
    ) -> None:
        self._kv = kv
        self._log = log
        # Set (with the reason) once the log refuses this node's appends for good.
        self.lost: StoreUnavailable | None = None
        self.lost_event = asyncio.Event()
        # Given each batch's actions: urgent ones when it is queued, the rest once durable.
        self._carry_out = carry_out
        self._syncer = _SyncThread(kv.sync)
        self._sync = sync
        self._quiet = quiet
        self._last_sync = 0.0
        # Told (batches in the group, fsync seconds) after each group commit.
        self._observe = observe
        self._pending: list[tuple[Batch, asyncio.Future[None]]] = []
        # The last future of the group being written now, if any.
        self._in_flight: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.groups = 0
        self.batches = 0
        self.sync_seconds = 0.0
        # False while writes fail (e.g. a full disk); they are retried until they succeed.
        self._healthy = True
        self._failing_since = 0.0
        # Set by a shutdown's `drain` that gave up on failing writes.
        self._abandon = False
        # Told each change of `healthy`.
        self.health_listeners: list[Callable[[bool], None]] = []
        self.last_error = ""

    @property
    def healthy(self) -> bool:
        """Whether the last write succeeded (False while writes fail and are retried, or
        for good once a cluster node lost the partition)."""
        return self._healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        if value != self._healthy:
            self._healthy = value
            if not value:
                self._failing_since = time.monotonic()
            for listener in self.health_listeners:
                listener(value)

    def submit(self, batch: Batch) -> asyncio.Future[None]:
        """Queues `batch`; the future resolves once it is durable and its actions ran."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.lost is not None:
            future.set_exception(self.lost)
            future.exception()  # retrieved: most submitters do not wait on it
            return future
        self._pending.append((batch, future))
        try:
            if batch.urgent:
                # Before the flush task is created: the urgent work (an attempt's start)
                # then gets the loop before the write does (see `_flush_loop`).
                self._hand_over(batch.urgent)
        finally:
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._flush_loop())
        return future

    async def commit(self, batch: Batch) -> None:
        """Submits `batch` and waits until it is durable."""
        await self.submit(batch)

    def barrier(self) -> asyncio.Future[None]:
        """Resolves once everything submitted so far is durable."""
        return self.submit(Batch())

    def prior_barrier(self) -> asyncio.Future[None]:
        """Resolves once every batch submitted before the latest one is durable; the
        latest's own write may still be under way. Meant for the latest batch's urgent
        actions, which run inside its `submit`."""
        before = self._pending[-2][1] if len(self._pending) > 1 else self._in_flight
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if before is None:
            future.set_result(None)
        else:
            # A future of its own: a waiter cancelled must not cancel the submitter's.
            before.add_done_callback(
                lambda done: _settle(future, None if done.cancelled() else done.exception())
            )
        return future

    @property
    def idle(self) -> bool:
        """Whether nothing is queued or being written (a batch's actions included)."""
        return not self._pending and (self._task is None or self._task.done())

    async def drain(self, failing_for: float | None = None) -> None:
        """Waits until nothing is pending. With `failing_for`, gives up once writes have
        failed for that many seconds in a row (a full disk at shutdown): what is still
        queued was never acknowledged, so its batches fail `StoreUnavailable` and are
        left unwritten, where waiting would hang the shutdown until the disk has room."""
        while self._task is not None and not self._task.done():
            if failing_for is None or self._abandon:
                await asyncio.shield(self._task)
                continue
            if self.healthy:
                wait = failing_for
            else:
                wait = self._failing_since + failing_for - time.monotonic()
                if wait <= 0:
                    # The write being retried stops at its next failure.
                    self._abandon = True
                    continue
            # A poll with a bound: health changes inside the task's retries.
            await asyncio.wait({self._task}, timeout=min(wait, _DRAIN_POLL_S))

    def _fail_unwritten(self, group: _Group, error: StoreUnavailable) -> None:
        """Fails the group that could not be written and everything queued behind it."""
        log.error(
            "stopping with journal writes still failing (%s): the calls and steps queued "
            "behind them were never acknowledged and are not written",
            self.last_error,
        )
        for _, future in [*group, *self._pending]:
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: most submitters do not wait on it
        self._pending = []
        self._in_flight = None

    async def _flush_loop(self) -> None:
        if not self._is_quiet() or any(batch.urgent for batch, _ in self._pending):
            # Let the events already on the loop add their batches to this first group,
            # and the urgent work handed over get under way first: a new invocation's
            # first attempt sends its start to the endpoint before the write and fsync
            # that make the invocation durable, which then overlap the handler.
            await asyncio.sleep(0)
        while self._pending:
            if self._log is not None:
                replicated = await self._replicate_next()
                if replicated is None:
                    return
                group, synced = replicated
                puts: list[Write] = []
            else:
                group, self._pending = self._pending, []
                self._in_flight = group[-1][1]
                puts = [p for batch, _ in group for p in batch.puts]
                inline = not any(batch.urgent for batch, _ in group) and self._is_quiet()
                try:
                    synced = await self._write_until_durable(puts, inline) if puts else 0.0
                except _Abandoned as e:
                    self._fail_unwritten(group, e)
                    return
            self.groups += 1
            self.batches += len(group)
            if self._observe is not None and (puts or self._log is not None):
                self._observe(len(group), synced)
            for batch, future in group:
                if batch.actions:
                    try:
                        self._hand_over(batch.actions)
                    except Exception:
                        log.exception("post-commit action failed")
                if not future.done():
                    future.set_result(None)
            self._in_flight = None

    async def _replicate_next(self) -> tuple[_Group, float] | None:
        """Cuts the next group once this partition's turn to append came, appends it to
        the log, then applies each entry here; the group and the seconds the appends
        took, or None when this node may no longer append (the group failed)."""
        assert self._log is not None
        # A group of barriers alone appends nothing: it need not wait for a turn.
        writes = any(batch.puts for batch, _ in self._pending)
        async with self._log.turn() if writes else nullcontext():
            group, self._pending = self._pending, []
            self._in_flight = group[-1][1] if group else None
            batches = [b.puts for b, _ in group if b.puts]
            started = time.perf_counter()
            try:
                entries = await self._log.append_batches(batches) if batches else []
            except StoreUnavailable as e:
                self._lose(e, group)
                return None
            appended = time.perf_counter() - started
        for entry, sequence in entries:
            await self._apply_until_done([*entry, position.put(sequence)])
        return group, appended

    async def _apply_until_done(self, writes: list[Write]) -> None:
        """Applies a replicated entry to the local store, retrying a failed write (the
        entry is in the log already: it must land here too)."""
        delay = 0.05
        while True:
            try:
                self._kv.write(writes)
                self.healthy = True
                return
            except Exception as e:
                self.healthy = False
                self.last_error = str(e)
                log.error("applying a replicated entry failed, retrying: %s", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _lose(
        self, error: StoreUnavailable, group: list[tuple[Batch, asyncio.Future[None]]]
    ) -> None:
        """This node may no longer write: every batch not yet durable fails, and so does
        every later one; nothing of theirs is applied or carried out. The group being
        appended fails `AppendInDoubt`: its append may have been stored, and the next
        leader then applies it."""
        self.lost = error
        self.healthy = False
        self.last_error = str(error)
        log.warning("journal writes stop: %s", error)
        in_doubt = AppendInDoubt(f"{error} (with this write's append under way)")
        failures = [(f, in_doubt) for _, f in group] + [(f, error) for _, f in self._pending]
        for future, failure in failures:
            if not future.done():
                future.set_exception(failure)
                # Retrieved here: many of these futures have nobody waiting on them.
                future.exception()
        self._pending = []
        self.lost_event.set()

    def _is_quiet(self) -> bool:
        return self._quiet is not None and self._last_sync < INLINE_SYNC_LIMIT and self._quiet()

    def _hand_over(self, actions: list[object]) -> None:
        if self._carry_out is None:
            raise RuntimeError("a batch with actions, but the committer has no carry_out")
        self._carry_out(actions)

    async def _write_until_durable(
        self, puts: list[tuple[bytes, bytes | None]], inline: bool = False
    ) -> float:
        """Writes and syncs one group, retrying until it is durable; returns fsync seconds.
        `inline` syncs on the loop (see `quiet`) rather than on the sync thread.

        A failed write (a full disk, an I/O error) is never acknowledged and never
        dropped: the group waits, the store is reopened if it needs to be, and the write is
        tried again with backoff. Writes are idempotent puts and deletes, so retrying one
        that half succeeded is safe. Meanwhile `healthy` is False, which the ingress reads
        to turn new work away.
        """
        delay = 0.05
        reopen_failed = False
        while True:
            try:
                self._kv.write(puts)
                synced = 0.0
                if self._sync:
                    started = time.perf_counter()
                    if inline:
                        self._kv.sync()
                    else:
                        await self._syncer.run()
                    synced = self._last_sync = time.perf_counter() - started
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
                if self._abandon:
                    raise _Abandoned(f"journal writes failed at shutdown: {e}") from None
                inline = False  # a failing disk may also hang: keep the loop free
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                try:
                    self._kv.recover()
                except Exception as reopen_error:
                    # Once per outage, not every retry; the next round tries again.
                    if not reopen_failed:
                        log.error("reopening the journal store failed: %s", reopen_error)
                    reopen_failed = True
