"""Entries completed by something other than their own step: awakeables (by whoever
holds the id), durable promises (by any handler of the workflow, or an operator), and
attached invocations (when they end)."""

from __future__ import annotations

import collections
from collections.abc import Callable

from ..codes import NOT_FOUND
from ..storage import Batch, promises
from ..storage.kv import KV
from . import actions
from .model import Live, Result, Status, failure, parse_awakeable_id

Waiter = tuple[str, int]  # (invocation id, journal index)


CompleteEntry = Callable[[Batch, Live, int, Result], None]


class Waits:
    """Who waits on which awakeable, promise or invocation; completes them.

    Args:
        kv: The store (completed promises and invocations are read from it).
        live: The partition's invocations in flight, by id.
        completed: The result of a completed, retained invocation, or None.
        complete_entry: Records an entry's result (the partition's own).
    """

    def __init__(
        self,
        kv: KV,
        live: dict[str, Live],
        completed: Callable[[str], Result | None],
        complete_entry: CompleteEntry,
    ) -> None:
        self._kv = kv
        self._live = live
        self._completed = completed
        self._complete_entry = complete_entry
        self._attachers: dict[str, list[Waiter]] = collections.defaultdict(list)
        self._promise_waiters: dict[tuple[str, str, str], list[Waiter]] = collections.defaultdict(
            list
        )
        # Promises completed in batches not yet written: visible to reads at once.
        self._promises_pending: dict[tuple[str, str, str], Result] = {}

    # ---- Attached invocations

    def attach(self, live: Live, index: int, target: str) -> Result | None:
        """Completes entry `index` with `target`'s result, now or when it completes."""
        if target in self._live:
            self._attachers[target].append((live.id, index))
            return None
        done = self._completed(target)
        return done if done is not None else failure(NOT_FOUND, f"no invocation {target!r}")

    def invocation_completed(self, batch: Batch, invocation_id: str, result: Result) -> None:
        """Hands an invocation's result to everyone attached to it."""
        self._complete(batch, self._attachers.pop(invocation_id, []), result)

    # ---- Awakeables

    def complete_awakeable(self, batch: Batch, awakeable_id: str, result: Result) -> str | None:
        """Completes an awakeable; returns why not when it cannot be."""
        parsed = parse_awakeable_id(awakeable_id)
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
                result = self.attach(live, index, entry.attach.invocation_id)
                if result is not None:
                    self._complete_entry(batch, live, index, result)

    def _complete(self, batch: Batch, waiters: list[Waiter], result: Result) -> None:
        for invocation_id, index in waiters:
            waiter = self._live.get(invocation_id)
            if waiter is not None:
                self._complete_entry(batch, waiter, index, result)
