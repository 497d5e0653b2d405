"""The log entry: the puts and deletes of one group commit, in order.

Each write is `flag (1 byte) | key length (4) | key | [value length (4) | value]`, flag 1
for a put and 0 for a delete. Plain and length-prefixed: applying an entry must never
depend on anything but its bytes.
"""

from __future__ import annotations

import struct

Write = tuple[bytes, bytes | None]

_LENGTH = struct.Struct(">I")


class CorruptEntry(ValueError):
    """An entry that does not decode: the log holds something we never wrote."""


def encoded_size(writes: list[Write]) -> int:
    """How many bytes `encode(writes)` takes."""
    return sum(5 + len(k) + (0 if v is None else 4 + len(v)) for k, v in writes)


def encode(writes: list[Write]) -> bytes:
    """The entry holding `writes`."""
    out = bytearray()
    for key, value in writes:
        out += b"\x00" if value is None else b"\x01"
        out += _LENGTH.pack(len(key))
        out += key
        if value is not None:
            out += _LENGTH.pack(len(value))
            out += value
    return bytes(out)


def decode(entry: bytes) -> list[Write]:
    """The writes in `entry`.

    Raises:
        CorruptEntry: the bytes are not an entry.
    """
    writes: list[Write] = []
    view = memoryview(entry)
    pos, end = 0, len(entry)
    try:
        while pos < end:
            flag = entry[pos]
            (length,) = _LENGTH.unpack_from(entry, pos + 1)
            pos += 5
            key = bytes(view[pos : pos + length])
            if len(key) != length:
                raise CorruptEntry(f"a key runs past the end of the entry at byte {pos}")
            pos += length
            if flag == 0:
                writes.append((key, None))
                continue
            if flag != 1:
                raise CorruptEntry(f"unknown write kind {flag} at byte {pos - length - 5}")
            (length,) = _LENGTH.unpack_from(entry, pos)
            pos += 4
            value = bytes(view[pos : pos + length])
            if len(value) != length:
                raise CorruptEntry(f"a value runs past the end of the entry at byte {pos}")
            pos += length
            writes.append((key, value))
    except struct.error as e:
        raise CorruptEntry(f"the entry is cut short: {e}") from None
    return writes


def chunks(groups: list[list[Write]], limit: int) -> list[list[Write]]:
    """Packs the batches of a group into entries of at most `limit` bytes.

    A batch is never cut between entries (it must apply atomically); one larger than
    `limit` becomes an entry of its own, which the log publishes in parts that followers
    apply together (`PartitionLog.append`).
    """
    out: list[list[Write]] = []
    current: list[Write] = []
    size = 0
    for batch in groups:
        grown = encoded_size(batch)
        if current and size + grown > limit:
            out.append(current)
            current, size = [], 0
        current.extend(batch)
        size += grown
    if current:
        out.append(current)
    return out
