"""Applies a partition's stream to a local store: what a follower does all the time and a
new leader does until it holds every entry."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from ..storage import position
from ..storage.kv import KV
from . import codec
from .engine import stream_name, subject
from .log import MARKER_HEADER, PART_HEADER, appended_by_a_broker

log = logging.getLogger("broker.replication")

# How often a wait for the log checks whether a failed tail was replaced.
_REPLACED_POLL_S = 0.05
# How often JetStream tells an idle tail its consumer is alive. nats-py's ordered
# consumer notices a consumer that went silent (it lived on a NATS server that
# restarted) only when two heartbeats went missing, and only then makes a new one; with
# its default of 5 s, a chaos run's new leader waited 15 s for its own marker (its
# consumer's re-creation timed out once; the next check came 10 s later) while holding
# the partition's lease, so no other node could serve it either. At 0.5 s a silent
# consumer is replaced within 1-2 s; it costs two tiny messages a second per idle tail.
HEARTBEAT_S = 0.5


class Gap(Exception):
    """The next entry is gone from the log (trimmed below a snapshot): this store must
    be restored from the snapshot before it can follow again."""


def _count(text: str) -> bool:
    """Whether `text` is a count in ASCII digits (`str.isdigit` takes "²" too)."""
    return text.isascii() and text.isdigit()


def entry_writes(
    partition: int, sequence: int, data: bytes, headers: dict[str, str] | None
) -> list[codec.Write]:
    """The writes the entry at `sequence` holds: none for a leadership marker, and none
    for a message no broker appended.

    Anyone who can reach NATS can publish on a partition's subject, and JetStream keeps
    the message like any entry. No leader wrote it, so it holds no acknowledged work:
    it is passed over, loudly, even when its bytes happen to decode (applying them would
    let any NATS client write the journal). Stopping there instead would leave every
    node unable to follow or lead the partition, its invocations stranded for good.

    Raises:
        codec.CorruptEntry: A leader's own entry that does not decode: the log is
            damaged, and passing over it would lose acknowledged writes.
    """
    if not appended_by_a_broker(headers):
        log.error(
            "partition %d: entry %d of the log was not appended by a broker (it has no "
            "leader's append id); skipped. Something else publishes on %s: only brokers may.",
            partition,
            sequence,
            subject(partition),
        )
        return []
    assert headers is not None
    if MARKER_HEADER in headers:
        return []
    try:
        return codec.decode(data)
    except codec.CorruptEntry as e:
        raise codec.CorruptEntry(
            f"partition {partition}: entry {sequence}, appended by a leader, is damaged "
            f"({e}); this node cannot follow the log past it"
        ) from None


class Parts:
    """Puts a partition's entries back together: a batch too large for one entry comes
    in parts (`PartitionLog.append`), and nothing of it is applied before its last part.

    Args:
        partition: Whose log (for the log lines).
    """

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self._held: list[bytes] = []
        self._of = 0

    @property
    def holding(self) -> bool:
        """Whether some parts of a batch were read and its last one was not."""
        return bool(self._held)

    def writes(
        self, sequence: int, data: bytes, headers: dict[str, str] | None
    ) -> list[codec.Write] | None:
        """What to apply at entry `sequence`: its writes, or a whole batch's at its last
        part; None at any other part (nothing to apply yet)."""
        part = headers.get(PART_HEADER) if headers else None
        by_a_broker = appended_by_a_broker(headers)
        if part is None or not by_a_broker:
            if self._held and by_a_broker:
                # Only a new leader appends after a batch cut short: its leader stopped
                # before the last part, so it never acknowledged the batch.
                self._drop(sequence, "a leader stopped before its last part")
            return entry_writes(self.partition, sequence, data, headers)
        k, sep, n = part.partition("/")
        if not (sep and _count(k) and _count(n) and 1 <= int(k) <= int(n)):
            raise codec.CorruptEntry(
                f"partition {self.partition}: entry {sequence} has a bad {PART_HEADER} "
                f"header {part!r}"
            )
        if int(k) == 1:
            if self._held:
                self._drop(sequence, "a new batch began")
            self._of = int(n)
        elif int(k) != len(self._held) + 1 or int(n) != self._of:
            raise codec.CorruptEntry(
                f"partition {self.partition}: entry {sequence} is part {part} of a batch "
                f"but {len(self._held)} of {self._of} parts were read before it"
            )
        self._held.append(data)
        if int(k) < int(n):
            return None
        whole, self._held = b"".join(self._held), []
        return entry_writes(self.partition, sequence, whole, headers)

    def _drop(self, sequence: int, why: str) -> None:
        log.warning(
            "partition %d: %d part(s) of a batch before entry %d are dropped (%s)",
            self.partition,
            len(self._held),
            sequence,
            why,
        )
        self._held = []


class Tail:
    """Follows one partition's stream into `kv`, from the entry after its position.

    Args:
        js: JetStream.
        partition: Whose stream.
        kv: The partition's local store (this tail is its only writer while it runs).
    """

    def __init__(self, js: JetStreamContext, partition: int, kv: KV) -> None:
        self._js = js
        self.partition = partition
        self._kv = kv
        self.applied = position.get(kv)
        # The last entry read: `applied`, or a part of a batch not applied yet.
        self.read = self.applied
        self._parts = Parts(partition)
        self._moved = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failed: BaseException | None = None

    def start(self) -> None:
        """Starts following."""
        self._task = asyncio.create_task(self._run(), name=f"tail-p{self.partition}")

    async def stop(self) -> None:
        """Stops following; `applied` stays where it got to."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    async def reach(self, sequence: int, timeout: float) -> bool:
        """Waits until the entry at `sequence` is read (applied, or held as a part of a
        batch whose last part is still to come); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.read < sequence:
            if self.failed is not None:
                return False
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._moved.clear()
            try:
                await asyncio.wait_for(self._moved.wait(), left)
            except TimeoutError:
                return False
        return True

    async def _run(self) -> None:
        sub = None
        try:
            await self._check_kept()
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.applied + 1
            )
            sub = await self._js.subscribe(
                subject(self.partition),
                ordered_consumer=True,
                config=config,
                idle_heartbeat=HEARTBEAT_S,
            )
            async for msg in sub.messages:
                self._apply(msg)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.failed = e
            self._moved.set()
            if not isinstance(e, Gap):
                log.error("following partition %d's log failed: %s", self.partition, e)
        finally:
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except Exception:
                    pass

    async def _check_kept(self) -> None:
        """Raises `Gap` when entries this store needs were trimmed: a log trimmed up to
        its very end delivers nothing more until the next append, so waiting for the
        next entry would not tell."""
        state = (await self._js.stream_info(stream_name(self.partition))).state
        first, last = int(state.first_seq or 0), int(state.last_seq or 0)
        if last > self.applied and first > self.applied + 1:
            raise Gap(
                f"partition {self.partition}: the log keeps entries {first} to {last} only "
                f"but this store holds entries up to {self.applied}"
            )

    async def finished(self) -> None:
        """Waits until following ends (it failed: see `failed`)."""
        if self._task is not None:
            # `wait`, not the task itself: its failure is not ours, our cancellation is.
            await asyncio.wait([self._task])

    def _apply(self, msg: Msg) -> None:
        sequence = msg.metadata.sequence.stream
        if sequence <= self.read:
            return  # redelivered after a consumer reset
        if sequence > self.read + 1:
            raise Gap(
                f"partition {self.partition}: the log continues at entry {sequence} but this "
                f"store holds entries up to {self.read} only"
            )
        writes = self._parts.writes(sequence, msg.data, msg.headers)
        if writes is not None:
            # The entry's writes and its position in one write: a crash keeps both or none.
            self._kv.write([*writes, position.put(sequence)])
            self.applied = sequence
        self.read = sequence
        self._moved.set()


async def reach_through(current: Callable[[], Tail], sequence: int, timeout: float) -> bool:
    """Waits until the store holds the log up to `sequence`, through whichever tail
    `current()` is: a tail that failed (NATS unreachable, entries trimmed below a
    snapshot) answers `reach` at once, until the follower replaces it after a pause.

    Asking the failed tail again and again never yields to the event loop: the follower
    could not replace it, and the whole node (its leases, its callers) would hang until
    `timeout`. So once a tail failed this waits for its replacement without spinning.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        tail = current()
        if await tail.reach(sequence, min(left, 0.5)):
            return True
        if tail.failed is not None:
            await asyncio.sleep(min(left, _REPLACED_POLL_S))  # polled up to the deadline
    return False
