"""A leader's appends to its partition's stream, fenced.

Each append says which sequence it expects to follow (`Nats-Expected-Last-Sequence`):
once another leader has appended, every append of the old one is refused, so a paused
or partitioned leader can never write after its successor. Each append also carries an
id of its own (`Nats-Msg-Id`): a retry after a lost answer gets the first try's sequence
back instead of a second copy (JetStream checks the id before the expected sequence).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from .. import logs
from ..storage.kv import StoreUnavailable
from . import codec
from .ask import ASK_S
from .codec import Write
from .engine import API_TIMEOUT_S, MAX_ENTRY_BYTES, subject
from .turns import Turns

log = logging.getLogger("broker.replication")

# JetStream's answer to a stale `Nats-Expected-Last-Sequence`.
WRONG_LAST_SEQUENCE = 10071
MARKER_HEADER = "Durable-Leader"
# On each part of a batch too large for one entry: "k/n" (`PartitionLog.append`).
PART_HEADER = "Durable-Part"
APPEND_ID_HEADER = "Nats-Msg-Id"
# A leader's append ids: its own random prefix, then a count.
_APPEND_ID = re.compile(r"[0-9a-f]{32}-[0-9]+")
_MAX_BACKOFF_S = 1.0


def pieces(data: bytes, limit: int) -> list[bytes]:
    """`data` cut into pieces of at most `limit` bytes; one piece when it fits."""
    return [data[i : i + limit] for i in range(0, len(data), limit)] or [b""]


def appended_by_a_broker(headers: dict[str, str] | None) -> bool:
    """Whether an entry carries the append id every leader's append has (`_publish`)."""
    return headers is not None and bool(_APPEND_ID.fullmatch(headers.get(APPEND_ID_HEADER, "")))


class Fenced(StoreUnavailable):
    """Another node leads this partition now: this one must stop writing."""


class PartitionLog:
    """Appends to one partition's stream, as its leader.

    Args:
        js: JetStream.
        partition: Whose stream.
        last: The stream's last sequence as this leader wrote or read it.
        observe: Told the seconds each append took (retries included).
        turns: The node's turns to append, shared with its other partitions' logs
            (None: this log appends whenever its committer has a group).
        max_entry_bytes: The largest entry to publish (`Engine.entry_limit`).
    """

    def __init__(
        self,
        js: JetStreamContext,
        partition: int,
        last: int,
        observe: Callable[[float], None] | None = None,
        turns: Turns | None = None,
        max_entry_bytes: int = MAX_ENTRY_BYTES,
    ) -> None:
        self._js = js
        self._max_entry_bytes = max_entry_bytes
        self._observe = observe
        self._turns = turns
        self.partition = partition
        self.last = last
        self._subject = subject(partition)
        self._ids = f"{uuid.uuid4().hex}-"
        self._count = 0
        self.fenced = False

    async def append(self, writes: list[Write]) -> int:
        """Appends `writes` as one entry; returns its sequence once a quorum stored it.

        Writes larger than an entry (one batch can hold a few payloads of up to
        --max-payload-bytes, and a NATS server may accept less than `MAX_ENTRY_BYTES`)
        go in parts, each headed `PART_HEADER: k/n`; the sequence returned is the last
        part's. Followers apply the parts together once the last is read (`tail.Parts`),
        and this leader applies them only after that. A leader that stops between two
        parts never acknowledged the batch: the next leader's marker drops the parts.

        Transient failures (a server restarting, an election) are retried with the same
        id until they succeed.

        Raises:
            Fenced: another leader appended since this one's last entry.
        """
        parts = pieces(codec.encode(writes), self._max_entry_bytes)
        if len(parts) == 1:
            return await self._publish(parts[0], {})
        sequence = 0
        for k, part in enumerate(parts, 1):
            sequence = await self._publish(part, {PART_HEADER: f"{k}/{len(parts)}"})
        return sequence

    def turn(self) -> AbstractAsyncContextManager[None]:
        """Waits for this partition's turn to append (`Turns`)."""
        return nullcontext() if self._turns is None else self._turns.turn()

    def close(self) -> None:
        """Stops appending (this node steps down): an append being retried gives up."""
        self.fenced = True

    async def append_batches(self, batches: list[list[Write]]) -> list[tuple[list[Write], int]]:
        """Appends a group commit's batches, in as few entries as the size limit allows
        (a batch is never cut between entries; one larger than an entry goes in parts);
        each entry's writes and sequence, in order."""
        out: list[tuple[list[Write], int]] = []
        for writes in codec.chunks(batches, self._max_entry_bytes):
            out.append((writes, await self.append(writes)))
        return out

    async def mark(self, node: str) -> int:
        """Appends the entry that starts a leadership (it holds no writes): from here
        on, the previous leader's appends are refused.

        The partition has no serving leader until this is stored, and the marker is
        empty: a try that goes unanswered (the stream electing its leader) is sent again
        after `ASK_S`, not after JetStream's usual timeout (`ask`)."""
        return await self._publish(b"", {MARKER_HEADER: node}, per_try=ASK_S)

    async def _publish(
        self, payload: bytes, extra: dict[str, str], per_try: float = API_TIMEOUT_S
    ) -> int:
        if self.fenced:
            raise Fenced(f"partition {self.partition} is led by another node now")
        self._count += 1
        headers = {
            **extra,
            APPEND_ID_HEADER: f"{self._ids}{self._count}",
            "Nats-Expected-Last-Sequence": str(self.last),
        }
        delay = 0.05
        started = time.perf_counter()
        while True:
            try:
                ack = await self._js.publish(
                    self._subject, payload, timeout=per_try, headers=headers
                )
            except nats.js.errors.APIError as e:
                if e.err_code == WRONG_LAST_SEQUENCE:
                    self.fenced = True
                    raise Fenced(
                        f"partition {self.partition}: another leader appended after "
                        f"sequence {self.last}; this node steps down"
                    ) from None
                log.warning("append to partition %d refused, retrying: %s", self.partition, e)
            except (TimeoutError, nats.errors.Error) as e:
                log.warning(
                    "append to partition %d failed, retrying: %s",
                    self.partition,
                    logs.reason(e),
                )
            else:
                self.last = ack.seq
                if self._observe is not None:
                    self._observe(time.perf_counter() - started)
                return ack.seq
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF_S)
            if self.fenced:
                raise Fenced(f"partition {self.partition}: this node stepped down")
