"""Key-value backends: RocksDB for the broker, memory for tests and embedding."""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Iterator
from typing import Protocol

import rocksdict

from . import highwater, integrity, keys
from .scan_cache import ScanCache

log = logging.getLogger("broker.storage")


class StorageError(Exception):
    """The store cannot be opened or written; the message says what to do."""


class KV(Protocol):
    """What the tables need from storage. One writer: the broker's committer."""

    def get(self, key: bytes) -> bytes | None:
        """The value at `key`, or None."""

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Pairs whose key starts with `prefix`, in key order, from `start` if given."""

    def write(self, puts: list[tuple[bytes, bytes | None]]) -> None:
        """Applies puts (value) and deletes (None) atomically, without syncing."""

    def sync(self) -> None:
        """Makes every write so far durable (fsync). Called off the event loop."""

    def recover(self) -> None:
        """Gets the store writable again after a failed write (e.g. reopens it)."""

    def close(self) -> None:
        """Releases the store."""


class MemoryKV:
    """A sorted in-memory store with the same behaviour, minus durability."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        i = bisect.bisect_left(self._keys, max(prefix, start or b""))
        # Snapshot the keys: callers may write while they iterate.
        for key in self._keys[i:]:
            if not key.startswith(prefix):
                return
            value = self._data.get(key)
            if value is not None:
                yield key, value

    def write(self, puts: list[tuple[bytes, bytes | None]]) -> None:
        for key, value in puts:
            if value is None:
                if self._data.pop(key, None) is not None:
                    self._keys.pop(bisect.bisect_left(self._keys, key))
            else:
                if key not in self._data:
                    bisect.insort(self._keys, key)
                self._data[key] = value

    def sync(self) -> None:
        pass

    def recover(self) -> None:
        pass

    def close(self) -> None:
        pass


class StoreUnavailable(StorageError):
    """The store is closed: a reopen failed (e.g. on a full disk); `recover` tries again."""


class AppendInDoubt(StoreUnavailable):
    """Cluster mode: this node stopped leading the partition while the write was being
    appended to its log. The append may have been stored, and then the next leader
    applies it: the write is neither durable here nor certainly lost."""


class RocksKV:
    """RocksDB through rocksdict, in raw (bytes) mode.

    Writes go to the WAL unsynced on the event loop; `sync` flushes and fsyncs the
    WAL. rocksdict holds the GIL through a synced write, so syncing separately (in a
    thread) is what keeps the loop responsive and lets many steps share one fsync.

    Opening checks the data dir first (`integrity`): damaged or missing journal data
    refuses to open unless `accept_data_loss`, which opens what is left and reports the
    loss. Each fsync advances the high-water mark (`highwater`) that later opens check.

    Scans of one virtual object's whole state are served from memory once read, and
    kept equal to the store by applying each write to them too (`scan_cache`).
    """

    def __init__(self, path: str, accept_data_loss: bool = False) -> None:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create the data dir {path}: {e.strerror}") from e
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        # Small memtables and a bounded WAL: purged invocations leave the disk within
        # minutes (flush, then compaction drops the deleted keys) instead of piling up
        # in a 64 MB memtable's log first.
        options.set_write_buffer_size(8 * 1024 * 1024)
        options.set_max_total_wal_size(32 * 1024 * 1024)
        options.set_keep_log_file_num(3)
        options.set_wal_recovery_mode(integrity.recovery_mode(accept_data_loss))
        self._path, self._options = path, options
        try:
            checked = integrity.check(path, options, accept_data_loss)
        except integrity.IntegrityError as e:
            raise StorageError(str(e)) from None
        db = self._open()
        self._db: rocksdict.Rdict | None = db
        sequence = int(db.latest_sequence_number())
        integrity.report(checked, sequence, accept_data_loss)
        mark = checked.mark
        if accept_data_loss:
            # What is left is the journal now: later starts measure against it.
            try:
                highwater.write(path, sequence)
            except OSError as e:
                db.close()
                raise StorageError(f"cannot write {highwater.FILE} in {path}: {e}") from e
            mark = sequence
        self._mark = highwater.HighWater(path, mark)
        self._unsynced = rocksdict.WriteOptions()
        self._unsynced.sync = False
        self._scans = ScanCache(keys.STATE, keys.state_object)

    def _open(self) -> rocksdict.Rdict:
        try:
            return rocksdict.Rdict(self._path, self._options)
        except Exception as e:
            text = str(e)
            if "lock" in text.lower():
                raise StorageError(
                    f"the data dir {self._path} is in use by another broker (its RocksDB lock "
                    "is held); stop that broker or pass another --data-dir"
                ) from None
            raise StorageError(f"cannot open the data dir {self._path}: {text}") from None

    def _handle(self) -> rocksdict.Rdict:
        db = self._db
        if db is None:
            raise StoreUnavailable(
                f"the journal store in {self._path} is closed after a failed reopen; "
                "the broker keeps trying to reopen it"
            )
        return db

    def get(self, key: bytes) -> bytes | None:
        try:
            value = self._handle().get(key)
        except StoreUnavailable:
            raise
        except Exception as e:
            if "Corruption" not in str(e):
                raise
            raise StorageError(
                f"the data dir {self._path} is damaged ({e}); restore it from a backup"
            ) from None
        return None if value is None else bytes(value)

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        if start is not None or not self._scans.is_group(prefix):
            return self._scan(prefix, start)
        kept = self._scans.get(prefix)
        if kept is not None:
            return kept
        pairs = list(self._scan(prefix, None))
        self._scans.put(prefix, pairs)
        return iter(pairs)

    def _scan(self, prefix: bytes, start: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        # One iterator, bounded above by the prefix's end: RocksDB stops at the bound
        # instead of reading the key after it, and skips files wholly outside it (a
        # virtual object's state is read this way at every attempt's start).
        options = rocksdict.ReadOptions()
        bound = _after_prefix(prefix)
        if bound is not None:
            options.set_iterate_upper_bound(bound)
        it = self._handle().iter(options)
        it.seek(max(prefix, start or b""))
        while it.valid():
            key = it.key()
            # raw_mode: keys and values are always bytes.
            assert isinstance(key, bytes)
            if not key.startswith(prefix):
                return  # past the prefix (only without a bound): everything was read
            yield key, it.value()
            it.next()
        # An iterator also stops, without a word, at a damaged block: a scan that
        # silently stops short (start-up recovery, a purge) would lose invocations.
        try:
            it.status()
        except Exception as e:
            raise StorageError(
                f"the data dir {self._path} is damaged ({e}); restore it from a backup"
            ) from None

    def write(self, puts: list[tuple[bytes, bytes | None]]) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in puts:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        try:
            self._handle().write(batch, self._unsynced)
        except BaseException:
            self._scans.forget(puts)  # it may have landed in part
            raise
        self._scans.apply(puts)

    def sync(self) -> None:
        db = self._handle()
        # Read before the fsync: every write up to here is in the log the fsync covers.
        sequence = int(db.latest_sequence_number())
        db.flush_wal(True)
        self._mark.synced(sequence)

    def checkpoint(self, path: str) -> None:
        """Writes a consistent copy of the store as it is now into `path` (a new
        directory on the same file system: files are hard-linked where they can be)."""
        rocksdict.Checkpoint(self._handle()).create_checkpoint(path)

    def recover(self) -> None:
        # After a failed write RocksDB refuses all writes until it is reopened; reopening
        # replays the WAL, so what was durable stays. A reopen that fails (the disk is
        # still full) leaves no handle: reads fail with StoreUnavailable and the next
        # call tries again.
        self._scans.clear()
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except Exception:
                pass
        self._db = self._open()

    def close(self) -> None:
        self._scans.clear()
        db, self._db = self._db, None
        if db is None:
            self._mark.close(None)
            return
        sequence: int | None = None
        try:
            db.flush_wal(True)
            sequence = int(db.latest_sequence_number())
        except Exception as e:
            # E.g. a full disk: what was acknowledged was fsynced already.
            log.error("cannot fsync the journal on close (unacknowledged writes are lost): %s", e)
        finally:
            try:
                db.close()
            except Exception as e:
                # Closing flushes the memtable to a table file, which a full disk
                # refuses: the WAL holds those writes, and the next open replays it.
                log.error("closing the journal store: %s (its log keeps the writes)", e)
            self._mark.close(sequence)


def _after_prefix(prefix: bytes) -> bytes | None:
    """The least key above every key that starts with `prefix` (None: there is none)."""
    end = prefix.rstrip(b"\xff")
    return end[:-1] + bytes([end[-1] + 1]) if end else None


def open_kv(data_dir: str | None, accept_data_loss: bool = False) -> KV:
    """RocksDB in `data_dir` (see `RocksKV` for `accept_data_loss`), or memory when None."""
    return MemoryKV() if data_dir is None else RocksKV(data_dir, accept_data_loss)
