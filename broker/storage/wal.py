"""Reads the layout of RocksDB's write-ahead logs, without RocksDB.

RocksDB tells whether a log replays, not where it stopped or what it dropped: with
`tolerate_corrupted_tail_records` an incomplete last record vanishes without a word, and
after a refused open nobody knows which file is damaged. Walking the record headers
(never the checksums: RocksDB checks those) answers both: where each write batch starts,
which sequence numbers it holds, and how many bytes at the end of a file form no
complete record. Format: rocksdb/db/log_format.h and db/write_batch.cc.
"""

from __future__ import annotations

import dataclasses
import itertools
import os

_BLOCK = 32 * 1024
_HEADER = 7  # crc32c (4), length (2, little-endian), type (1)
_RECYCLABLE_HEADER = 11  # ... plus the log number (4)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_RECYCLABLE = {5: _FULL, 6: _FIRST, 7: _MIDDLE, 8: _LAST}
# Metadata records (compression type, timestamp sizes, predecessor WAL info): no batch.
_RECYCLABLE_META = {11, 131}
# A write batch starts with its first sequence number (8 bytes) and its count (4).
_BATCH_HEADER = 12


@dataclasses.dataclass
class WalFile:
    """What one log file holds.

    Attributes:
        name: The file name, e.g. `000004.log`.
        size: Its size in bytes.
        batches: (start offset, last sequence number) of each complete write batch.
        complete_bytes: Where the last complete record ends: the rest is a torn tail,
            or records the walk could not follow (see `unreadable_at`).
        unreadable_at: Offset of a record header that makes no sense (a damaged log),
            or None.
        first_sequence: The first sequence number of the first complete batch, or None.
    """

    name: str
    size: int
    batches: list[tuple[int, int]]
    complete_bytes: int
    unreadable_at: int | None = None
    first_sequence: int | None = None

    @property
    def cut_short(self) -> bool:
        """Whether the file ends in something other than a complete record."""
        return self.tail_bytes > 0 or self.unreadable_at is not None

    @property
    def tail_bytes(self) -> int:
        """Bytes after the last complete record."""
        return self.size - self.complete_bytes

    def first_batch_after(self, sequence: int) -> int | None:
        """Offset of the first batch holding a write newer than `sequence`."""
        for offset, last in self.batches:
            if last > sequence:
                return offset
        return None

    def bytes_after(self, sequence: int) -> int:
        """Bytes of this file a replay that stopped at `sequence` leaves out."""
        offset = self.first_batch_after(sequence)
        return self.size - (self.complete_bytes if offset is None else offset)


def read(path: str) -> WalFile:
    """Walks the records of the log at `path`."""
    with open(path, "rb") as f:
        data = f.read()
    size = len(data)
    batches: list[tuple[int, int]] = []
    complete = 0
    fragment: int | None = None  # start of the batch being reassembled
    head = b""  # its first bytes, enough for the batch header
    pos = 0
    unreadable: int | None = None
    first_sequence: int | None = None
    while pos < size:
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # the writer pads the end of a block with zeros
            pos += left
            if fragment is None:
                complete = min(pos, size)
            continue
        if size - pos < _HEADER:
            break
        length = data[pos + 4] | data[pos + 5] << 8
        kind = data[pos + 6]
        header = _RECYCLABLE_HEADER if kind in _RECYCLABLE or kind in _RECYCLABLE_META else _HEADER
        end = pos + header + length
        if kind == 0 and length == 0:  # preallocated, never written
            if fragment is None and not data[pos:].strip(b"\0"):
                complete = size  # zeros to the end: room, not a torn record
            break
        if header + length > left:
            if end > size:
                break  # cut off by the end of the file: a torn tail
            unreadable = pos
            break
        if end > size:
            break
        payload = data[pos + header : end]
        kind = _RECYCLABLE.get(kind, kind)
        if kind in (_FULL, _FIRST):
            fragment, head = pos, payload[:_BATCH_HEADER]
        elif kind in (_MIDDLE, _LAST) and fragment is not None and len(head) < _BATCH_HEADER:
            head += payload[: _BATCH_HEADER - len(head)]
        if kind in (_FULL, _LAST) and fragment is not None:
            if len(head) == _BATCH_HEADER:
                first = int.from_bytes(head[:8], "little")
                count = int.from_bytes(head[8:12], "little")
                if not batches:
                    first_sequence = first
                batches.append((fragment, first + max(count, 1) - 1))
            fragment = None
            complete = end
        elif kind not in (_FIRST, _MIDDLE, _LAST, _FULL):
            if kind & 0x80 == 0 and kind not in (9, 10, 11):
                unreadable = pos  # an unknown record type RocksDB would not skip either
                break
            if fragment is None:
                complete = end
        pos = end
    return WalFile(os.path.basename(path), size, batches, complete, unreadable, first_sequence)


def scan(directory: str) -> list[WalFile]:
    """Every `*.log` file in `directory`, oldest first (their names are numbers)."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".log"))
    except FileNotFoundError:
        return []
    found: list[WalFile] = []
    for name in names:
        try:
            found.append(read(os.path.join(directory, name)))
        except FileNotFoundError:
            continue  # deleted since the listing (a broker that still runs flushed it)
    return found


def hole(wals: list[WalFile]) -> str | None:
    """Says where writes are missing between two logs, or None.

    Sequence numbers run on from one log to the next. A log that ends in a torn or
    unreadable record while the next one starts further on was cut short, and RocksDB
    replays around the hole (`tolerate_corrupted_tail_records` forgives an incomplete
    tail in every log, not only the newest). A log that ends cleanly is not judged: an
    obsolete one may be left over from before a flush.
    """
    with_batches = [w for w in wals if w.batches]
    for earlier, later in itertools.pairwise(with_batches):
        last = earlier.batches[-1][1]
        if earlier.cut_short and later.first_sequence is not None:
            if later.first_sequence > last + 1:
                return (
                    f"the write-ahead log {earlier.name} was cut short: it ends at write "
                    f"{last} but the next log, {later.name}, starts at write "
                    f"{later.first_sequence}; the writes in between are missing"
                )
    return None
