"""Key encoding shared by the tables: a table prefix, then length-prefixed parts."""

from __future__ import annotations

import struct

# One two-byte prefix per table; a prefix is never reused for another table.
INVOCATIONS = b"iv"
JOURNAL = b"jr"
STATE = b"st"
INBOX = b"ib"
TIMERS = b"tm"
IDEMPOTENCY = b"ik"
DEPLOYMENTS = b"dp"
EXPIRY = b"ex"
# Cluster mode: the last log entry this store holds (broker.replication).
LOG_POSITION = b"lp"


# The longest part a key can hold (its length is stored in two bytes): the limit on
# object and workflow keys, and on the names stored in keys (promises).
MAX_PART_BYTES = 0xFFFF


class KeyTooLong(ValueError):
    """A key part over `MAX_PART_BYTES`: the request is at fault, never storage."""


def check_part(raw: bytes, what: str = "a key or name") -> None:
    """Raises `KeyTooLong`, naming `what`, for `raw` over `MAX_PART_BYTES`."""
    if len(raw) > MAX_PART_BYTES:
        raise KeyTooLong(f"{what} of {len(raw)} bytes is over the {MAX_PART_BYTES}-byte limit")


def part(value: str | bytes) -> bytes:
    """A length-prefixed part: sorts by length first, never ambiguous."""
    raw = value.encode() if isinstance(value, str) else value
    check_part(raw)
    return struct.pack(">H", len(raw)) + raw


def state_object(key: bytes) -> bytes | None:
    """The prefix naming one virtual object's state (`STATE`, its service, its key)
    that `key` starts with, or None for a key of another table (`broker.storage.state`
    writes each value under this prefix plus the value's name)."""
    if not key.startswith(STATE):
        return None
    try:
        _, offset = read_part(key, len(STATE))
        _, offset = read_part(key, offset)
    except struct.error:
        return None
    return key[:offset] if offset <= len(key) else None


def u32(value: int) -> bytes:
    """Big-endian unsigned 32-bit: numeric order is byte order."""
    return struct.pack(">I", value)


def u64(value: int) -> bytes:
    """Big-endian unsigned 64-bit: numeric order is byte order."""
    return struct.pack(">Q", value)


def read_part(key: bytes, offset: int) -> tuple[bytes, int]:
    """Decodes the part at `offset`; returns it and the offset after it."""
    (length,) = struct.unpack_from(">H", key, offset)
    start = offset + 2
    return key[start : start + length], start + length


def read_u32(key: bytes, offset: int) -> int:
    """Decodes a big-endian u32 at `offset`."""
    return int(struct.unpack_from(">I", key, offset)[0])


def read_u64(key: bytes, offset: int) -> int:
    """Decodes a big-endian u64 at `offset`."""
    return int(struct.unpack_from(">Q", key, offset)[0])


PROMISES = b"pr"
# Removed deployments, by canonical URI: a re-registration there takes the old id back.
RETIRED_DEPLOYMENTS = b"rd"
# Run-time concurrency and rate limits, by (service, method); method "" is the service.
LIMITS = b"lm"
# Invocations waiting for a limit, by arrival sequence number.
LIMIT_QUEUE = b"lq"
# Durable schedules, by name.
SCHEDULES = b"sc"
# Cross-partition messages not yet applied by their destination, by (destination, seq).
OUTBOX = b"ob"
# The last sequence number used towards each destination partition.
OUTBOX_SEQ = b"os"
# The last sequence number applied from each source partition (deduplication).
APPLIED = b"ap"
# Invocations of other partitions attached to one here, by (target, waiter, index).
REMOTE_ATTACHERS = b"ra"
