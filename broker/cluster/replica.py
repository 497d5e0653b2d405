"""Cluster mode: one partition on this node, following its log or leading it.

Following, a `Tail` applies the partition's log to the local RocksDB. Leading: the
lease is taken, a marker entry fences off the previous leader's appends, the tail
applies everything up to the marker, and a `Broker` over the same store serves the
partition, its committer appending to the log before anything counts. Leadership ends
when the lease cannot be renewed, when an append is refused (another leads), or on
request; the broker stops and the tail takes over the store again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging

from nats.js.object_store import ObjectStore

from .. import logs
from ..replication import snapshot
from ..replication.ask import again
from ..replication.engine import LEASE_TTL_S, stream_name
from ..replication.lease import Holder
from ..replication.log import Fenced, PartitionLog
from ..replication.tail import Gap, Tail, reach_through
from ..server import DRAIN_S, Broker
from ..storage import open_kv, position
from ..storage.kv import KV, RocksKV
from . import layout
from .host import Host
from .placement import Placement

log = logging.getLogger("broker.cluster")

RENEW_S = LEASE_TTL_S / 5
# A new leader gives up when it cannot apply the log's tail within this.
CATCH_UP_S = 60.0
# How long a new leader asks for the log's end: past a stream's election (up to ~9 s
# after its leader's NATS server died), not the whole catch-up bound, so a node that
# cannot reach the stream gives the lease up and tries afresh.
LOG_END_S = 15.0
_STOP_S = 15.0
_RETRY_S = 1.0
SNAPSHOT_CHECK_S = 2.0


class Replica:
    """Partition `partition` on `node`."""

    def __init__(self, node: Host, partition: int) -> None:
        self.node = node
        self.partition = partition
        assert node.settings.data_dir is not None
        self.path = layout.partition_dir(node.settings.data_dir, partition)
        self.kv: KV = open_kv(self.path, node.settings.accept_data_loss)
        self.tail = Tail(node.engine.js, partition, self.kv)
        self.broker: Broker | None = None
        self._log: PartitionLog | None = None
        self._revision = 0
        self._holding: asyncio.Task[None] | None = None
        self._following: asyncio.Task[None] | None = None
        self._snapshotting: asyncio.Task[None] | None = None
        # When this node last stored a snapshot of the partition (wall clock), if it did.
        self.snapshot_at: float | None = None
        # Taking over or stepping down: the node's loop leaves this replica alone.
        self.busy = False

    @property
    def leading(self) -> bool:
        """Whether this node leads the partition now."""
        return self.broker is not None

    @property
    def applied(self) -> int:
        """The last log entry applied here."""
        if self._log is not None:
            return self._log.last
        return self.tail.applied

    def follow(self) -> None:
        """Starts following the log (restoring the latest snapshot when the entries this
        store needs next were trimmed away)."""
        if self.broker is not None or self._following is not None:
            # A tail beside a leader's broker would write older entries over newer
            # state in the same store: never both.
            log.error("partition %d: asked to follow while leading or following", self.partition)
            return
        self.tail = Tail(self.node.engine.js, self.partition, self.kv)
        self._following = asyncio.create_task(self._follow(), name=f"follow-p{self.partition}")

    async def _follow(self) -> None:
        while True:
            self.tail.start()
            await self.tail.finished()
            if isinstance(self.tail.failed, Gap):
                log.info("%s; restoring the latest snapshot", self.tail.failed)
                await self._restore()
            else:
                await asyncio.sleep(_RETRY_S)  # NATS unreachable, say: follow again
            self.tail = Tail(self.node.engine.js, self.partition, self.kv)

    async def _restore(self) -> None:
        store = self.node.engine.snapshots
        assert store is not None
        try:
            found = await snapshot.latest(store, self.partition)
        except Exception as e:
            log.warning(
                "partition %d: reading the snapshot failed: %s; retrying", self.partition, e
            )
            await asyncio.sleep(_RETRY_S)
            return
        if found is None or found[0] <= self.tail.applied:
            log.error(
                "partition %d: entries after %d are gone from the log and no newer snapshot "
                "exists; retrying",
                self.partition,
                self.tail.applied,
            )
            await asyncio.sleep(_RETRY_S)
            return
        covered, data = found
        try:
            staged = await asyncio.to_thread(snapshot.stage, data, self.path, covered)
        except snapshot.BadSnapshot as e:
            # Not a leader's (something else wrote the object store): the next snapshot
            # a leader takes replaces it, and this node tries again until then.
            log.error(
                "partition %d: the stored snapshot cannot be restored: %s; retrying",
                self.partition,
                e,
            )
            await asyncio.sleep(_RETRY_S)
            return
        self.kv.close()
        snapshot.swap(staged, self.path)
        self.kv = open_kv(self.path, self.node.settings.accept_data_loss)
        log.info("partition %d: restored the snapshot at log entry %d", self.partition, covered)

    async def _stop_following(self) -> None:
        if self._following is not None:
            self._following.cancel()
            try:
                await self._following
            except (asyncio.CancelledError, Exception):
                pass
            self._following = None
        await self.tail.stop()

    async def _reach(self, sequence: int, timeout: float) -> bool:
        """Waits until this store holds the log up to `sequence` (through restores, and
        through tails that failed and were started again)."""
        return await reach_through(lambda: self.tail, sequence, timeout)

    async def take(self) -> None:
        """Tries to take the lease and lead; a lost race or a failure leaves it following."""
        self.busy = True
        try:
            if self.leading or self._holding is not None:
                return  # already leads: its own renewals keep (or retake) the lease
            starting = Holder(self.node.name)
            try:
                revision = await self.node.leases.take(self.partition, starting)
            except Exception as e:
                # NATS busy (a bucket electing its leader): the next look tries again.
                reason = logs.reason(e)
                log.warning("partition %d: taking the lease failed: %s", self.partition, reason)
                return
            if revision is None:
                return
            self._revision = revision
            # Catching up and recovering may outlast the lease's TTL: renew meanwhile.
            keeping = asyncio.create_task(self._keep(starting))
            try:
                await self._lead(keeping)
            except Exception as e:
                log.error("partition %d: taking over failed: %s", self.partition, e)
                await self._step_down(release=True)
            finally:
                keeping.cancel()
        finally:
            self.busy = False

    async def _keep(self, holder: Holder) -> None:
        """Renews the lease while this node takes over (`_hold` does once it leads)."""
        while True:
            await asyncio.sleep(RENEW_S)
            try:
                revision = await self.node.leases.renew(self.partition, holder, self._revision)
            except Exception:
                continue  # NATS busy: the appends' fence keeps a lost lease harmless
            if revision is None:
                return
            self._revision = revision

    async def _lead(self, keeping: asyncio.Task[None]) -> None:
        assert self.broker is None, "a replica leads through one broker at a time"
        js = self.node.engine.js
        # When each step ended: the log shows where a slow take-over spent its time.
        clock = asyncio.get_running_loop().time
        steps = [clock()]
        # Asked again soon when unanswered: the stream may be electing its leader (`ask`).
        info = await again(lambda: js.stream_info(stream_name(self.partition)), LOG_END_S)
        last = info.state.last_seq
        steps.append(clock())
        self._log = PartitionLog(
            js,
            self.partition,
            last,
            observe=lambda s: self.node.append_seconds.observe(s, str(self.partition)),
            turns=self.node.turns,
            max_entry_bytes=self.node.engine.entry_limit,
        )
        marker = await self._log.mark(self.node.name)
        steps.append(clock())
        if not await self._reach(marker, CATCH_UP_S):
            raise RuntimeError(f"could not apply the log up to entry {marker}")
        steps.append(clock())
        await self._stop_following()
        settings = dataclasses.replace(
            self.node.settings,
            data_dir=self.path,
            ingress="127.0.0.1:0",
            admin="127.0.0.1:0",
            tls_cert=None,
            tls_key=None,
            console=None,
            metrics=None,
        )
        broker = Broker(
            settings,
            placement=Placement(self.partition, self.node.count),
            transport=self.node.deliver,
            delivery_secret=self.node.secret,
            kv=self.kv,
            log=self._log,
            streams=self.node.streams,
        )
        await broker.start()
        steps.append(clock())
        self.broker = broker
        holder = Holder(
            self.node.name,
            ingress=f"127.0.0.1:{broker.ingress_port}",
            admin=f"127.0.0.1:{broker.admin_port}",
        )
        self.node.serve(self.partition, broker)
        keeping.cancel()
        revision = await self.node.leases.renew(self.partition, holder, self._revision)
        if revision is None:  # a renewal cancelled in flight may have moved it on
            revision = await self.node.leases.adopt(self.partition, holder)
        if revision is None:
            raise Fenced(f"partition {self.partition}: the lease was lost while starting")
        self._revision = revision
        self.node.leaders.set(self.partition, holder)
        steps.append(clock())
        took = [later - earlier for earlier, later in itertools.pairwise(steps)]
        log.info(
            "partition %d: leading from log entry %d (took %.2f s: log end %.2f, marker "
            "%.2f, catch-up %.2f, recovery %.2f, lease %.2f)",
            self.partition,
            marker,
            steps[-1] - steps[0],
            *took,
        )
        self._holding = asyncio.create_task(self._hold(holder, broker))
        self._snapshotting = asyncio.create_task(self._snapshots())

    async def _snapshots(self) -> None:
        """Snapshots every `snapshot_entries` log entries and trims the log below the
        snapshot and below every live follower.

        The trim is tried on every check, not only after a new snapshot: a follower
        behind when the snapshot was taken holds the trim back only until it catches
        up, even if no entry is appended after.

        It trims only below a snapshot this leader stored itself. The stored one's claim
        says when the next is due, but its bytes were never read here: one that does
        not restore (junk that claims a position this leader reached) would leave a
        rebuilding node neither a snapshot nor the log below its claim.
        """
        store = self.node.engine.snapshots
        assert store is not None and isinstance(self.kv, RocksKV)
        covered = await self._stored_snapshot(store)
        own = 0  # the position of the last snapshot this leader stored: trims stay below
        trimmed = 0
        every = max(self.node.settings.snapshot_entries, 1)
        while True:
            await asyncio.sleep(SNAPSHOT_CHECK_S)
            if self._log is None:
                continue
            try:
                if self._log.last - covered >= every:
                    covered = own = await snapshot.take(
                        store, self.partition, self.kv, self.node.settings.data_dir or "."
                    )
                floor = trim_floor(own, self._followers(), trimmed)
                if floor is None:
                    continue
                await self.node.engine.js.purge_stream(stream_name(self.partition), seq=floor + 1)
                trimmed = floor
                log.info("partition %d: log trimmed below entry %d", self.partition, floor + 1)
            except Exception as e:
                log.warning("partition %d: snapshot failed, retrying: %s", self.partition, e)

    async def _stored_snapshot(self, store: ObjectStore) -> int:
        """The log position the stored snapshot covers, as this new leader may trust it:
        0 (none, so a new one is taken at the next check) when its description does not
        read, or when it claims entries past this leader's own, which no leader could
        have snapshotted. Trusting such a claim would trim the log below entries no
        snapshot holds, and no snapshot would ever be taken again to replace it."""
        applied = position.get(self.kv)
        try:
            covered = await snapshot.position_of(store, self.partition)
        except Exception as e:
            log.error(
                "partition %d: the stored snapshot's position does not read: %s", self.partition, e
            )
            return 0
        if covered > applied:
            log.error(
                "partition %d: the stored snapshot claims log entry %d, past this leader's "
                "%d: no leader took it; a new snapshot replaces it",
                self.partition,
                covered,
                applied,
            )
            return 0
        return covered

    def _followers(self) -> list[int]:
        """How far each other live node applied this partition's log."""
        alive = set(self.node.alive())
        out = []
        for name, beat in self.node.beats.items():
            applied = beat.get("applied", [])
            if name != self.node.name and name in alive and self.partition < len(applied):
                out.append(int(applied[self.partition]))
        return out

    async def _hold(self, holder: Holder, broker: Broker) -> None:
        """Renews the lease until another node holds it or an append is refused, then
        steps down.

        A renewal that fails for want of an answer (a NATS server restarting, the lease
        bucket electing a new stream leader, which can outlast the TTL) does not end the
        lead: appends stay fenced, so should another node take the lease meanwhile, this
        one's next append is refused and it steps down then. A lease that expired and
        that nobody took is taken again.
        """
        lost = asyncio.ensure_future(broker.committer.lost_event.wait())
        failing = False
        try:
            while not lost.done():
                await asyncio.wait([lost], timeout=RENEW_S)
                if lost.done():
                    break
                try:
                    revision = await asyncio.wait_for(
                        self.node.leases.renew(self.partition, holder, self._revision), RENEW_S * 2
                    )
                    if revision is None:
                        revision = await asyncio.wait_for(
                            self.node.leases.adopt(self.partition, holder), RENEW_S * 2
                        )
                    if revision is None:
                        revision = await asyncio.wait_for(
                            self.node.leases.take(self.partition, holder), RENEW_S * 2
                        )
                        if revision is not None:
                            log.warning(
                                "partition %d: the lease had expired; taken again", self.partition
                            )
                except Exception as e:
                    if not failing:
                        log.warning(
                            "partition %d: cannot renew the lease, leading on: %s",
                            self.partition,
                            logs.reason(e),
                        )
                    failing = True
                    continue
                if revision is None:
                    log.warning("partition %d: the lease was taken over", self.partition)
                    break
                if failing:
                    log.info("partition %d: the lease is renewed again", self.partition)
                self._revision, failing = revision, False
        finally:
            lost.cancel()
        self._holding = None
        self.busy = True
        try:
            await self._step_down(release=False)
        finally:
            self.busy = False

    async def release(self) -> None:
        """Steps down on purpose (shutdown, rebalancing): a follower takes over now,
        once the attempts running here ended (up to `DRAIN_S`, the lease still renewed
        meanwhile)."""
        self.busy = True
        broker = self.broker
        if broker is not None:
            left = await broker.driver.invoker.quiesce(DRAIN_S)
            if self.broker is not broker:
                return  # the lease was lost meanwhile: that step-down owns `busy` now
            if left:
                log.info("partition %d: handing over; %d attempts run", self.partition, left)
        if self._holding is not None:
            self._holding.cancel()
            self._holding = None
        try:
            await self._step_down(release=True)
        finally:
            self.busy = False

    async def _step_down(self, release: bool) -> None:
        if self._snapshotting is not None:
            self._snapshotting.cancel()
            self._snapshotting = None
        broker, self.broker = self.broker, None
        self.node.unserve(self.partition)
        if self._log is not None:
            self._log.close()
        self._log = None
        if broker is not None:
            # Callers waiting here hear at once that the partition moved, rather than
            # when their deadline passes.
            broker.driver.abandon_waiters()
            try:
                await asyncio.wait_for(broker.stop(grace=0.5), _STOP_S)
            except Exception as e:
                log.critical("partition %d: stopping its broker failed: %s", self.partition, e)
                raise
            # The broker closed the store: the tail takes it over again.
            self.kv = open_kv(self.path, self.node.settings.accept_data_loss)
        if release:
            try:
                await self.node.leases.release(self.partition, self._revision)
            except Exception as e:
                log.warning("partition %d: releasing the lease failed: %s", self.partition, e)
        if self._following is None:
            self.follow()
        log.info("partition %d: following (applied %d)", self.partition, self.tail.applied)

    async def close(self) -> None:
        """Stops leading (releasing the lease) or following, and closes the store."""
        if self.leading:
            await self.release()
        await self._stop_following()
        self.kv.close()


def trim_floor(covered: int, followers: list[int], trimmed: int) -> int | None:
    """The log entry to trim through, or None when nothing more can go.

    Entries a snapshot covers (`covered`) can go once every live follower applied them
    (`followers`): a follower still short of the trim would have to restore the snapshot
    instead of reading on. `trimmed` is how far this leader already trimmed.
    """
    floor = min([covered, *followers])
    return floor if floor > trimmed else None
