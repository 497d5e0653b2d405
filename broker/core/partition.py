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
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from durable.v1 import journal_pb2, protocol_pb2

from .. import registry as reg
from ..config import Settings
from ..storage import Batch, Committer, idempotency, inbox, invocations, journal, state, timers
from ..storage.kv import KV
from .model import Entry, Invocation, Live, Result, Status, failure, new_invocation_id, now_ms

if TYPE_CHECKING:
    from ..invoker import Attempt, Invoker
    from ..timers import TimerQueue

log = logging.getLogger("broker.core")

_OK_UNIMPLEMENTED = 12
_INVALID_ARGUMENT = 3
_NOT_FOUND = 5


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
        self._idempotent: dict[tuple[str, str, str, str], str] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}
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
        if idempotency_key:
            ident = (service, method, key, idempotency_key)
            existing = self._idempotent.get(ident) or idempotency.get(self.kv, *ident)
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

    # ---- Reading

    def record(self, invocation_id: str) -> tuple[Invocation, list[Entry]]:
        """An invocation's record and journal."""
        live = self.live.get(invocation_id)
        if live is not None:
            self._touch(live)
            return live.record, list(live.journal)
        record = invocations.get(self.kv, invocation_id)
        if record is None:
            raise UnknownInvocation(invocation_id)
        return record, journal.load(self.kv, invocation_id)

    def records(self) -> list[Invocation]:
        """Every retained invocation's record, live ones as they are now."""
        out = {r.id: r for r in invocations.scan(self.kv)}
        for live in self.live.values():
            self._touch(live)
            out[live.id] = live.record
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
            record, [Entry(input=journal_pb2.InputCommand(request=request, headers=headers))]
        )
        self.live[live.id] = live
        journal.put(batch, live.id, 0, live.journal[0])
        if idempotency_key:
            ident = (service, method, key, idempotency_key)
            self._idempotent[ident] = live.id
            idempotency.put(batch, *ident, live.id)
        if invoke_at_ms > now:
            timers.put(batch, invoke_at_ms, live.id, -1)
            batch.then(lambda: self.timers.add(invoke_at_ms, live.id, -1))
        else:
            self._enqueue(batch, live)
        self._save(batch, live)
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
        batch.then(lambda: self._start_attempt(live))

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
            self._save(batch, nxt)
            batch.then(lambda nxt=nxt: self._start_attempt(nxt))  # type: ignore[misc]
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
            state=state.load(self.kv, record.service, record.key) if record.key else {},
            suspend_after_ms=int(self.settings.suspend_after * 1000),
            random_seed=record.random_seed,
            traceparent=record.traceparent,
        )
        log.debug("invocation %s attempt %d starting", record.id, record.attempts)
        # Rides in the group the attempt's start barrier waits for anyway: no extra fsync.
        batch = Batch()
        self._save(batch, live)
        self.committer.submit(batch)
        self.invoker.start(live, start)

    # ---- Events from an attempt (return an error text to fail the attempt)

    def on_entry(self, live: Live, attempt: Attempt, index: int, entry: Entry) -> str | None:
        """The handler proposed its next journal entry."""
        if live.attempt is not attempt:
            return None
        if index != len(live.journal):
            return (
                f"protocol violation: entry {index} proposed, but the journal has "
                f"{len(live.journal)} entries"
            )
        batch = Batch()
        kind = entry.WhichOneof("command")
        record = live.record
        log.debug("invocation %s step %d: %s", live.id, index, kind)
        if kind == "call":
            entry.ClearField("result")
            self._call(batch, live, index, entry)
        elif kind == "send":
            entry.ClearField("result")
            self._send(batch, live, entry)
        elif kind == "run":
            entry.ClearField("result")
        elif kind == "sleep":
            entry.ClearField("result")
            due = entry.sleep.wake_up_at_ms
            timers.put(batch, due, live.id, index)
            batch.then(lambda: self.timers.add(due, live.id, index))
        elif kind == "get_state":
            if not record.key or not entry.HasField("result"):
                return "protocol violation: get_state outside a keyed handler or without its result"
        elif kind in ("set_state", "clear_state"):
            if not record.exclusive:
                return f"protocol violation: {kind} is only allowed in exclusive handlers"
            if kind == "set_state":
                state.put(
                    batch, record.service, record.key, entry.set_state.key, entry.set_state.value
                )
            else:
                state.delete(batch, record.service, record.key, entry.clear_state.key)
        elif kind == "output":
            if not entry.HasField("result"):
                return "protocol violation: output entry without a result"
        else:
            return f"protocol violation: entry {index} has no valid command ({kind})"
        stored = Entry()
        stored.CopyFrom(entry)
        live.journal.append(stored)
        journal.put(batch, live.id, index, stored)
        if kind == "output":
            self._complete(batch, live, stored.result)
        self._save(batch, live)
        self.committer.submit(batch)
        return None

    def on_run_result(self, live: Live, attempt: Attempt, index: int, result: Result) -> str | None:
        """A side effect's outcome: journal it, then let the handler see it."""
        if live.attempt is not attempt:
            return None
        if index >= len(live.journal) or live.journal[index].WhichOneof("command") != "run":
            return f"protocol violation: run result for entry {index}, which is not a run"
        batch = Batch()
        self._complete_entry(batch, live, index, result)
        self.committer.submit(batch)
        return None

    def on_suspension(self, live: Live, attempt: Attempt, waiting_on: list[int]) -> str | None:
        """The handler waits on entries not completed yet; its stream closes."""
        if live.attempt is not attempt:
            return None
        for i in waiting_on:
            if i >= len(live.journal) or live.journal[i].WhichOneof("command") not in (
                "call",
                "run",
                "sleep",
            ):
                return f"protocol violation: suspended on entry {i}, which cannot complete"
        if not waiting_on:
            return "protocol violation: suspended waiting on nothing"
        live.attempt = None
        batch = Batch()
        if any(live.journal[i].HasField("result") for i in waiting_on):
            # Completed while the suspension was in flight: go on at once.
            batch.then(lambda: self._start_attempt(live))
        else:
            live.record.status = Status.SUSPENDED
            live.record.waiting_on[:] = sorted(waiting_on)
            log.info("invocation %s suspended, waiting on %s", live.id, sorted(waiting_on))
        self._save(batch, live)
        self.committer.submit(batch)
        return None

    def on_end(self, live: Live, attempt: Attempt) -> str | None:
        """The handler ended its attempt; it must have proposed its output first."""
        if live.attempt is not attempt:
            return None
        if live.record.status != Status.COMPLETED:
            return "protocol violation: the attempt ended without an output entry"
        live.attempt = None
        return None

    def on_attempt_failed(self, live: Live, attempt: Attempt, message: str) -> None:
        """The attempt failed transiently (handler error, crash, broken stream): retry."""
        if live.attempt is not attempt:
            return
        live.attempt = None
        if live.record.status == Status.COMPLETED:
            return
        self._backoff(live, message)

    def _backoff(self, live: Live, message: str) -> None:
        record = live.record
        delay = self.settings.backoff(record.attempts)
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
        self._save(batch, live)
        self.committer.submit(batch)
        handle = asyncio.get_running_loop().call_later(delay, self._retry, live)
        self._retries[live.id] = handle

    def _retry(self, live: Live) -> None:
        self._retries.pop(live.id, None)
        if live.record.status == Status.BACKING_OFF:
            self._start_attempt(live)

    # ---- Journal commands with effects elsewhere

    def _call(self, batch: Batch, live: Live, index: int, entry: Entry) -> None:
        call = entry.call
        try:
            _, _, key = reg.resolve(self.registry, call.service, call.method, call.request)
        except reg.BadRequest as e:
            entry.result.CopyFrom(failure(e.code, e.message))
            batch.then(lambda: self._deliver(live, index, entry.result))
            return
        child = self._create(
            batch,
            service=call.service,
            method=call.method,
            key=key,
            request=call.request,
            headers={},
            traceparent=live.record.traceparent,
            caller=(live.id, index),
        )
        call.invocation_id = child.id

    def _send(self, batch: Batch, live: Live, entry: Entry) -> None:
        send = entry.send
        try:
            _, _, key = reg.resolve(self.registry, send.service, send.method, send.request)
        except reg.BadRequest as e:
            log.warning("invocation %s: one-way send dropped: %s", live.id, e.message)
            return
        child = self._create(
            batch,
            service=send.service,
            method=send.method,
            key=key,
            request=send.request,
            headers={},
            traceparent=live.record.traceparent,
            invoke_at_ms=send.invoke_at_ms,
        )
        send.invocation_id = child.id

    # ---- Completion

    def _complete_entry(self, batch: Batch, live: Live, index: int, result: Result) -> None:
        entry = live.journal[index]
        if entry.HasField("result"):
            return  # already completed: a duplicate delivery
        entry.result.CopyFrom(result)
        journal.put(batch, live.id, index, entry)
        self._save(batch, live)
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

    def _complete(self, batch: Batch, live: Live, result: Result) -> None:
        record = live.record
        record.status = Status.COMPLETED
        record.result.CopyFrom(result)
        record.ClearField("waiting_on")
        record.expires_at_ms = now_ms() + int(self.settings.retention * 1000)
        invocations.schedule_expiry(batch, record.expires_at_ms, live.id)
        if record.caller.invocation_id:
            parent = self.live.get(record.caller.invocation_id)
            if parent is not None:
                self._complete_entry(batch, parent, record.caller.entry_index, result)
        if record.exclusive:
            self._release(batch, live.lock_key)
        outcome = "failed" if result.HasField("failure") else "succeeded"
        log.info("invocation %s %s after %d attempt(s)", live.id, outcome, record.attempts)
        batch.then(lambda: self._finish(live, result))

    def _finish(self, live: Live, result: Result) -> None:
        self.live.pop(live.id, None)
        if live.record.idempotency_key:
            r = live.record
            self._idempotent.pop((r.service, r.method, r.key, r.idempotency_key), None)
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
                self._complete_entry(batch, live, entry_index, Result(empty=journal_pb2.Empty()))
            elif live.record.status == Status.PENDING:
                self._enqueue(batch, live)
                self._save(batch, live)
        self.committer.submit(batch)

    # ---- Recovery

    def recover(self) -> None:
        """Rebuilds the in-memory view from storage and restarts what was in flight."""
        for record in invocations.scan(self.kv):
            if record.status == Status.COMPLETED:
                continue
            live = Live(record, journal.load(self.kv, record.id))
            self.live[record.id] = live
            if record.idempotency_key:
                ident = (record.service, record.method, record.key, record.idempotency_key)
                self._idempotent[ident] = record.id
            if record.exclusive and record.status != Status.PENDING:
                self._locks[live.lock_key] = record.id
        for service, key, seq, invocation_id in inbox.scan(self.kv):
            self._inboxes[(service, key)].append((seq, invocation_id))
            self._inbox_seq = max(self._inbox_seq, seq)
            if invocation_id in self.live:
                self.live[invocation_id].inbox_seq = seq
        for due, timer in timers.scan(self.kv):
            self.timers.add(due, timer.invocation_id, timer.entry_index)
        batch = Batch()
        for live in list(self.live.values()):
            status = live.record.status
            if status in (Status.RUNNING, Status.BACKING_OFF):
                batch.then(lambda live=live: self._start_attempt(live))  # type: ignore[misc]
            elif status == Status.SUSPENDED and any(
                live.journal[i].HasField("result") for i in live.record.waiting_on
            ):
                batch.then(lambda live=live: self._start_attempt(live))  # type: ignore[misc]
        for lock in list(self._inboxes):
            if lock not in self._locks:
                self._release(batch, lock)
        log.info("recovered %d in-flight invocation(s)", len(self.live))
        self.committer.submit(batch)

    # ---- Helpers

    def _touch(self, live: Live) -> None:
        live.record.journal_length = len(live.journal)

    def _save(self, batch: Batch, live: Live) -> None:
        live.record.modified_at_ms = now_ms()
        self._touch(live)
        invocations.put(batch, live.record)

    def purge_expired(self) -> int:
        """Deletes completed invocations whose retention ended; returns how many."""
        batch = Batch()
        count = 0
        for at, invocation_id in list(invocations.expired(self.kv, now_ms())):
            record = invocations.get(self.kv, invocation_id)
            invocations.unschedule_expiry(batch, at, invocation_id)
            if record is None or record.status != Status.COMPLETED:
                continue
            journal.delete(batch, invocation_id, record.journal_length)
            invocations.delete(batch, invocation_id)
            if record.idempotency_key:
                idempotency.delete(
                    batch, record.service, record.method, record.key, record.idempotency_key
                )
            count += 1
        if batch.puts:
            self.committer.submit(batch)
        return count


Callback = Callable[[], None]
