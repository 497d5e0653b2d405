"""Key-value backends: RocksDB for the broker, memory for tests and embedding."""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from typing import Protocol

import rocksdict


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


class RocksKV:
    """RocksDB through rocksdict, in raw (bytes) mode.

    Writes go to the WAL unsynced on the event loop; `sync` flushes and fsyncs the
    WAL. rocksdict holds the GIL through a synced write, so syncing separately (in a
    thread) is what keeps the loop responsive and lets many steps share one fsync.
    """

    def __init__(self, path: str) -> None:
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
        self._path, self._options = path, options
        try:
            self._db = rocksdict.Rdict(path, options)
        except Exception as e:
            text = str(e)
            if "lock" in text.lower():
                raise StorageError(
                    f"the data dir {path} is in use by another broker (its RocksDB lock is "
                    "held); stop that broker or pass another --data-dir"
                ) from e
            raise StorageError(f"cannot open the data dir {path}: {text}") from e
        self._unsynced = rocksdict.WriteOptions()
        self._unsynced.sync = False

    def get(self, key: bytes) -> bytes | None:
        value = self._db.get(key)
        return None if value is None else bytes(value)

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items(from_key=max(prefix, start or b"")):
            # raw_mode: keys and values are always bytes.
            assert isinstance(key, bytes) and isinstance(value, bytes)
            if not key.startswith(prefix):
                return
            yield key, value

    def write(self, puts: list[tuple[bytes, bytes | None]]) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in puts:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self._db.write(batch, self._unsynced)

    def sync(self) -> None:
        self._db.flush_wal(True)

    def recover(self) -> None:
        # After a failed write RocksDB refuses all writes until it is reopened; reopening
        # replays the WAL, so what was durable stays.
        try:
            self._db.close()
        except Exception:
            pass
        self._db = rocksdict.Rdict(self._path, self._options)

    def close(self) -> None:
        self._db.flush_wal(True)
        self._db.close()


def open_kv(data_dir: str | None) -> KV:
    """RocksDB in `data_dir`, or memory when it is None."""
    return MemoryKV() if data_dir is None else RocksKV(data_dir)
