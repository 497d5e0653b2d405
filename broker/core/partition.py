"""The broker's state machine for one partition of invocations (today: all of them).

Every change goes through here. Each event (a new invocation, a proposed journal entry,
a completion, a suspension, a failed attempt, a fired timer) updates the in-memory view
at once, writes the same change into one `Batch`, and defers its effects (starting an
attempt, answering a caller, sending a completion) to `Batch.then`, which runs only
once the batch is durable. The invoker, ingress and timers only feed events in.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from durable.v1 import journal_pb2, protocol_pb2

from .. import registry as reg
from .. import tracing
from ..config import Settings
from ..metrics import Metrics
from ..storage import (
    Batch,
    Committer,
    idempotency,
    inbox,
    invocations,
    journal,
    keys,
    state,
    timers,
)
from ..storage.kv import KV
from . import commands, recovery
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

if TYPE_CHECKING:
    from ..invoker import Attempt, Invoker
    from ..timers import TimerQueue

log = logging.getLogger("broker.core")

_INVALID_ARGUMENT = 3
_ABORTED = 10
_UNKNOWN = 2
_RESOURCE_EXHAUSTED = 8


def _after_output(what: str) -> str:
    """Anything an attempt sends after its output would change a result that callers
    may already hold (and rerun effects of a finished invocation): refused, unapplied."""
    return f"protocol violation: {what} after the invocation's output; ignored"


class UnknownInvocation(LookupError):
    """No invocation with that id (or it was purged)."""


class Partition:
    """Owns every invocation's lifecycle, key locks and the journal writes."""

    def __init__(
        self, kv: KV, committer: Committer, registry: reg.Registry, settings: Settings
    ) -> None:
        self.kv = kv
        self.committer = committer
        self.registry = registry
        self.settings = settings
        self.live: dict[str, Live] = {}
        self._locks: dict[tuple[str, str], str] = {}
        self._inboxes: dict[tuple[str, str], collections.deque[tuple[int, str]]] = (
            collections.defaultdict(collections.deque)
        )
        self._inbox_seq = 0
        self._waiters: dict[str, list[asyncio.Future[Result]]] = collections.defaultdict(list)
        # Identities whose idempotency row is queued but not yet written.
        self._idempotent: dict[tuple[str, str, str, str], str] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}
        # One bound method shared by every Live (a fresh one each would cost 64 bytes).
        self.journal_loader = self._load_journal
        self.waits = Waits(self)
        self.metrics = Metrics()
        # Called with each record once its completion is durable (the admin API's index
        # of completed invocations keeps itself current this way).
        self.completion_listeners: list[Callable[[Invocation], None]] = []
        self.invoker: Invoker
        self.timers: TimerQueue

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
    ) -> tuple[str, asyncio.Future[Result]]:
        """Starts (or, by idempotency key, finds) an invocation; returns its id and result."""
        ident = self._identity(service, method, key, idempotency_key)
        existing = self._existing(ident) if ident is not None else None
        if existing is not None:
            return existing, self.attach(existing)
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
        self.committer.submit(batch)
        return live.id, self.attach(live.id)

    def current_state(self, service: str, key: str) -> dict[str, bytes]:
        """An object's state as stored (after a barrier: every queued write included)."""
        return state.load(self.kv, service, key)

    def inbox(self, service: str, key: str) -> list[str]:
        """The invocations queued for an object's key, first in line first."""
        return [invocation_id for _, invocation_id in self._inboxes.get((service, key), ())]

    def lock_holder(self, service: str, key: str) -> str | None:
        """The invocation holding an object's key, if any."""
        return self._locks.get((service, key))

    def _existing(self, ident: tuple[str, str, str, str]) -> str | None:
        return self._idempotent.get(ident) or idempotency.get(self.kv, *ident)

    def _forget_identity(self, ident: tuple[str, str, str, str], invocation_id: str) -> None:
        if self._idempotent.get(ident) == invocation_id:
            del self._idempotent[ident]

    def _identity(
        self, service: str, method: str, key: str, idempotency_key: str
    ) -> tuple[str, str, str, str] | None:
        """What makes two submissions the same invocation: an idempotency key, or (a
        workflow's run handler runs once per key) the workflow's key alone."""
        if idempotency_key or commands.is_workflow_run(self.registry, service, method):
            return (service, method, key, idempotency_key)
        return None

    def _ident(self, record: Invocation) -> tuple[str, str, str, str] | None:
        """The idempotency identity of an invocation, if it has one."""
        return self._identity(record.service, record.method, record.key, record.idempotency_key)

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
        return self._existing((service, method, key, idempotency_key))

    def attach(self, invocation_id: str) -> asyncio.Future[Result]:
        """A future of the invocation's result (immediate if it already completed)."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        if invocation_id in self.live:
            self._waiters[invocation_id].append(future)
            return future
        record = invocations.get(self.kv, invocation_id)
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
        ident = self._ident(record)
        if ident is not None:
            # Only until the batch is written: from then on the table answers, and a
            # suspended invocation keeps no index entry in memory.
            self._idempotent[ident] = live.id
            idempotency.put(batch, *ident, live.id)
            batch.then(lambda: self._forget_identity(ident, live.id))
        if invoke_at_ms > now:
            timers.put(batch, invoke_at_ms, live.id, -1)
            batch.then(lambda: self.timers.add(invoke_at_ms, live.id, -1))
        else:
            self._enqueue(batch, live)
        self.save(batch, live)
        log.info("invocation %s created: %s/%s key=%r", live.id, service, method, key)
        return live

    def _enqueue(self, batch: Batch, live: Live) -> None:
        """Runs the invocation now, or queues it behind the holder of its key."""
        if live.record.exclusive:
            lock = live.lock_key
            if lock in self._locks or self._inboxes.get(lock):
                self._inbox_seq += 1
                live.inbox_seq = self._inbox_seq
                self._inboxes[lock].append((self._inbox_seq, live.id))
                inbox.put(batch, *lock, self._inbox_seq, live.id)
                live.record.status = Status.PENDING
                return
            self._locks[lock] = live.id
        live.record.status = Status.RUNNING
        batch.once_queued(lambda: self._start_attempt(live))

    def _release(self, batch: Batch, lock: tuple[str, str]) -> None:
        """Frees a key and hands it to the next invocation in its inbox."""
        self._locks.pop(lock, None)
        queue = self._inboxes.get(lock)
        while queue:
            seq, next_id = queue.popleft()
            inbox.delete(batch, *lock, seq)
            nxt = self.live.get(next_id)
            if nxt is None:
                continue
            nxt.inbox_seq = None
            self._locks[lock] = next_id
            nxt.record.status = Status.RUNNING
            self.save(batch, nxt)
            batch.once_queued(lambda nxt=nxt: self._start_attempt(nxt))  # type: ignore[misc]
            break
        if queue is not None and not queue:
            self._inboxes.pop(lock, None)

    def _start_attempt(self, live: Live) -> None:
        if self.live.get(live.id) is not live or live.attempt is not None:
            return
        if live.record.status not in (Status.RUNNING, Status.BACKING_OFF, Status.SUSPENDED):
            return
        record = live.record
        if not record.deployment_id:
            target = self.registry.service(record.service)
            if target is None:
                self._backoff(live, f"service {record.service} is not registered")
                return
            record.deployment_id = target.deployment_id
        record.attempts += 1
        record.status = Status.RUNNING
        record.ClearField("waiting_on")
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
        # Rides in the group the attempt's start barrier waits for anyway: no extra fsync.
        # The object's state is read by the invoker once that barrier passed, so it
        # includes every write queued before (a previous holder's last ones).
        batch = Batch()
        self.save(batch, live)
        self.committer.submit(batch)
        self.invoker.start(live, start)

    # ---- Events from an attempt (return an error text to fail the attempt)

    def on_entry(self, live: Live, attempt: Attempt, index: int, entry: Entry) -> str | None:
        """The handler proposed its next journal entry."""
        if live.attempt is not attempt:
            return None
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
        stored.appended_at_ms = now_ms()  # for operators' timelines; not the SDK's to set
        stored.ClearField("completed_at_ms")
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
            self._fail_terminally(live, f"entry {index} ({kind}): {e}", _INVALID_ARGUMENT)
            return None
        live.journal.append(stored)
        if stored.HasField("result") or result is not None:
            stored.completed_at_ms = stored.appended_at_ms
        if result is not None:
            stored.result.CopyFrom(result)
            batch.then(lambda: self._deliver(live, index, result))
        journal.put(batch, live.id, index, stored)
        if kind == "output":
            self.complete(batch, live, stored.result)
        self.save(batch, live)
        self.committer.submit(batch)
        return None

    def abandon_attempt(self, live: Live, reason: str) -> None:
        """Stops the running attempt, if any: its stream is cancelled and whatever it
        still sends is ignored (the partition no longer knows it)."""
        attempt, live.attempt = live.attempt, None
        tracing.end_attempt(live, error=reason)
        if attempt is not None:
            attempt.close()
            if attempt.task is not None:
                attempt.task.cancel()

    def _fail_terminally(self, live: Live, message: str, code: int = _RESOURCE_EXHAUSTED) -> None:
        """Ends the invocation with `code` (by default RESOURCE_EXHAUSTED: retrying would
        hit the same limit)."""
        log.warning("invocation %s: %s", live.id, message)
        self.abandon_attempt(live, message)
        batch = Batch()
        self.complete(batch, live, failure(code, message))
        self.save(batch, live)
        self.committer.submit(batch)

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

    def on_run_result(self, live: Live, attempt: Attempt, index: int, result: Result) -> str | None:
        """A side effect's outcome: journal it, then let the handler see it."""
        if live.attempt is not attempt:
            return None
        if live.record.status == Status.COMPLETED:
            return _after_output(f"run result for entry {index} sent")
        if index >= len(live.journal) or live.journal[index].WhichOneof("command") != "run":
            return f"protocol violation: run result for entry {index}, which is not a run"
        batch = Batch()
        self.complete_entry(batch, live, index, result)
        self.committer.submit(batch)
        return None

    def on_suspension(self, live: Live, attempt: Attempt, waiting_on: list[int]) -> str | None:
        """The handler waits on entries not completed yet; its stream closes."""
        if live.attempt is not attempt:
            return None
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
        live.attempt = None
        tracing.end_attempt(live, suspended_on=sorted(waiting_on))
        batch = Batch()
        if any(live.journal[i].HasField("result") for i in waiting_on):
            # Completed while the suspension was in flight: go on at once.
            batch.once_queued(lambda: self._start_attempt(live))
        else:
            live.record.status = Status.SUSPENDED
            live.record.waiting_on[:] = sorted(waiting_on)
            self.metrics.count("suspended", live.record.service)
            log.info("invocation %s suspended, waiting on %s", live.id, sorted(waiting_on))
        self.save(batch, live)
        if live.record.status == Status.SUSPENDED:
            version = live.version
            batch.then(lambda: self._evict(live, version))
        self.committer.submit(batch)
        return None

    def on_end(self, live: Live, attempt: Attempt) -> str | None:
        """The handler ended its attempt; it must have proposed its output first."""
        if live.attempt is not attempt:
            return None
        if live.record.status != Status.COMPLETED:
            return "protocol violation: the attempt ended without an output entry"
        live.attempt = None
        tracing.end_attempt(live)
        return None

    def on_attempt_failed(
        self,
        live: Live,
        attempt: Attempt,
        message: str,
        retry_after: float | None = None,
        *,
        pause: bool = False,
    ) -> None:
        """The attempt failed transiently (handler error, crash, broken stream): retry,
        or park the invocation when the handler asked to pause."""
        if live.attempt is not attempt:
            return
        live.attempt = None
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
        if pause:
            live.record.status = Status.PAUSED
            live.record.last_error = message
            live.record.next_retry_at_ms = 0
            log.warning("invocation %s paused: %s", live.id, message)
            batch = Batch()
            self.save(batch, live)
            self.committer.submit(batch)
            return
        self._backoff(live, message, retry_after)

    def _backoff(self, live: Live, message: str, retry_after: float | None = None) -> None:
        record = live.record
        # The pinned deployment's policy: a newer version's must not cut this one short.
        policy = self.registry.retry_policy(record.service, record.method, record.deployment_id)
        if policy is not None and policy.max_attempts and record.attempts >= policy.max_attempts:
            batch = Batch()
            record.last_error = message
            if policy.on_max_attempts == policy.PAUSE:
                record.status = Status.PAUSED
                record.next_retry_at_ms = 0
                log.warning("invocation %s paused after %d attempts", live.id, record.attempts)
            else:
                self.complete(
                    batch,
                    live,
                    failure(_UNKNOWN, f"gave up after {record.attempts} attempts: {message}"),
                )
            self.save(batch, live)
            self.committer.submit(batch)
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
        batch = Batch()
        self.save(batch, live)
        self.committer.submit(batch)
        handle = asyncio.get_running_loop().call_later(delay, self._retry, live)
        self._retries[live.id] = handle

    def _delay(self, policy: RetryPolicy | None, attempts: int) -> float:
        if policy is None:
            return self.settings.backoff(attempts)
        delay = (policy.initial_interval_ms / 1000) * (policy.factor or 2.0) ** max(attempts - 1, 0)
        cap = policy.max_interval_ms / 1000 if policy.max_interval_ms else self.settings.retry_max
        return float(min(delay, cap))

    def resume(self, live: Live) -> None:
        """Retries a paused or backing-off invocation now."""
        retry = self._retries.pop(live.id, None)
        if retry is not None:
            retry.cancel()
        if live.record.status in (Status.PAUSED, Status.BACKING_OFF):
            live.record.status = Status.BACKING_OFF
            self._start_attempt(live)

    def pause(self, live: Live) -> None:
        """Parks an invocation: its attempt (if any) is abandoned, nothing resumes it
        until `resume`. Its journal is kept, so it goes on where it stopped."""
        retry = self._retries.pop(live.id, None)
        if retry is not None:
            retry.cancel()
        self.abandon_attempt(live, "paused")
        live.record.status = Status.PAUSED
        live.record.next_retry_at_ms = 0
        batch = Batch()
        self.save(batch, live)
        self.committer.submit(batch)

    def _retry(self, live: Live) -> None:
        self._retries.pop(live.id, None)
        if live.record.status == Status.BACKING_OFF:
            self._start_attempt(live)

    # ---- Journal commands with effects elsewhere

    def _target(self, service: str, method: str, request: bytes) -> tuple[str, str | None]:
        """The callee's key, and the running or retained invocation a workflow's run
        handler already has for that key (a second submission joins it).

        Raises:
            registry.BadRequest: no such target, or the request lacks its key.
        """
        _, _, key = reg.resolve(self.registry, service, method, request)
        ident = self._identity(service, method, key, "")
        return key, self._existing(ident) if ident is not None else None

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

    def completed(self, invocation_id: str) -> Result | None:
        """The result of a completed, retained invocation; None otherwise."""
        record = invocations.get(self.kv, invocation_id)
        if record is None or record.status != Status.COMPLETED:
            return None
        return record.result

    # ---- Completion

    def complete_entry(self, batch: Batch, live: Live, index: int, result: Result) -> None:
        """Records an entry's result; delivers it once durable."""
        entry = live.journal[index]
        if entry.HasField("result"):
            return  # already completed: a duplicate delivery
        entry.result.CopyFrom(result)
        entry.completed_at_ms = now_ms()
        journal.put(batch, live.id, index, entry)
        self.save(batch, live)
        batch.then(lambda: self._deliver(live, index, result))

    def _deliver(self, live: Live, index: int, result: Result) -> None:
        """After a completion is durable: hand it to the running attempt, or resume."""
        if self.live.get(live.id) is not live:
            return
        if live.attempt is not None:
            live.attempt.send_completion(index, result)
        elif live.record.status == Status.SUSPENDED and index in live.record.waiting_on:
            log.info("invocation %s resumed by entry %d", live.id, index)
            self._start_attempt(live)

    def complete(self, batch: Batch, live: Live, result: Result) -> None:
        """Completes the invocation: answer its caller, free its key, retain its result."""
        record = live.record
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
            self._inboxes[live.lock_key].remove((live.inbox_seq, live.id))
            inbox.delete(batch, *live.lock_key, live.inbox_seq)
            live.inbox_seq = None
        if record.exclusive and self._locks.get(live.lock_key) == live.id:
            self._release(batch, live.lock_key)
        retry = self._retries.pop(live.id, None)
        if retry is not None:
            retry.cancel()
        tracing.end_invocation(live, result)
        outcome = "failed" if result.HasField("failure") else "succeeded"
        self.metrics.count("failed" if result.HasField("failure") else "completed", record.service)
        self.metrics.invocation_seconds.observe(
            (now_ms() - record.created_at_ms) / 1000, record.service
        )
        log.info("invocation %s %s after %d attempt(s)", live.id, outcome, record.attempts)
        batch.then(lambda: self._finish(live, result))

    def _finish(self, live: Live, result: Result) -> None:
        self.live.pop(live.id, None)
        for listener in self.completion_listeners:
            listener(live.record)
        ident = self._ident(live.record)
        if ident is not None:
            self._idempotent.pop(ident, None)
        for waiter in self._waiters.pop(live.id, []):
            if not waiter.done():
                waiter.set_result(result)

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
        self.committer.submit(batch)

    # ---- Recovery and retention

    def recover(self) -> None:
        """Rebuilds the in-memory view from storage and restarts what was in flight."""
        recovery.recover(self)

    def purge_expired(self) -> int:
        """Deletes completed invocations whose retention ended; returns how many."""
        return recovery.purge_expired(self)

    # ---- Helpers

    def _touch(self, live: Live) -> None:
        if not live.evicted:  # an evicted invocation has not changed since it was written
            live.record.journal_length = len(live.journal)

    def _load_journal(self, invocation_id: str) -> list[Entry]:
        return journal.load(self.kv, invocation_id)

    def _evict(self, live: Live, version: int) -> None:
        """Drops a suspended invocation's journal from memory, if nothing about it was
        written since it suspended (so storage holds all of it)."""
        if (
            self.live.get(live.id) is live
            and live.version == version
            and live.attempt is None
            and live.record.status == Status.SUSPENDED
        ):
            live.evict()

    def save(self, batch: Batch, live: Live) -> None:
        """Writes the invocation's record."""
        live.record.modified_at_ms = now_ms()
        live.version += 1
        self._touch(live)
        invocations.put(batch, live.record)
