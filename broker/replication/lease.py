"""Who leads each partition: a key per partition in a bucket with a TTL.

Taking a lease is a create (refused while the key exists); holding it is an update
that names the revision it replaces (refused once anyone else wrote). A leader that
stops renewing loses the key after the bucket's TTL, and a follower may create it. The
lease decides who should lead; the fenced appends (`log`) are what make a deposed
leader harmless.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json

import nats.js.errors
from nats.js.kv import KeyValue

from .ask import ASK_S


@dataclasses.dataclass(frozen=True)
class Holder:
    """A partition's leader and where its partition listens (empty until it serves)."""

    node: str
    ingress: str = ""
    admin: str = ""
    metrics: str = ""

    def encode(self) -> bytes:
        """The lease's value."""
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> Holder | None:
        """Parses `encode`'s form; None for anything else."""
        try:
            fields = json.loads(raw or b"")
            return cls(
                **{k: str(fields.get(k, "")) for k in ("node", "ingress", "admin", "metrics")}
            )
        except (ValueError, TypeError, AttributeError):
            return None


def key(partition: int) -> str:
    """The lease's key."""
    return f"p{partition}"


class Leases:
    """The lease bucket.

    Args:
        bucket: `durable_leases`.
    """

    def __init__(self, bucket: KeyValue) -> None:
        self._bucket = bucket

    async def read(self, partition: int) -> Holder | None:
        """The partition's leader now, or None when nobody holds the lease.

        Raises:
            TimeoutError: no answer within `ASK_S` (the bucket electing its leader): the
                node's loop reads again in a moment rather than after nats-py's 5 s,
                while a vacant partition waits for it (`ask`).
        """
        try:
            entry = await asyncio.wait_for(self._bucket.get(key(partition)), ASK_S)
        except nats.js.errors.KeyNotFoundError:
            return None
        return Holder.decode(entry.value)

    async def take(self, partition: int, holder: Holder) -> int | None:
        """Creates the lease; its revision, or None when somebody holds it.

        Raises:
            TimeoutError: neither the create nor the read that follows an unanswered
                create was answered within `ASK_S` (the node's next look tries again).
        """
        try:
            return await asyncio.wait_for(
                self._bucket.create(key(partition), holder.encode()), ASK_S
            )
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            # KeyNotFound: the key expired between nats-py's two requests; next round.
            return None
        except TimeoutError:
            # Unanswered (the bucket electing its leader): nats-py would have waited 5 s
            # while the partition has no leader. The create may have been stored all the
            # same; then the lease names this node and is kept from here.
            return await asyncio.wait_for(self.adopt(partition, holder), ASK_S)

    async def renew(self, partition: int, holder: Holder, revision: int) -> int | None:
        """Rewrites the lease held at `revision`; the new revision, or None when it was
        lost (expired and taken, or deleted)."""
        try:
            return await self._bucket.update(key(partition), holder.encode(), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return None

    async def adopt(self, partition: int, holder: Holder) -> int | None:
        """Rewrites the lease if it names `holder`'s node (whatever its revision: a
        renewal whose answer was lost moved it on); the new revision, or None when the
        lease is vacant or another node's."""
        try:
            entry = await self._bucket.get(key(partition))
        except nats.js.errors.KeyNotFoundError:
            return None
        current = Holder.decode(entry.value)
        if current is None or current.node != holder.node or entry.revision is None:
            return None
        return await self.renew(partition, holder, entry.revision)

    async def release(self, partition: int, revision: int) -> None:
        """Gives the lease up (if still held at `revision`) so a follower takes over now
        rather than after the TTL."""
        try:
            await self._bucket.delete(key(partition), last=revision)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
            pass  # no longer ours (it expired, or another node holds it)
