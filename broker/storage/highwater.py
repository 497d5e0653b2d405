"""The high-water mark: the newest RocksDB sequence number known to be durable, kept in
a small file beside the database.

A write-ahead log that is truncated or deleted replays "successfully": RocksDB opens
what is left and cannot tell that acknowledged writes are gone. The mark can: it lives
outside the log, so a database that opens at a lower sequence number than the mark has
lost writes the broker once fsynced.

The mark only ever names writes already fsynced, and it may lag behind them (it is
rewritten at most every `INTERVAL` seconds, on a thread of its own, so the commit path
never waits for it): a crash can leave it behind the log, never ahead, so an ordinary
crash cannot trip it.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("broker.storage")

FILE = "BROKER-HIGH-WATER"
INTERVAL = 0.5


class MarkError(Exception):
    """The mark file exists but does not hold a sequence number."""


def read(directory: str) -> int | None:
    """The mark in `directory`, or None if there is none.

    Raises:
        MarkError: The file is there but unreadable.
    """
    path = os.path.join(directory, FILE)
    try:
        with open(path, "rb") as f:
            text = f.read(64)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise MarkError(f"cannot read {path}: {e.strerror}") from e
    try:
        return int(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise MarkError(f"{path} does not hold a sequence number: {text[:32]!r}") from None


def write(directory: str, sequence: int) -> None:
    """Replaces the mark atomically (a crash leaves the old one or the new one).

    Raises:
        OSError: It could not be written (the old mark stays, which is safe).
    """
    path = os.path.join(directory, FILE)
    temporary = path + ".tmp"
    with open(temporary, "wb") as f:
        f.write(b"%d\n" % sequence)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


class HighWater:
    """Rewrites the mark in the background as fsynced writes advance.

    Args:
        directory: The data dir.
        written: The mark as it stands in the file (None: no file yet).
    """

    def __init__(self, directory: str, written: int | None) -> None:
        self._directory = directory
        self._synced = -1 if written is None else written
        self._written = self._synced
        self._lock = threading.Lock()  # one writer of the file at a time
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="high-water", daemon=True)
        self._thread.start()

    def synced(self, sequence: int) -> None:
        """Writes up to `sequence` are fsynced (called from the sync thread)."""
        if sequence > self._synced:
            self._synced = sequence

    def close(self, sequence: int | None) -> None:
        """Stops the thread and writes the final mark (`sequence`, fsynced by the caller,
        or None when the last fsync failed)."""
        if sequence is not None:
            self.synced(sequence)
        self._stop.set()
        self._thread.join()
        self._flush()

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            sequence = self._synced
            if sequence == self._written:
                return
            try:
                write(self._directory, sequence)
            except OSError as e:
                # A full disk: the old mark stays, lower than the truth, which is safe.
                if not self._failing:
                    log.warning("cannot update the high-water mark (retrying): %s", e)
                self._failing = True
                return
            if self._failing:
                log.info("the high-water mark is written again")
            self._failing = False
            self._written = sequence
