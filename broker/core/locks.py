"""Key locks of virtual objects and workflows, and the inboxes of those waiting for them.

An exclusive handler holds its (service, key) while it runs; later invocations of the
same key wait in the key's inbox, in arrival order. This is the in-memory view only: the
partition writes each inbox change to the inbox table in the same batch.
"""

from __future__ import annotations

import collections

Lock = tuple[str, str]  # (service, key)


class KeyLocks:
    """Who holds each key, and who waits behind it (by inbox sequence number)."""

    def __init__(self) -> None:
        self._holders: dict[Lock, str] = {}
        self._inboxes: dict[Lock, collections.deque[tuple[int, str]]] = {}
        self._seq = 0

    def holder(self, lock: Lock) -> str | None:
        """The invocation holding `lock`, if any."""
        return self._holders.get(lock)

    def busy(self, lock: Lock) -> bool:
        """Whether a newcomer must wait: the key is held, or others wait already."""
        return lock in self._holders or bool(self._inboxes.get(lock))

    def waiting(self, lock: Lock) -> list[str]:
        """The invocations queued for `lock`, first in line first."""
        return [invocation_id for _, invocation_id in self._inboxes.get(lock, ())]

    def hold(self, lock: Lock, invocation_id: str) -> None:
        """Gives `lock` to the invocation."""
        self._holders[lock] = invocation_id

    def wait(self, lock: Lock, invocation_id: str) -> int:
        """Queues the invocation behind `lock`; returns its inbox sequence number."""
        self._seq += 1
        self._inboxes.setdefault(lock, collections.deque()).append((self._seq, invocation_id))
        return self._seq

    def leave(self, lock: Lock, seq: int, invocation_id: str) -> None:
        """Takes a waiting invocation out of the inbox (it ended while waiting)."""
        queue = self._inboxes.get(lock)
        if queue is not None:
            queue.remove((seq, invocation_id))
            if not queue:
                del self._inboxes[lock]

    def release(self, lock: Lock) -> tuple[int, str] | None:
        """Frees `lock`; returns the head of its inbox (seq, id), now taken off it, or
        None when nobody waits. The caller decides whether the head takes the lock."""
        self._holders.pop(lock, None)
        queue = self._inboxes.get(lock)
        if not queue:
            self._inboxes.pop(lock, None)
            return None
        head = queue.popleft()
        if not queue:
            del self._inboxes[lock]
        return head

    # ---- Rebuilding after a restart

    def restore_waiter(self, lock: Lock, seq: int, invocation_id: str) -> None:
        """Puts back an inbox row read from storage (rows come in key order)."""
        self._inboxes.setdefault(lock, collections.deque()).append((seq, invocation_id))
        self._seq = max(self._seq, seq)

    def unheld_with_waiters(self) -> list[Lock]:
        """Keys nobody holds although invocations wait for them."""
        return [lock for lock in self._inboxes if lock not in self._holders]
