"""Cluster mode: how far into its partition's log this store is.

Written in the same RocksDB write as the entry it counts, so the store and its position
never disagree, whatever a crash cuts.
"""

from __future__ import annotations

from . import keys
from .kv import KV

KEY = keys.LOG_POSITION


def get(kv: KV) -> int:
    """The sequence of the last log entry applied here (0: none)."""
    raw = kv.get(KEY)
    return 0 if raw is None else keys.read_u64(raw, 0)


def put(sequence: int) -> tuple[bytes, bytes]:
    """The write that records `sequence` as applied."""
    return KEY, keys.u64(sequence)
