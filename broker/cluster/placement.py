"""Which partition owns a key, an idempotency identity or an invocation id.

A virtual object's or workflow's invocations live in the partition of their key alone
(not the service's name): a saga whose services share one key (a trip id) stays in one
partition, with no cross-partition traffic. An invocation id names its partition by its
hash: ids are drawn until one lands where the invocation lives (a few draws on average),
so ids keep their documented form.
"""

from __future__ import annotations

import zlib

from ..core.model import new_invocation_id


def of_bytes(data: bytes, partitions: int) -> int:
    """The partition of an arbitrary byte string."""
    return zlib.crc32(data) % partitions


def of_key(key: str, partitions: int) -> int:
    """The partition of a virtual object's or workflow's key."""
    return of_bytes(b"k" + key.encode(), partitions)


def of_identity(service: str, method: str, idempotency_key: str, partitions: int) -> int:
    """The partition of a plain invocation started with an idempotency key."""
    raw = b"i" + b"\0".join((service.encode(), method.encode(), idempotency_key.encode()))
    return of_bytes(raw, partitions)


def of_id(invocation_id: str, partitions: int) -> int:
    """The partition an invocation id names."""
    return of_bytes(invocation_id.encode(), partitions)


def new_id(partition: int, partitions: int) -> str:
    """A fresh invocation id (`model.new_invocation_id`'s form) that names `partition`."""
    while True:
        candidate = new_invocation_id()
        if partitions == 1 or of_id(candidate, partitions) == partition:
            return candidate


class Placement:
    """One partition's view of the others.

    Args:
        me: This partition's number.
        partitions: How many there are.
    """

    def __init__(self, me: int = 0, partitions: int = 1) -> None:
        self.me = me
        self.partitions = partitions

    @property
    def single(self) -> bool:
        """Whether this is the only partition (the embedded broker)."""
        return self.partitions == 1

    def home(self, service: str, method: str, key: str, idempotency_key: str) -> int | None:
        """Where a new invocation must live, or None when any partition will do."""
        if self.single:
            return self.me
        if key:
            return of_key(key, self.partitions)
        if idempotency_key:
            return of_identity(service, method, idempotency_key, self.partitions)
        return None

    def of_id(self, invocation_id: str) -> int:
        """The partition owning `invocation_id`."""
        return self.me if self.single else of_id(invocation_id, self.partitions)

    def local(self, invocation_id: str) -> bool:
        """Whether `invocation_id` lives in this partition."""
        return self.single or of_id(invocation_id, self.partitions) == self.me

    def new_id(self, partition: int | None = None) -> str:
        """A fresh id for an invocation living in `partition` (default: this one)."""
        return new_id(self.me if partition is None else partition, self.partitions)
