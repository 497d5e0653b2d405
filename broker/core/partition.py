"""The broker's state machine for one partition of invocations (today: all of them).

Every change goes through here, and nothing here does I/O or needs an event loop. Each
event (a new invocation, what an endpoint did in an attempt, a fired timer, an operator's
action) updates the in-memory view at once and writes the same change into a `Batch`,
with the actions that must follow (`actions.py`) attached to it as data. The batches
wait in `take()` for the driver (`driver.py`), which makes them durable in order and
carries their actions out: it is the only seam to the invoker, the clocks and callers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from durable.v1 import cluster_pb2, journal_pb2, protocol_pb2

from .. import codes, tracing
from .. import registry as reg
from ..cluster.placement import Placement
from ..config import Settings
from ..metrics import Metrics
from ..storage import Batch, inbox, invocations, journal, state, timers
from ..storage import limits as limit_table
from ..storage.kv import KV
from . import actions, attempts, commands, entropy, limits, messages, recovery, retries
from .dedup import Dedup
from .events import AttemptEvent, Ended, Failed, Proposed, RanResult, Suspended
from .locks import KeyLocks, Lock
from .model import (
    Entry,
    IdempotencyConflict,
    Invocation,
    Live,
    Result,
    Status,
    UnknownInvocation,
    failure,
    now_ms,
)
from .outbox import Outbox
from .waits import Waits

log = logging.getLogger("broker.core")


class Partition:
    """Owns every invocation's lifecycle, key locks and the journal writes.

    Args:
        kv: The store, read directly; writes only ever go out as batches.
        registry: The deployed services.
        settings: Limits, retry and retention settings.
        now: Milliseconds since the epoch (a function only read, so this stays pure).
        placement: This partition among the others (default: the only one).
    """

    def __init__(
        self,
        kv: KV,
        registry: reg.Registry,
        settings: Settings,
        now: Callable[[], int] = now_ms,
        placement: Placement | None = None,
    ) -> None:
        self.kv = kv
        self.placement = placement or Placement()
        self.outbox = Outbox(kv, self.placement)
        # Read for every timestamp and due time: the wall clock, or a test's virtual one.
        self._now = now
        self.registry = registry
        self.settings = settings
        self.live: dict[str, Live] = {}
        self.locks = KeyLocks()
        self.limiter = limits.Limiter(self._declared_limits)
        # The token buckets' clock (the only one the partition reads for a decision):
        # the partition's own by default; tests may replace it.
        self.clock: Callable[[], int] = now
        self.dedup = Dedup(kv, registry)
        self.waits = Waits(
            kv, self.live, self.completed, self.complete_entry, self.complete_waiter, self.outbox
        )
        self.metrics = Metrics()
        # One bound method shared by every Live (a fresh one each would cost 64 bytes).
        self.journal_loader = self._load_journal
        self._out: list[Batch] = []
        # Called with each record once its completion is durable (the admin API's index
        # of completed invocations keeps itself current this way).
        self.completion_listeners: list[Callable[[Invocation], None]] = []

    # ---- The seam to the driver

    def now_ms(self) -> int:
        """The partition's clock, in milliseconds since the epoch."""
        return self._now()

    def submit(self, batch: Batch) -> None:
        """Emits a batch: it becomes durable, and its actions run, in emission order."""
        self._out.append(batch)

    def take(self) -> list[Batch]:
        """The batches emitted since the last call, oldest first."""
        out, self._out = self._out, []
        return out

    # ---- Ingress

    def invoke(
        self,
        service: str,
        method: str,
        key: str,
        request: bytes,
        headers: dict[str, str],
        idempotency_key: str = "",
        traceparent: str = "",
    ) -> str:
        """Starts an invocation, or finds the one its identity names; returns its id.

        Raises:
            IdempotencyConflict: the idempotency key was used with another request body.
        """
        batch = Batch()
        invocation_id = self.invoke_in(
            batch,
            service,
            method,
            key,
            request,
            idempotency_key,
            headers=headers,
            traceparent=traceparent,
        )
        if batch.puts:  # nothing to write when the identity named an existing one
            self.submit(batch)
        return invocation_id

    def invoke_in(
        self,
        batch: Batch,
        service: str,
        method: str,
        key: str,
        request: bytes,
        idempotency_key: str,
        *,
        headers: dict[str, str] | None = None,
        traceparent: str = "",
    ) -> str:
        """Starts an invocation in `batch` (which the caller may write more into and
        submits), or finds the one its identity already names; returns its id.

        Raises:
            IdempotencyConflict: the idempotency key was used with another request body.
        """
        home = self.placement.home(service, method, key, idempotency_key)
        if home is not None and home != self.placement.me:
            # Fired here (a schedule) for a key or identity another partition owns: it
            # finds or starts the invocation there.
            return self._invoke_remote(
                batch,
                home,
                service,
                method,
                key,
                request,
                traceparent,
                idempotency_key=idempotency_key,
                headers=headers,
            )
        ident = self.dedup.identity(service, method, key, idempotency_key)
        bound = self.dedup.binding(ident) if ident is not None else None
        if bound is not None:
            if idempotency_key and not self.dedup.same_request(bound, service, method, request):
                raise IdempotencyConflict(bound.invocation_id)
            return bound.invocation_id
        live = self._create(
            batch,
            service=service,
            method=method,
            key=key,
            request=request,
            headers=headers or {},
            idempotency_key=idempotency_key,
            traceparent=traceparent,
        )
        return live.id

    def current_state(self, service: str, key: str) -> dict[str, bytes]:
        """An object's state as stored (after a barrier: every queued write included)."""
        return state.load(self.kv, service, key)

    def attempt_state(self, invocation_id: str, service: str, key: str) -> dict[str, bytes]:
        """An object's state for the start of an attempt of `invocation_id`, read once
        everything before it is written. An exclusive handler's state limit checks
        start from the same read (`commands.state_sizes`) instead of a second scan."""
        values = state.load(self.kv, service, key)
        live = self.live.get(invocation_id)
        if live is not None and live.record.exclusive and live.state_sizes is None:
            commands.state_sizes(self, live, values)
        return values

    def inbox(self, service: str, key: str) -> list[str]:
        """The invocations queued for an object's key, first in line first."""
        return self.locks.waiting((service, key))

    def lock_holder(self, service: str, key: str) -> str | None:
        """The invocation holding an object's key, if any."""
        return self.locks.holder((service, key))

    def output(self, invocation_id: str) -> Result | None:
        """The result if completed, None while running.

        Raises:
            UnknownInvocation: no such invocation is retained.
        """
        if invocation_id in self.live:
            return None
        done = self.completed(invocation_id)
        if done is None:
            raise UnknownInvocation(invocation_id)
        return done

    def find(self, service: str, method: str, key: str, idempotency_key: str) -> str | None:
        """The invocation bound to an idempotency key, or a workflow's run by its key
        (whatever idempotency key it was submitted with, as a second submission finds
        it)."""
        identity = self.dedup.identity(service, method, key, idempotency_key)
        return None if identity is None else self.dedup.find(identity)

    def completed(self, invocation_id: str) -> Result | None:
        """The result of a completed, retained invocation; None otherwise."""
        record = invocations.get(self.kv, invocation_id)
        if record is None or record.status != Status.COMPLETED:
            return None
        return record.result

    # ---- Reading

    def record(self, invocation_id: str) -> tuple[Invocation, list[Entry]]:
        """An invocation's record and journal."""
        live = self.live.get(invocation_id)
        if live is not None:
            self._touch(live)
            # Reading an evicted invocation must not pull it back into memory.
            if live.evicted:
                return live.snapshot(), journal.load(self.kv, invocation_id)
            return live.record, list(live.journal)
        record = invocations.get(self.kv, invocation_id)
        if record is None:
            raise UnknownInvocation(invocation_id)
        return record, journal.load(self.kv, invocation_id)

    def listed(self) -> list[Live]:
        """The live invocations, for the admin API to filter (`Live.listed`) and sort
        (`Live.order`) without copying or unpacking a record, before it reads the few a
        page returns (`live_record`)."""
        return list(self.live.values())

    def live_record(self, invocation_id: str) -> Invocation | None:
        """A live invocation's record as it is now, for reading only (None: not live)."""
        live = self.live.get(invocation_id)
        if live is None:
            return None
        self._touch(live)
        return live.snapshot()

    # ---- Creation and scheduling

    def _create(
        self,
        batch: Batch,
        *,
        service: str,
        method: str,
        key: str,
        request: bytes,
        headers: dict[str, str],
        idempotency_key: str = "",
        traceparent: str = "",
        caller: tuple[str, int] | None = None,
        invoke_at_ms: int = 0,
        invocation_id: str = "",
        refused: Result | None = None,
    ) -> Live:
        """A new invocation, started (or queued, or timed) in `batch`; with `refused`, one
        that can never run, created already completed with that failure so that it is
        on record (listed, described, retained) rather than lost without a trace."""
        target = self.registry.service(service)
        handler = target.methods.get(method) if target else None
        now = self.now_ms()
        record = Invocation(
            id=invocation_id or self.placement.new_id(),
            service=service,
            method=method,
            key=key,
            status=Status.PENDING,
            created_at_ms=now,
            idempotency_key=idempotency_key,
            exclusive=bool(
                refused is None and target and target.keyed and handler and not handler.shared
            ),
            invoke_at_ms=invoke_at_ms,
            random_seed=entropy.randbits64(),
            traceparent=traceparent,
        )
        if caller is not None:
            record.caller.invocation_id, record.caller.entry_index = caller
        live = Live(
            record,
            [Entry(input=journal_pb2.InputCommand(request=request, headers=headers))],
            self.journal_loader,
        )
        self.live[live.id] = live
        tracing.start_invocation(live, traceparent)
        self.metrics.count("started", service)
        journal.put(batch, live.id, 0, live.journal[0])
        if refused is not None:
            record.last_error = refused.failure.message
            self.complete(batch, live, refused)
            self.save(batch, live)
            return live
        ident = self.dedup.of(record)
        if ident is not None:
            self.dedup.bind(batch, ident, live.id, request)
        if invoke_at_ms > now:
            timers.put(batch, invoke_at_ms, live.id, -1)
            batch.then(actions.ArmTimer(invoke_at_ms, live.id, -1))
        else:
            self._enqueue(batch, live)
        if not live.attempt:  # an attempt that started wrote the record as it is now
            self.save(batch, live)
        # Each invocation's own steps log at DEBUG: at INFO they were two to four lines
        # per call, 10% of a lone call's latency and 12% of the broker's CPU per call
        # (paired `bench.ab`), and an operator's log is for what needs an operator.
        log.debug("invocation %s created: %s/%s key=%r", live.id, service, method, key)
        return live

    def _enqueue(self, batch: Batch, live: Live) -> None:
        """Runs the invocation now, or queues it behind the holder of its key."""
        if live.record.exclusive:
            lock = live.lock_key
            if self.locks.busy(lock):
                live.inbox_seq = self.locks.wait(lock, live.id)
                inbox.put(batch, *lock, live.inbox_seq, live.id)
                live.record.status = Status.PENDING
                return
            self.locks.hold(lock, live.id)
        self._start_or_queue(batch, live, fresh=True)

    # ---- Limits (key lock first, then the limits: a queued invocation holds its key, so
    # that slots only ever go to invocations that can run at once)

    def _start_or_queue(self, batch: Batch, live: Live, fresh: bool = False) -> None:
        """Starts a new invocation, or queues it behind its service's limits. `fresh`: it
        was created (or came due) in this batch and found its key free."""
        record = live.record
        if not self.limiter.limited(record.service):
            self.limiter.hold(live.id, record.service, record.method)
            record.status = Status.RUNNING
            self.start_attempt(batch, live, fresh)
            return
        seq = self.limiter.enqueue(live.id, record.service, record.method, limits.FRESH)
        record.status = Status.QUEUED
        if live.id not in self.admit(batch, record.service):
            limit_table.enqueue(batch, seq, live.id)
            self.metrics.count("queued", record.service)

    def admit(self, batch: Batch, service: str) -> set[str]:
        """Starts every queued invocation of the service its limits let start now, in
        order; asks to be woken when tokens refill if some wait for them. Returns the ids
        started."""
        started, wake = self.limiter.admit(service, self.clock())
        for waiter in started:
            live = self.live[waiter.invocation_id]
            if waiter.priority == limits.FRESH:
                limit_table.dequeue(batch, waiter.seq)
                live.record.status = Status.RUNNING
            self.start_attempt(batch, live)
        if wake is not None:
            batch.now(actions.WakeLimits(wake))
        return {waiter.invocation_id for waiter in started}

    def free_slot(self, batch: Batch, live: Live) -> None:
        """The invocation suspended or ended: its slot goes to the next in line."""
        waiter = self.limiter.leave(live.id)
        if waiter is not None and waiter.priority == limits.FRESH:
            limit_table.dequeue(batch, waiter.seq)
        service = self.limiter.release(live.id)
        if service is not None:
            self.admit(batch, service)

    def on_limits_due(self) -> None:
        """Tokens have refilled (the driver's clock): start whoever may start now."""
        batch = Batch()
        for service in self.limiter.services_waiting():
            self.admit(batch, service)
        self.submit(batch)

    def set_limits(self, service: str, method: str, limit: limits.Limit | None) -> None:
        """Sets (None: clears) a run-time limit; queued invocations it lets through
        start in the same batch."""
        batch = Batch()
        if limit is None:
            limit_table.delete_limit(batch, service, method)
        else:
            limit_table.put_limit(batch, service, method, limit.concurrency, limit.rate)
        self.limiter.set((service, method), limit, self.clock())
        self.admit(batch, service)
        self.submit(batch)

    def _declared_limits(self, service: str) -> dict[str, limits.Limit]:
        target = self.registry.service(service)
        if target is None:
            return {}
        return {method: limits.Limit(c, r) for method, (c, r) in target.limits.items()}

    def load_limits(self) -> None:
        """Reads the run-time limits from storage (at recovery)."""
        for service, method, concurrency, rate in limit_table.scan_limits(self.kv):
            self.limiter.set((service, method), limits.Limit(concurrency, rate))

    def release(self, batch: Batch, lock: Lock) -> None:
        """Frees a key and hands it to the next invocation in its inbox."""
        while (head := self.locks.release(lock)) is not None:
            seq, next_id = head
            inbox.delete(batch, *lock, seq)
            nxt = self.live.get(next_id)
            if nxt is None:
                continue
            nxt.inbox_seq = None
            self.locks.hold(lock, next_id)
            self._start_or_queue(batch, nxt)  # the key first, then the limits
            self.save(batch, nxt)
            return

    def start_attempt(self, batch: Batch, live: Live, fresh: bool = False) -> None:
        """Opens the next attempt of a running, backing-off or suspended invocation.
        `fresh`: a new invocation that found its key free in this batch."""
        if self.live.get(live.id) is not live or live.attempt:
            return
        record = live.record
        if record.status not in (Status.RUNNING, Status.BACKING_OFF, Status.SUSPENDED):
            return
        if not self.limiter.holds(live.id):
            # Resuming a suspended invocation: it takes a slot again, ahead of new ones.
            if self.limiter.is_queued(live.id):
                return
            if self.limiter.limited(record.service):
                self.limiter.enqueue(live.id, record.service, record.method, limits.RESUME)
                self.admit(batch, record.service)  # starts it (re-entering here) if it may
                return
            self.limiter.hold(live.id, record.service, record.method)
        if not record.deployment_id:
            target = self.registry.service(record.service)
            if target is None:
                retries.backoff(self, batch, live, f"service {record.service} is not registered")
                return
            handler = target.methods.get(record.method)
            if handler is None or not handler.implemented:
                # Accepted while a deployment had the handler (a delayed send, a
                # schedule, a queued call), it would start on one that has not: every
                # attempt would fail "no handler" and be retried for ever.
                message = (
                    f"{record.service}/{record.method} is not implemented by the deployment "
                    f"now serving {record.service} ({target.deployment_id}"
                    f"{self.registry.at(target.deployment_id)}): its endpoint has no "
                    "handler for it"
                )
                log.warning("invocation %s failed: %s", live.id, message)
                record.last_error = message
                self.complete(batch, live, failure(codes.UNIMPLEMENTED, message))
                self.save(batch, live)
                return
            record.deployment_id = target.deployment_id
        record.attempts += 1
        record.status = Status.RUNNING
        record.ClearField("waiting_on")
        live.attempt = record.attempts
        start = protocol_pb2.StartMessage(
            invocation_id=record.id,
            service=record.service,
            method=record.method,
            key=record.key,
            attempt=record.attempts,
            journal=live.journal,
            suspend_after_ms=int(self.settings.suspend_after * 1000),
            random_seed=record.random_seed,
            traceparent=tracing.start_attempt(live),
        )
        log.debug("invocation %s attempt %d starting", record.id, record.attempts)
        self.save(batch, live)
        # The invoker sends the start once everything queued before it is durable, and
        # reads the object's state then (so it includes a previous holder's last writes).
        # A new invocation's first attempt need not wait for the fsync that makes its
        # creation durable (see `actions.StartAttempt`): it overlaps it. One with state
        # qualifies only when its key was free and this batch writes none of the state:
        # then every value it reads is in a batch before this one.
        early = (
            record.attempts == 1
            and len(live.journal) == 1
            and (
                not record.key
                or (fresh and not state.written_in(batch, record.service, record.key))
            )
        )
        batch.now(
            actions.StartAttempt(record.id, record.attempts, record.deployment_id, start, early)
        )

    # ---- What an endpoint did in an attempt

    def on_attempt(self, invocation_id: str, attempt: int, event: AttemptEvent) -> str | None:
        """Applies one event of an attempt; returns why it fails the attempt, if it does.
        Events of an attempt that is no longer current change nothing."""
        live = self.live.get(invocation_id)
        if live is None:
            return attempts.after_completion(self, invocation_id, attempt, event)
        if live.attempt != attempt:
            return None
        match event:
            case Proposed(index, entry):
                return attempts.on_entry(self, live, index, entry)
            case RanResult(index, result):
                return attempts.on_run_result(self, live, index, result)
            case Suspended(waiting_on):
                return attempts.on_suspension(self, live, list(waiting_on))
            case Ended():
                return attempts.on_end(self, live)
            case Failed(message, retry_after, pause, non_determinism, terminal_code):
                attempts.on_failed(
                    self, live, message, retry_after, pause, non_determinism, terminal_code
                )
                return None

    def abandon_attempt(self, batch: Batch, live: Live, reason: str) -> None:
        """Stops the running attempt, if any: its stream is cancelled and whatever it
        still sends is ignored (the partition no longer knows it)."""
        attempt, live.attempt = live.attempt, 0
        tracing.end_attempt(live, error=reason)
        if attempt:
            batch.now(actions.AbandonAttempt(live.id, attempt, reason))

    # ---- Retries

    def on_retry_due(self, invocation_id: str) -> None:
        """A backing-off invocation's delay is over: its next attempt starts."""
        retries.on_retry_due(self, invocation_id)

    def resume(self, live: Live) -> None:
        """Retries a paused or backing-off invocation now."""
        retries.resume(self, live)

    def pause(self, live: Live) -> None:
        """Parks an invocation until `resume`; its journal is kept."""
        retries.pause(self, live)

    # ---- Journal commands with effects elsewhere

    def _target(
        self, service: str, method: str, request: bytes
    ) -> tuple[str, str | None, int | None]:
        """The callee's key; the running or retained invocation a workflow's run handler
        already has for that key (a second submission joins it); and the partition the
        callee lives in when that is another one (which then finds or starts it).

        Raises:
            registry.BadRequest: no such target, or the request lacks its key.
        """
        _, _, key = reg.resolve(self.registry, service, method, request)
        home = self.placement.home(service, method, key, "")
        if home is not None and home != self.placement.me:
            return key, None, home
        ident = self.dedup.identity(service, method, key, "")
        return key, self.dedup.find(ident) if ident is not None else None, None

    def _invoke_remote(
        self,
        batch: Batch,
        home: int,
        service: str,
        method: str,
        key: str,
        request: bytes,
        traceparent: str,
        caller: tuple[str, int] | None = None,
        invoke_at_ms: int = 0,
        idempotency_key: str = "",
        headers: dict[str, str] | None = None,
    ) -> str:
        """Starts an invocation in partition `home` through the outbox; returns its id
        (which an identity already bound there replaces)."""
        invocation_id = self.placement.new_id(home)
        message = cluster_pb2.InvokeMessage(
            invocation_id=invocation_id,
            service=service,
            method=method,
            key=key,
            request=request,
            traceparent=traceparent,
            invoke_at_ms=invoke_at_ms,
            idempotency_key=idempotency_key,
            headers=headers or {},
        )
        if caller is not None:
            message.caller_id, message.caller_index = caller
        self.outbox.send(batch, home, cluster_pb2.OutboxMessage(invoke=message))
        return invocation_id

    def journal_call(self, batch: Batch, live: Live, index: int, entry: Entry) -> Result | None:
        """Starts the callee of a call entry (or fails the entry if it cannot exist)."""
        call = entry.call
        try:
            key, existing, home = self._target(call.service, call.method, call.request)
        except reg.BadRequest as e:
            return failure(e.code, e.message)
        if home is not None:
            call.invocation_id = self._invoke_remote(
                batch,
                home,
                call.service,
                call.method,
                key,
                call.request,
                live.step_traceparent,
                caller=(live.id, index),
            )
            return None
        if existing is not None:
            call.invocation_id = existing
            return self.waits.attach(batch, (live.id, index), existing)
        child = self._create(
            batch,
            service=call.service,
            method=call.method,
            key=key,
            request=call.request,
            headers={},
            traceparent=live.step_traceparent,
            caller=(live.id, index),
        )
        call.invocation_id = child.id
        return None

    def journal_send(self, batch: Batch, live: Live, entry: Entry) -> None:
        """Starts (now or at its time) the target of a one-way send."""
        send = entry.send
        try:
            key, existing, home = self._target(send.service, send.method, send.request)
        except reg.BadRequest as e:
            # Nobody waits on a send to hear of it: the target's own invocation, failed
            # at birth, is where an operator finds what went wrong (as with a call's).
            refused = self._create(
                batch,
                service=send.service,
                method=send.method,
                key="",
                request=send.request,
                headers={},
                traceparent=live.step_traceparent,
                refused=failure(e.code, e.message),
            )
            send.invocation_id = refused.id
            log.warning(
                "invocation %s: one-way send to %s/%s refused (invocation %s): %s",
                live.id,
                send.service,
                send.method,
                refused.id,
                e.message,
            )
            return
        if home is not None:
            send.invocation_id = self._invoke_remote(
                batch,
                home,
                send.service,
                send.method,
                key,
                send.request,
                live.step_traceparent,
                invoke_at_ms=send.invoke_at_ms,
            )
            return
        if existing is not None:
            send.invocation_id = existing
            return
        child = self._create(
            batch,
            service=send.service,
            method=send.method,
            key=key,
            request=send.request,
            headers={},
            traceparent=live.step_traceparent,
            invoke_at_ms=send.invoke_at_ms,
        )
        send.invocation_id = child.id

    # ---- Completion

    def complete_entry(self, batch: Batch, live: Live, index: int, result: Result) -> None:
        """Records an entry's result; the handler sees it once it is durable."""
        entry = live.journal[index]
        if entry.HasField("result"):
            return  # already completed: a duplicate delivery
        entry.result.CopyFrom(result)
        entry.completed_at_ms = self.now_ms()
        journal.put(batch, live.id, index, entry)
        self.save(batch, live)
        self.deliver(batch, live, index, result)

    def deliver(self, batch: Batch, live: Live, index: int, result: Result) -> None:
        """Hands a completed entry to the running attempt, or resumes the invocation if
        it suspended waiting on it. (An attempt that suspends before the completion
        reaches it finds the result in the journal and restarts at once.)"""
        if live.attempt:
            batch.then(actions.SendCompletion(live.id, live.attempt, index, result))
        elif live.record.status == Status.SUSPENDED and index in live.record.waiting_on:
            log.debug("invocation %s resumed by entry %d", live.id, index)
            self.start_attempt(batch, live)

    def complete(self, batch: Batch, live: Live, result: Result) -> None:
        """Completes the invocation: answer its caller, free its key, retain its result."""
        record = live.record
        if record.status == Status.BACKING_OFF:
            batch.now(actions.CancelRetry(live.id))
        record.status = Status.COMPLETED
        record.result.CopyFrom(result)
        record.ClearField("waiting_on")
        record.expires_at_ms = self.now_ms() + int(self.settings.retention * 1000)
        invocations.schedule_expiry(batch, record.expires_at_ms, live.id)
        if record.caller.invocation_id:
            self.complete_waiter(
                batch, record.caller.invocation_id, record.caller.entry_index, result
            )
        self.waits.invocation_completed(batch, live.id, result)
        if live.inbox_seq is not None:
            self.locks.leave(live.lock_key, live.inbox_seq, live.id)
            inbox.delete(batch, *live.lock_key, live.inbox_seq)
            live.inbox_seq = None
        if record.exclusive and self.locks.holder(live.lock_key) == live.id:
            self.release(batch, live.lock_key)
        self.free_slot(batch, live)
        tracing.end_invocation(live, result)
        outcome = "failed" if result.HasField("failure") else "succeeded"
        self.metrics.count("failed" if result.HasField("failure") else "completed", record.service)
        self.metrics.invocation_seconds.observe(
            (self.now_ms() - record.created_at_ms) / 1000, record.service
        )
        log.debug("invocation %s %s after %d attempt(s)", live.id, outcome, record.attempts)
        batch.then(actions.AnswerCallers(live.id, result))

    def complete_waiter(self, batch: Batch, invocation_id: str, index: int, result: Result) -> None:
        """Completes entry `index` of `invocation_id`, here or in its own partition."""
        if not self.placement.local(invocation_id):
            message = cluster_pb2.CompleteEntryMessage(
                invocation_id=invocation_id, entry_index=index, result=result
            )
            self.outbox.to_owner(batch, invocation_id, cluster_pb2.OutboxMessage(complete=message))
            return
        waiter = self.live.get(invocation_id)
        if waiter is not None and index < len(waiter.journal):
            self.complete_entry(batch, waiter, index, result)

    def finished(self, invocation_id: str) -> None:
        """The invocation's completion is durable: storage answers for it from now on."""
        live = self.live.pop(invocation_id, None)
        if live is not None:
            record = live.record
            for listener in self.completion_listeners:
                listener(record)
            ident = self.dedup.of(record)
            if ident is not None:
                self.dedup.forget(ident)

    # ---- Messages from other partitions (applied by `messages.py`)

    def on_delivery(self, source: int, envelopes: list[cluster_pb2.Envelope]) -> int:
        """Applies the messages from `source` not applied yet; returns the dedup mark
        (the driver answers once the batch moving it is durable)."""
        return messages.deliver(self, source, envelopes)

    def outbox_acknowledged(self, destination: int, seq: int) -> None:
        """`destination` durably applied our messages up to `seq`."""
        batch = Batch()
        self.outbox.acknowledged(batch, destination, seq)
        if batch.puts:
            self.submit(batch)

    def start_delivered(self, batch: Batch, m: cluster_pb2.InvokeMessage) -> None:
        """Starts an invocation another partition sent (a call or send to a key that
        lives here), or joins the caller to the one its identity already names."""
        caller = (m.caller_id, m.caller_index) if m.caller_id else None
        ident = self.dedup.identity(m.service, m.method, m.key, m.idempotency_key)
        bound = self.dedup.binding(ident) if ident is not None else None
        if bound is not None:
            # A workflow's run handler already has this key: the caller joins it.
            if caller is not None:
                result = self.waits.attach(batch, caller, bound.invocation_id)
                if result is not None:
                    self.complete_waiter(batch, *caller, result)
            return
        self._create(
            batch,
            service=m.service,
            method=m.method,
            key=m.key,
            request=m.request,
            headers=dict(m.headers),
            idempotency_key=m.idempotency_key,
            traceparent=m.traceparent,
            caller=caller,
            invoke_at_ms=m.invoke_at_ms,
            invocation_id=m.invocation_id,
        )

    # ---- Timers

    def on_timer(self, due_ms: int, invocation_id: str, entry_index: int) -> None:
        """A durable timer fired: complete the sleep, or start the delayed invocation."""
        batch = Batch()
        timers.delete(batch, due_ms, invocation_id, entry_index)
        live = self.live.get(invocation_id)
        if live is not None:
            if entry_index >= 0:
                self.complete_entry(batch, live, entry_index, Result(empty=journal_pb2.Empty()))
            elif live.record.status == Status.PENDING:
                self._enqueue(batch, live)
                self.save(batch, live)
        self.submit(batch)

    # ---- Recovery and retention

    def recover(self) -> None:
        """Rebuilds the in-memory view from storage and restarts what was in flight."""
        recovery.recover(self)

    def purge_expired(self) -> int:
        """Deletes completed invocations whose retention ended; returns how many."""
        return recovery.purge_expired(self)

    # ---- Memory

    def adopt(self, record: Invocation, entries: list[Entry]) -> Live:
        """Takes back an in-flight invocation read from storage (after a restart)."""
        live = Live(record, entries, self.journal_loader)
        self.live[record.id] = live
        if record.exclusive and record.status != Status.PENDING:
            self.locks.hold(live.lock_key, record.id)
        if record.status in (Status.RUNNING, Status.BACKING_OFF, Status.PAUSED):
            # It held a slot before the restart; it keeps it even over a lowered limit.
            self.limiter.hold(record.id, record.service, record.method)
        return live

    def evict(self, invocation_id: str, version: int) -> None:
        """Drops a suspended invocation's journal from memory, if nothing about it was
        written since it suspended (so storage holds all of it)."""
        live = self.live.get(invocation_id)
        if (
            live is not None
            and live.version == version
            and not live.attempt
            and live.record.status == Status.SUSPENDED
        ):
            live.evict()

    def save(self, batch: Batch, live: Live) -> None:
        """Writes the invocation's record."""
        record = live.record
        record.modified_at_ms = self.now_ms()
        live.version += 1
        self._touch(live)
        invocations.put(batch, record)

    def _touch(self, live: Live) -> None:
        if not live.evicted:  # an evicted invocation has not changed since it was written
            live.record.journal_length = len(live.journal)

    def _load_journal(self, invocation_id: str) -> list[Entry]:
        return journal.load(self.kv, invocation_id)
