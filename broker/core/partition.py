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
import secrets

from durable.v1 import journal_pb2, protocol_pb2

from .. import codes, tracing
from .. import registry as reg
from ..config import Settings
from ..metrics import Metrics
from ..storage import Batch, idempotency, inbox, invocations, journal, keys, state, timers
from ..storage.kv import KV
from . import actions, commands, recovery
from .dedup import Dedup
from .events import AttemptEvent, Ended, Failed, Proposed, RanResult, Suspended
from .locks import KeyLocks, Lock
from .model import (
    Entry,
    Invocation,
    Live,
    Result,
    RetryPolicy,
    Status,
    failure,
    new_invocation_id,
    now_ms,
)
from .waits import Waits

log = logging.getLogger("broker.core")


def _after_output(what: str) -> str:
    """Anything an attempt sends after its output would change a result that callers
    may already hold (and rerun effects of a finished invocation): refused, unapplied."""
    return f"protocol violation: {what} after the invocation's output; ignored"


class UnknownInvocation(LookupError):
    """No invocation with that id (or it was purged)."""


class IdempotencyConflict(ValueError):
    """An idempotency key already used with a different request body.

    Args:
        invocation_id: The invocation the key is bound to.
    """

    def __init__(self, invocation_id: str) -> None:
        super().__init__(invocation_id)
        self.invocation_id = invocation_id


class Partition:
    """Owns every invocation's lifecycle, key locks and the journal writes.

    Args:
        kv: The store, read directly; writes only ever go out as batches.
        registry: The deployed services.
        settings: Limits, retry and retention settings.
    """

    def __init__(self, kv: KV, registry: reg.Registry, settings: Settings) -> None:
        self.kv = kv
        self.registry = registry
        self.settings = settings
        self.live: dict[str, Live] = {}
        self.locks = KeyLocks()
        self.dedup = Dedup(kv, registry)
        self.waits = Waits(self)
        self.metrics = Metrics()
        # One bound method shared by every Live (a fresh one each would cost 64 bytes).
        self.journal_loader = self._load_journal
        self._out: list[Batch] = []

    # ---- The seam to the driver

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
        ident = self.dedup.identity(service, method, key, idempotency_key)
        bound = self.dedup.binding(ident) if ident is not None else None
        if bound is not None:
            # Rows stored before digests existed have none and match any request.
            if (
                idempotency_key
                and bound.request_digest
                and bound.request_digest != idempotency.request_digest(request)
            ):
                raise IdempotencyConflict(bound.invocation_id)
            return bound.invocation_id
        batch = Batch()
        live = self._create(
            batch,
            service=service,
            method=method,
            key=key,
            request=request,
            headers=headers,
            idempotency_key=idempotency_key,
            traceparent=traceparent,
        )
        self.submit(batch)
        return live.id

    def current_state(self, service: str, key: str) -> dict[str, bytes]:
        """An object's state as stored (after a barrier: every queued write included)."""
        return state.load(self.kv, service, key)

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
        """The invocation bound to an idempotency key (or a workflow's key)."""
        return self.dedup.find((service, method, key, idempotency_key))

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

    def records(self, status: int = 0) -> list[Invocation]:
        """Every retained invocation's record (or those with `status`), live ones as they
        are now. Every invocation that has not completed is live, so only listing
        completed ones (or all) reads the table."""
        if status and status != Status.COMPLETED:
            out = {}
        else:
            out = {r.id: r for r in invocations.scan(self.kv)}
        for invocation_id, live in self.live.items():
            self._touch(live)
            out[invocation_id] = live.snapshot()
        return list(out.values())

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
    ) -> Live:
        target = self.registry.service(service)
        handler = target.methods.get(method) if target else None
        now = now_ms()
        record = Invocation(
            id=new_invocation_id(),
            service=service,
            method=method,
            key=key,
            status=Status.PENDING,
            created_at_ms=now,
            idempotency_key=idempotency_key,
            exclusive=bool(target and target.keyed and handler and not handler.shared),
            invoke_at_ms=invoke_at_ms,
            random_seed=secrets.randbits(64),
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
        ident = self.dedup.of(record)
        if ident is not None:
            self.dedup.bind(batch, ident, live.id, request)
        if invoke_at_ms > now:
            timers.put(batch, invoke_at_ms, live.id, -1)
            batch.then(actions.ArmTimer(invoke_at_ms, live.id, -1))
        else:
            self._enqueue(batch, live)
        self.save(batch, live)
        log.info("invocation %s created: %s/%s key=%r", live.id, service, method, key)
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
        live.record.status = Status.RUNNING
        self.start_attempt(batch, live)

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
            nxt.record.status = Status.RUNNING
            self.save(batch, nxt)
            self.start_attempt(batch, nxt)
            return

    def start_attempt(self, batch: Batch, live: Live) -> None:
        """Opens the next attempt of a running, backing-off or suspended invocation."""
        if self.live.get(live.id) is not live or live.attempt:
            return
        record = live.record
        if record.status not in (Status.RUNNING, Status.BACKING_OFF, Status.SUSPENDED):
            return
        if not record.deployment_id:
            target = self.registry.service(record.service)
            if target is None:
                self._backoff(batch, live, f"service {record.service} is not registered")
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
        batch.now(actions.StartAttempt(record.id, record.attempts, record.deployment_id, start))

    # ---- What an endpoint did in an attempt

    def on_attempt(self, invocation_id: str, attempt: int, event: AttemptEvent) -> str | None:
        """Applies one event of an attempt; returns why it fails the attempt, if it does.
        Events of an attempt that is no longer current change nothing."""
        live = self.live.get(invocation_id)
        if live is None or live.attempt != attempt:
            return None
        match event:
            case Proposed(index, entry):
                return self._on_entry(live, index, entry)
            case RanResult(index, result):
                return self._on_run_result(live, index, result)
            case Suspended(waiting_on):
                return self._on_suspension(live, list(waiting_on))
            case Ended():
                return self._on_end(live)
            case Failed(message, retry_after, pause, non_determinism):
                self._on_failed(live, message, retry_after, pause, non_determinism)
                return None

    def _on_entry(self, live: Live, index: int, entry: Entry) -> str | None:
        if live.record.status == Status.COMPLETED:
            return _after_output(f"entry {index} proposed")
        if index != len(live.journal):
            return (
                f"protocol violation: entry {index} proposed, but the journal has "
                f"{len(live.journal)} entries"
            )
        kind = entry.WhichOneof("command")
        log.debug("invocation %s step %d: %s", live.id, index, kind)
        if index >= self.settings.max_journal_entries and kind != "output":
            self._fail_terminally(
                live,
                f"journal limit reached: {live.record.service}/{live.record.method} proposed "
                f"entry {index}, the limit is {self.settings.max_journal_entries} entries "
                "(--max-journal-entries)",
            )
            return None
        stored = Entry()
        stored.CopyFrom(entry)
        # A side effect that finished before its entry left arrives with its outcome:
        # journaled together, and acknowledged like a separate run result would be.
        ran: Result | None = None
        if kind == "run" and stored.HasField("result"):
            ran = Result()
            ran.CopyFrom(stored.result)
        if kind not in commands.SDK_COMPLETED:
            stored.ClearField("result")
        batch = Batch()
        live.step_traceparent = tracing.step(live, index, stored)
        try:
            result = commands.apply(self, batch, live, index, stored) or ran
        except commands.ProtocolViolation as e:
            return f"protocol violation: {e}"
        except commands.LimitExceeded as e:
            self._fail_terminally(live, str(e))
            return None
        except keys.KeyTooLong as e:
            # The handler named something storage cannot key: retrying changes nothing.
            self._fail_terminally(live, f"entry {index} ({kind}): {e}", codes.INVALID_ARGUMENT)
            return None
        live.journal.append(stored)
        if result is not None:
            stored.result.CopyFrom(result)
            self._deliver(batch, live, index, result)
        journal.put(batch, live.id, index, stored)
        if kind == "output":
            self.complete(batch, live, stored.result)
        self.save(batch, live)
        self.submit(batch)
        return None

    def _on_run_result(self, live: Live, index: int, result: Result) -> str | None:
        """A side effect's outcome: journal it, then let the handler see it."""
        if live.record.status == Status.COMPLETED:
            return _after_output(f"run result for entry {index} sent")
        if index >= len(live.journal) or live.journal[index].WhichOneof("command") != "run":
            return f"protocol violation: run result for entry {index}, which is not a run"
        batch = Batch()
        self.complete_entry(batch, live, index, result)
        self.submit(batch)
        return None

    def _on_suspension(self, live: Live, waiting_on: list[int]) -> str | None:
        """The handler waits on entries not completed yet; its stream closes."""
        if live.record.status == Status.COMPLETED:
            return _after_output("suspension sent")
        for i in waiting_on:
            if i >= len(live.journal) or live.journal[i].WhichOneof("command") not in (
                *commands.AWAITABLE,
                "run",
                "peek_promise",
                "complete_promise",
                "get_output",
            ):
                return f"protocol violation: suspended on entry {i}, which cannot complete"
        if not waiting_on:
            return "protocol violation: suspended waiting on nothing"
        live.attempt = 0
        tracing.end_attempt(live, suspended_on=sorted(waiting_on))
        batch = Batch()
        if any(live.journal[i].HasField("result") for i in waiting_on):
            # Completed while the suspension was in flight: go on at once.
            self.start_attempt(batch, live)
        else:
            live.record.status = Status.SUSPENDED
            live.record.waiting_on[:] = sorted(waiting_on)
            self.metrics.count("suspended", live.record.service)
            log.info("invocation %s suspended, waiting on %s", live.id, sorted(waiting_on))
        self.save(batch, live)
        if live.record.status == Status.SUSPENDED:
            batch.then(actions.Evict(live.id, live.version))
        self.submit(batch)
        return None

    def _on_end(self, live: Live) -> str | None:
        """The handler ended its attempt; it must have proposed its output first."""
        if live.record.status != Status.COMPLETED:
            return "protocol violation: the attempt ended without an output entry"
        live.attempt = 0
        tracing.end_attempt(live)
        return None

    def _on_failed(
        self,
        live: Live,
        message: str,
        retry_after: float | None,
        pause: bool,
        non_determinism: bool,
    ) -> None:
        """The attempt failed transiently: retry, or park the invocation when the
        handler asked to pause. A replay that diverged from the journal is retried too
        (a fixed deployment can recover it), unless `non_determinism_terminal` is set:
        then the invocation fails with INTERNAL."""
        live.attempt = 0
        tracing.end_attempt(live, error=message)
        if live.record.status == Status.COMPLETED:
            # Its output is durable and stands; what the attempt did after it is dropped.
            log.warning(
                "invocation %s: attempt %d after its output: %s",
                live.id,
                live.record.attempts,
                message,
            )
            return
        batch = Batch()
        if non_determinism and self.settings.non_determinism_terminal:
            log.warning("invocation %s failed: %s", live.id, message)
            live.record.last_error = message
            self.complete(batch, live, failure(codes.INTERNAL, message))
            self.save(batch, live)
        elif pause:
            live.record.status = Status.PAUSED
            live.record.last_error = message
            live.record.next_retry_at_ms = 0
            log.warning("invocation %s paused: %s", live.id, message)
            self.save(batch, live)
        else:
            self._backoff(batch, live, message, retry_after)
        self.submit(batch)

    def abandon_attempt(self, batch: Batch, live: Live, reason: str) -> None:
        """Stops the running attempt, if any: its stream is cancelled and whatever it
        still sends is ignored (the partition no longer knows it)."""
        attempt, live.attempt = live.attempt, 0
        tracing.end_attempt(live, error=reason)
        if attempt:
            batch.now(actions.AbandonAttempt(live.id, attempt, reason))

    def _fail_terminally(
        self, live: Live, message: str, code: int = codes.RESOURCE_EXHAUSTED
    ) -> None:
        """Ends the invocation with `code` (by default RESOURCE_EXHAUSTED: retrying would
        hit the same limit)."""
        log.warning("invocation %s: %s", live.id, message)
        batch = Batch()
        self.abandon_attempt(batch, live, message)
        self.complete(batch, live, failure(code, message))
        self.save(batch, live)
        self.submit(batch)

    def state_limit_error(self, live: Live, name: str, value: bytes) -> str | None:
        """Why setting `name` would take the object's state over its limit, if it would."""
        r = live.record
        values = state.load(self.kv, r.service, r.key)
        # Writes of this invocation not yet applied to storage count too.
        for e in live.journal:
            if e.HasField("set_state"):
                values[e.set_state.key] = e.set_state.value
            elif e.HasField("clear_state"):
                values.pop(e.clear_state.key, None)
            elif e.HasField("clear_all_state"):
                values.clear()
        values[name] = value
        return self.state_over_limit(r.service, r.key, values)

    def state_over_limit(self, service: str, key: str, values: dict[str, bytes]) -> str | None:
        """Why an object holding `values` would be over --max-state-bytes, if it would."""
        total = state.size(values)
        if total <= self.settings.max_state_bytes:
            return None
        return (
            f"state limit reached: {service} key {key!r} would hold {total} bytes, "
            f"over the {self.settings.max_state_bytes}-byte limit (--max-state-bytes)"
        )

    # ---- Retries

    def _backoff(
        self, batch: Batch, live: Live, message: str, retry_after: float | None = None
    ) -> None:
        record = live.record
        policy = self.registry.retry_policy(record.service, record.method, record.deployment_id)
        if policy is not None and policy.max_attempts and record.attempts >= policy.max_attempts:
            record.last_error = message
            if policy.on_max_attempts == policy.PAUSE:
                record.status = Status.PAUSED
                record.next_retry_at_ms = 0
                log.warning("invocation %s paused after %d attempts", live.id, record.attempts)
            else:
                self.complete(
                    batch,
                    live,
                    failure(codes.UNKNOWN, f"gave up after {record.attempts} attempts: {message}"),
                )
            self.save(batch, live)
            return
        delay = retry_after if retry_after is not None else self._delay(policy, record.attempts)
        self.metrics.count("retried", record.service)
        record.status = Status.BACKING_OFF
        record.last_error = message
        record.next_retry_at_ms = now_ms() + int(delay * 1000)
        log.warning(
            "invocation %s attempt %d failed, retrying in %.2fs: %s",
            live.id,
            record.attempts,
            delay,
            message,
        )
        self.save(batch, live)
        batch.now(actions.ScheduleRetry(live.id, delay))

    def _delay(self, policy: RetryPolicy | None, attempts: int) -> float:
        if policy is None:
            return self.settings.backoff(attempts)
        delay = (policy.initial_interval_ms / 1000) * (policy.factor or 2.0) ** max(attempts - 1, 0)
        cap = policy.max_interval_ms / 1000 if policy.max_interval_ms else self.settings.retry_max
        return float(min(delay, cap))

    def on_retry_due(self, invocation_id: str) -> None:
        """A backing-off invocation's delay is over: its next attempt starts."""
        live = self.live.get(invocation_id)
        if live is not None and live.record.status == Status.BACKING_OFF:
            batch = Batch()
            self.start_attempt(batch, live)
            self.submit(batch)

    def resume(self, live: Live) -> None:
        """Retries a paused or backing-off invocation now."""
        batch = Batch()
        batch.now(actions.CancelRetry(live.id))
        if live.record.status in (Status.PAUSED, Status.BACKING_OFF):
            live.record.status = Status.BACKING_OFF
            self.start_attempt(batch, live)
        self.submit(batch)

    def pause(self, live: Live) -> None:
        """Parks an invocation: its attempt (if any) is abandoned, nothing resumes it
        until `resume`. Its journal is kept, so it goes on where it stopped."""
        batch = Batch()
        batch.now(actions.CancelRetry(live.id))
        self.abandon_attempt(batch, live, "paused")
        live.record.status = Status.PAUSED
        live.record.next_retry_at_ms = 0
        self.save(batch, live)
        self.submit(batch)

    # ---- Journal commands with effects elsewhere

    def _target(self, service: str, method: str, request: bytes) -> tuple[str, str | None]:
        """The callee's key, and the running or retained invocation a workflow's run
        handler already has for that key (a second submission joins it).

        Raises:
            registry.BadRequest: no such target, or the request lacks its key.
        """
        _, _, key = reg.resolve(self.registry, service, method, request)
        ident = self.dedup.identity(service, method, key, "")
        return key, self.dedup.find(ident) if ident is not None else None

    def journal_call(self, batch: Batch, live: Live, index: int, entry: Entry) -> Result | None:
        """Starts the callee of a call entry (or fails the entry if it cannot exist)."""
        call = entry.call
        try:
            key, existing = self._target(call.service, call.method, call.request)
        except reg.BadRequest as e:
            return failure(e.code, e.message)
        if existing is not None:
            call.invocation_id = existing
            return self.waits.attach(live, index, existing)
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
            key, existing = self._target(send.service, send.method, send.request)
        except reg.BadRequest as e:
            log.warning("invocation %s: one-way send dropped: %s", live.id, e.message)
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
        journal.put(batch, live.id, index, entry)
        self.save(batch, live)
        self._deliver(batch, live, index, result)

    def _deliver(self, batch: Batch, live: Live, index: int, result: Result) -> None:
        """Hands a completed entry to the running attempt, or resumes the invocation if
        it suspended waiting on it. (An attempt that suspends before the completion
        reaches it finds the result in the journal and restarts at once.)"""
        if live.attempt:
            batch.then(actions.SendCompletion(live.id, live.attempt, index, result))
        elif live.record.status == Status.SUSPENDED and index in live.record.waiting_on:
            log.info("invocation %s resumed by entry %d", live.id, index)
            self.start_attempt(batch, live)

    def complete(self, batch: Batch, live: Live, result: Result) -> None:
        """Completes the invocation: answer its caller, free its key, retain its result."""
        record = live.record
        if record.status == Status.BACKING_OFF:
            batch.now(actions.CancelRetry(live.id))
        record.status = Status.COMPLETED
        record.result.CopyFrom(result)
        record.ClearField("waiting_on")
        record.expires_at_ms = now_ms() + int(self.settings.retention * 1000)
        invocations.schedule_expiry(batch, record.expires_at_ms, live.id)
        if record.caller.invocation_id:
            parent = self.live.get(record.caller.invocation_id)
            if parent is not None:
                self.complete_entry(batch, parent, record.caller.entry_index, result)
        self.waits.invocation_completed(batch, live.id, result)
        if live.inbox_seq is not None:
            self.locks.leave(live.lock_key, live.inbox_seq, live.id)
            inbox.delete(batch, *live.lock_key, live.inbox_seq)
            live.inbox_seq = None
        if record.exclusive and self.locks.holder(live.lock_key) == live.id:
            self.release(batch, live.lock_key)
        tracing.end_invocation(live, result)
        outcome = "failed" if result.HasField("failure") else "succeeded"
        self.metrics.count("failed" if result.HasField("failure") else "completed", record.service)
        self.metrics.invocation_seconds.observe(
            (now_ms() - record.created_at_ms) / 1000, record.service
        )
        log.info("invocation %s %s after %d attempt(s)", live.id, outcome, record.attempts)
        batch.then(actions.AnswerCallers(live.id, result))

    def finished(self, invocation_id: str) -> None:
        """The invocation's completion is durable: storage answers for it from now on."""
        live = self.live.pop(invocation_id, None)
        if live is not None:
            ident = self.dedup.of(live.record)
            if ident is not None:
                self.dedup.forget(ident)

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
        live.record.modified_at_ms = now_ms()
        live.version += 1
        self._touch(live)
        invocations.put(batch, live.record)

    def _touch(self, live: Live) -> None:
        if not live.evicted:  # an evicted invocation has not changed since it was written
            live.record.journal_length = len(live.journal)

    def _load_journal(self, invocation_id: str) -> list[Entry]:
        return journal.load(self.kv, invocation_id)
