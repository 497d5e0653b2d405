"""The journal store: tables over a key-value backend, written in group commits.

One module per table; every table's keys begin with its own two-byte prefix (never
reused), then big-endian, length-prefixed parts so that keys sort the way scans need.
"""

from .commit import Batch, Committer
from .kv import KV, AppendInDoubt, MemoryKV, RocksKV, StorageError, StoreUnavailable, open_kv

__all__ = [
    "KV",
    "AppendInDoubt",
    "Batch",
    "Committer",
    "MemoryKV",
    "RocksKV",
    "StorageError",
    "StoreUnavailable",
    "open_kv",
]
