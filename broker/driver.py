"""The one seam between the partition's state machine and the world around it.

Events come in here (a call from the ingress, what an endpoint did, a timer, an operator's
action); the driver applies each to the partition, makes the batches it emits durable in
order (group commit), and carries out their actions: attempts go to the invoker, timers
to the timer queue, retries to the loop's clock, results to the callers waiting for them.
It composes the invoker and the timer queue itself, handing them its own entry points,
so nothing is wired after construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from .affinity import QuietPinning
from .clock import WALL, Clock, Handle
from .clock import now_ms as clock_ms
from .cluster.shipper import Shipper, Transport
from .config import Settings
from .core import actions
from .core.events import AttemptEvent
from .core.model import Invocation, Result, Status, UnknownInvocation
from .core.partition import Partition
from .core.schedules import Schedules, name_of
from .invoker import Invoker
from .multiplex import Streams
from .storage import Committer, invocations
from .storage.commit import Log
from .storage.kv import KV, StoreUnavailable
from .timers import TimerQueue

log = logging.getLogger("broker")

# A shutdown stops waiting for journal writes that have failed this long (seconds).
STOP_WRITES_FAILING_S = 3.0

P = ParamSpec("P")
T = TypeVar("T")


class Driver:
    """Applies events to the partition and carries out what follows.

    Args:
        partition: The state machine.
        kv: Its store, which the committer writes.
        settings: fsync, limits and the invoker's settings.
        observe: Told (batches, fsync seconds) after each group commit.
        clock: Where timers and retries wait (the wall, or a test's virtual clock).
        transport: Delivers outbox messages to other partitions (None: there are none).
        log: Cluster mode: the partition's replicated log (see `Committer`).
        pinning: Told how many attempts run each time one starts (`broker.affinity`).
    """

    def __init__(
        self,
        partition: Partition,
        kv: KV,
        settings: Settings,
        observe: Callable[[int, float], None] | None = None,
        clock: Clock = WALL,
        transport: Transport | None = None,
        log: Log | None = None,
        streams: Streams | None = None,
        pinning: QuietPinning | None = None,
    ) -> None:
        self.partition = partition
        self.pinning = pinning
        self.clock = clock
        self.committer = Committer(
            kv,
            sync=settings.fsync,
            observe=observe,
            carry_out=self._carry_out,
            log=log,
            quiet=lambda: self.invoker.in_flight <= 1,
        )
        self.invoker = Invoker(
            partition.registry,
            self.committer.barrier,
            self.committer.prior_barrier,
            self.on_attempt,
            partition.attempt_state,
            settings.endpoint_secret,
            settings.max_concurrency,
            settings.inactivity_timeout,
            settings.unary_first,
            settings.multiplex,
            streams,
            settings.stream_linger,
        )
        self.timers = TimerQueue(self.on_timer, clock)
        # Schedules' clocks: a heap of (due, name); a stale entry finds nothing due.
        self.schedules = Schedules(partition)
        self.schedule_timers = TimerQueue(self._schedule_due, clock)
        partition.completion_listeners.append(self._schedule_firing_ended)
        self._retries: dict[str, Handle] = {}
        # The one pending wake-up for rate-limited queues: (due ms, handle).
        self._limits_wake: tuple[int, Handle] | None = None
        self._waiters: dict[str, list[asyncio.Future[Result]]] = {}
        self.shipper = (
            None
            if transport is None
            else Shipper(
                partition.outbox,
                partition.placement.me,
                transport,
                self._outbox_acknowledged,
            )
        )

    def now_ms(self) -> int:
        """The driver's clock (the wall, or a test's virtual one), in ms since the epoch."""
        return clock_ms(self.clock)

    # ---- Applying events

    def apply(self, event: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Applies `event` (a partition method) and queues the batches it emitted."""
        result = event(*args, **kwargs)
        self._submit()
        return result

    async def commit(self, event: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Applies `event` and waits until what it wrote is durable."""
        result, durable = self._apply_durable(event, *args, **kwargs)
        await durable
        return result

    def _apply_durable(
        self, event: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> tuple[T, asyncio.Future[None]]:
        """Applies `event`; its result and a future of what it wrote being durable (its
        last batch, or when it wrote nothing, a barrier behind whatever is queued)."""
        result = event(*args, **kwargs)
        last = self._submit()
        return result, last if last is not None else self.committer.barrier()

    def _submit(self) -> asyncio.Future[None] | None:
        last = None
        for batch in self.partition.take():
            last = self.committer.submit(batch)
        return last

    def on_attempt(self, invocation_id: str, attempt: int, event: AttemptEvent) -> str | None:
        """What an endpoint did in an attempt (the invoker's report)."""
        return self.apply(self.partition.on_attempt, invocation_id, attempt, event)

    def _outbox_acknowledged(self, destination: int, seq: int) -> None:
        self.apply(self.partition.outbox_acknowledged, destination, seq)

    def on_timer(self, due_ms: int, invocation_id: str, entry_index: int) -> None:
        """A durable timer is due."""
        self.apply(self.partition.on_timer, due_ms, invocation_id, entry_index)

    def _limits_due(self) -> None:
        self._limits_wake = None
        self.apply(self.partition.on_limits_due)

    def _wake_limits(self, at_ms: int) -> None:
        # One timer is enough: when it fires the partition asks again for what still waits.
        if self._limits_wake is not None:
            if self._limits_wake[0] <= at_ms:
                return
            self._limits_wake[1].cancel()
        delay = max(0.0, (at_ms - clock_ms(self.clock)) / 1000)
        # A token refill is something invocations wait on: a virtual clock may jump to it.
        self._limits_wake = (at_ms, self.clock.call_later(delay, self._limits_due))

    def _schedule_due(self, due_ms: int, name: str, _: int) -> None:
        self.apply(self.schedules.on_due, name, clock_ms(self.clock))

    def _schedule_firing_ended(self, record: Invocation) -> None:
        # A queue-one schedule may have a slot waiting for this firing to end. Called
        # while carrying out a batch's actions: look at it from the clock's loop, later.
        name = name_of(record.idempotency_key)
        if name is not None and name in self.schedules.records:
            self.schedule_timers.add(0, name, 0)

    def _retry_due(self, invocation_id: str) -> None:
        self._retries.pop(invocation_id, None)
        self.apply(self.partition.on_retry_due, invocation_id)

    # ---- Callers

    def invoke(
        self,
        service: str,
        method: str,
        key: str,
        request: bytes,
        headers: dict[str, str],
        idempotency_key: str = "",
        traceparent: str = "",
    ) -> tuple[str, asyncio.Future[Result], asyncio.Future[None]]:
        """Starts (or, by identity, finds) an invocation; returns its id, its result, and
        a future of the moment it is durable (its creation's batch; for one it found, a
        barrier behind whatever is queued)."""
        created, durable = self._apply_durable(
            self.partition.invoke,
            service,
            method,
            key,
            request,
            headers,
            idempotency_key=idempotency_key,
            traceparent=traceparent,
        )
        return created, self.attach(created), durable

    def attach(self, invocation_id: str) -> asyncio.Future[Result]:
        """A future of the invocation's result (immediate if it already completed)."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        if invocation_id in self.partition.live:
            self._waiters.setdefault(invocation_id, []).append(future)
            return future
        record = invocations.get(self.partition.kv, invocation_id)
        if record is None or record.status != Status.COMPLETED:
            future.set_exception(UnknownInvocation(invocation_id))
        else:
            future.set_result(record.result)
        return future

    def detach(self, invocation_id: str, future: asyncio.Future[Result]) -> None:
        """Forgets a waiter whose caller went away (the invocation goes on): thousands
        of abandoned callers must not pin a future each until their invocations end."""
        waiters = self._waiters.get(invocation_id)
        if waiters is not None:
            with contextlib.suppress(ValueError):
                waiters.remove(future)
            if not waiters:
                del self._waiters[invocation_id]

    # ---- Carrying out actions

    def _carry_out(self, batch_actions: list[object]) -> None:
        for action in batch_actions:
            match action:
                case actions.StartAttempt():
                    self.invoker.start(action)
                    if self.pinning is not None:
                        self.pinning.attempts_in_flight(self.invoker.in_flight)
                case actions.SendCompletion(invocation_id, attempt, index, result):
                    self.invoker.send_completion(invocation_id, attempt, index, result)
                case actions.AbandonAttempt(invocation_id, attempt, _):
                    self.invoker.abandon(invocation_id, attempt)
                case actions.ArmTimer(due_ms, invocation_id, entry_index):
                    self.timers.add(due_ms, invocation_id, entry_index)
                case actions.ArmSchedule(due_ms, name):
                    self.schedule_timers.add(due_ms, name, 0)
                case actions.ScheduleRetry(invocation_id, delay):
                    self._cancel_retry(invocation_id)
                    self._retries[invocation_id] = self.clock.call_later(
                        delay, functools.partial(self._retry_due, invocation_id)
                    )
                case actions.CancelRetry(invocation_id):
                    self._cancel_retry(invocation_id)
                case actions.WakeLimits(at_ms):
                    self._wake_limits(at_ms)
                case actions.AnswerCallers(invocation_id, result):
                    self.partition.finished(invocation_id)
                    for waiter in self._waiters.pop(invocation_id, []):
                        if not waiter.done():
                            waiter.set_result(result)
                case actions.IdentityWritten(identity, invocation_id):
                    self.partition.dedup.written(identity, invocation_id)
                case actions.PromiseWritten(service, key, name):
                    self.partition.waits.promise_written(service, key, name)
                case actions.Evict(invocation_id, version):
                    self.partition.evict(invocation_id, version)
                case actions.Ship(destination, seq):
                    if self.shipper is None:
                        raise RuntimeError("an outbox message with no other partition to go to")
                    self.shipper.durable(destination, seq)
                case _:
                    raise TypeError(f"unknown action {action!r}")

    def _cancel_retry(self, invocation_id: str) -> None:
        handle = self._retries.pop(invocation_id, None)
        if handle is not None:
            handle.cancel()

    def idle(self) -> bool:
        """Whether every invocation is waiting: no attempt running or queued for a
        slot (the partition sets `attempt` when it starts one, clears it when the
        attempt ends or suspends) and no batch queued, being written or carried out.
        A virtual clock may then jump to the next timer: nothing else can happen first.
        """
        return self.committer.idle and all(
            live.attempt == 0 for live in self.partition.live.values()
        )

    # ---- Lifecycle

    def start(self) -> None:
        """Recovers the partition from storage and starts the clocks."""
        self.apply(self.partition.recover)
        self.apply(self.schedules.recover)
        self.timers.start()
        self.schedule_timers.start()

    def abandon_waiters(self) -> None:
        """Answers every caller still waiting for a result: this process stops serving
        the partition (it shuts down, or a cluster node hands the partition over). The
        invocations go on wherever the partition is served next."""
        error = StoreUnavailable(
            "this broker stopped serving the invocation's partition before it ended (a "
            "shutdown, or a cluster leader change); it goes on: attach to it by its "
            "invocation id, or call again with the same idempotency key"
        )
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)
                    future.exception()  # retrieved: the caller sees it through a shield
        self._waiters.clear()

    async def stop(self) -> None:
        """Stops the clocks and the attempts (they resume after a restart), then lets the
        queued writes finish."""
        for handle in self._retries.values():
            handle.cancel()
        self._retries.clear()
        if self._limits_wake is not None:
            self._limits_wake[1].cancel()
            self._limits_wake = None
        await self.timers.stop()
        await self.schedule_timers.stop()
        await self.invoker.close()
        if self.pinning is not None:
            self.pinning.unpin()
        if self.shipper is not None:
            await self.shipper.close()
        # Writes failing for that long (a full disk) are given up: they were never
        # acknowledged, and waiting for room would hang the shutdown.
        await self.committer.drain(failing_for=STOP_WRITES_FAILING_S)
