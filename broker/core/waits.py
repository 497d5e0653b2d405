"""Entries completed by something other than their own step: awakeables (by whoever
holds the id), durable promises (by any handler of the workflow, or an operator), and
attached invocations (when they end)."""

from __future__ import annotations

import collections
from collections.abc import Callable

from durable.v1 import cluster_pb2
from durable.wire import parse_awakeable_id

from ..codes import NOT_FOUND
from ..storage import Batch, promises
from ..storage import outbox as outbox_table
from ..storage.kv import KV
from . import actions
from .model import Live, Result, Status, failure
from .outbox import Outbox

Waiter = tuple[str, int]  # (invocation id, journal index)


CompleteEntry = Callable[[Batch, Live, int, Result], None]
# Completes an entry of an invocation by id, in this partition or through the outbox.
CompleteWaiter = Callable[[Batch, str, int, Result], None]


class Waits:
    """Who waits on which awakeable, promise or invocation; completes them.

    Args:
        kv: The store (completed promises and invocations are read from it).
        live: The partition's invocations in flight, by id.
        completed: The result of a completed, retained invocation, or None.
        complete_entry: Records an entry's result (the partition's own).
        complete_waiter: Completes an entry of an invocation here or elsewhere.
        outbox: Messages to other partitions (attaching to, or completing an awakeable
            of, an invocation that lives elsewhere).
    """

    def __init__(
        self,
        kv: KV,
        live: dict[str, Live],
        completed: Callable[[str], Result | None],
        complete_entry: CompleteEntry,
        complete_waiter: CompleteWaiter,
        outbox: Outbox,
    ) -> None:
        self._kv = kv
        self._live = live
        self._completed = completed
        self._complete_entry = complete_entry
        self._complete_waiter = complete_waiter
        self._outbox = outbox
        self._placement = outbox.placement
        self._attachers: dict[str, list[Waiter]] = collections.defaultdict(list)
        self._promise_waiters: dict[tuple[str, str, str], list[Waiter]] = collections.defaultdict(
            list
        )
        # Promises completed in batches not yet written: visible to reads at once.
        self._promises_pending: dict[tuple[str, str, str], Result] = {}

    # ---- Attached invocations

    def attach(self, batch: Batch, waiter: Waiter, target: str) -> Result | None:
        """The waiter's entry gets `target`'s result: returned now if `target` has
        completed, else delivered when it does (by its own partition, if elsewhere)."""
        if not self._placement.local(target):
            message = cluster_pb2.WaiterMessage(
                target_id=target, waiter_id=waiter[0], waiter_index=waiter[1]
            )
            self._outbox.to_owner(batch, target, cluster_pb2.OutboxMessage(attach=message))
            return None
        if target in self._live:
            self._attachers[target].append(waiter)
            if not self._placement.local(waiter[0]):
                # Not rebuilt from a journal here after a restart: remembered instead.
                outbox_table.put_attacher(batch, target, *waiter)
            return None
        done = self._completed(target)
        return done if done is not None else failure(NOT_FOUND, f"no invocation {target!r}")

    def get_output(self, batch: Batch, waiter: Waiter, target: str) -> None:
        """Asks `target`'s partition for its output (empty while it runs)."""
        message = cluster_pb2.WaiterMessage(
            target_id=target, waiter_id=waiter[0], waiter_index=waiter[1]
        )
        self._outbox.to_owner(batch, target, cluster_pb2.OutboxMessage(get_output=message))

    def invocation_completed(self, batch: Batch, invocation_id: str, result: Result) -> None:
        """Hands an invocation's result to everyone attached to it."""
        waiters = self._attachers.pop(invocation_id, [])
        for waiter_id, index in waiters:
            if not self._placement.local(waiter_id):
                outbox_table.delete_attacher(batch, invocation_id, waiter_id, index)
        self._complete(batch, waiters, result)

    def restore_remote_attacher(self, target: str, waiter: Waiter) -> None:
        """Takes back a remote waiter remembered in storage (at recovery)."""
        self._attachers[target].append(waiter)

    # ---- Awakeables

    def complete_awakeable(self, batch: Batch, awakeable_id: str, result: Result) -> str | None:
        """Completes an awakeable; returns why not when it cannot be. One of another
        partition's invocations is completed there (if it still can be)."""
        parsed = parse_awakeable_id(awakeable_id)
        if parsed is not None and not self._placement.local(parsed[0]):
            message = cluster_pb2.AwakeableMessage(awakeable_id=awakeable_id, result=result)
            self._outbox.to_owner(batch, parsed[0], cluster_pb2.OutboxMessage(awakeable=message))
            return None
        live = self._live.get(parsed[0]) if parsed else None
        if parsed is not None and (
            # A completed invocation stays live until its completion is durable.
            live.record.status == Status.COMPLETED
            if live is not None
            else self._completed(parsed[0]) is not None
        ):
            return f"awakeable {awakeable_id} was already completed (its invocation ended)"
        if parsed is None or live is None or parsed[1] >= len(live.journal):
            return f"no pending awakeable {awakeable_id!r}"
        entry = live.journal[parsed[1]]
        if not entry.HasField("awakeable"):
            return f"no pending awakeable {awakeable_id!r}"
        if entry.HasField("result"):
            return f"awakeable {awakeable_id} was already completed"
        self._complete_entry(batch, live, parsed[1], result)
        return None

    # ---- Durable promises

    def promise(self, service: str, key: str, name: str) -> Result | None:
        """A durable promise's result, or None while it is pending."""
        pending = self._promises_pending.get((service, key, name))
        if pending is not None:
            return pending
        return promises.get(self._kv, service, key, name)

    def wait_for_promise(self, service: str, key: str, name: str, waiter: Waiter) -> None:
        """Completes the waiter's entry when the promise is completed."""
        self._promise_waiters[(service, key, name)].append(waiter)

    def complete_promise(
        self, batch: Batch, service: str, key: str, name: str, result: Result
    ) -> bool:
        """Completes a durable promise once; False when it was already completed."""
        if self.promise(service, key, name) is not None:
            return False
        ident = (service, key, name)
        promises.put(batch, service, key, name, result)
        self._promises_pending[ident] = result
        batch.then(actions.PromiseWritten(service, key, name))
        self._complete(batch, self._promise_waiters.pop(ident, []), result)
        return True

    def promise_written(self, service: str, key: str, name: str) -> None:
        """A completed promise is durable: reads go to storage from now on."""
        self._promises_pending.pop((service, key, name), None)

    # ---- After a restart

    def index(self, batch: Batch, live: Live) -> None:
        """Re-registers what a recovered invocation waits on (completing what is done)."""
        r = live.record
        for index, entry in enumerate(live.journal):
            if entry.HasField("result"):
                continue
            if entry.HasField("get_promise"):
                name = entry.get_promise.name
                self.wait_for_promise(r.service, r.key, name, (live.id, index))
            elif entry.HasField("attach"):
                target = entry.attach.invocation_id
                if not self._placement.local(target):
                    continue  # the target's partition remembers this waiter
                result = self.attach(batch, (live.id, index), target)
                if result is not None:
                    self._complete_entry(batch, live, index, result)

    def _complete(self, batch: Batch, waiters: list[Waiter], result: Result) -> None:
        for invocation_id, index in waiters:
            self._complete_waiter(batch, invocation_id, index, result)
