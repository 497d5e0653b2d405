"""Whole-group scans kept in memory: one virtual object's state, read at every start.

An exclusive handler's attempt starts with every state value of its object, read by a
RocksDB scan. The scan is dearer than its result suggests: until the memtable is
flushed, each overwrite of a value (a counter written at every call) leaves a version
that the iterator steps over. The cache keeps the pairs of each group once scanned
whole, and applies every later write to it as the store applies it, so that the next
attempt on the same object reads memory: a kept group always equals what the store
holds, whoever wrote (the committer, a follower applying the log).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

Pair = tuple[bytes, bytes]
Write = tuple[bytes, bytes | None]

# Memory the kept groups may take (keys and values), and the largest group kept: a big
# object's state is read from the store every time rather than evicting the rest.
BUDGET_BYTES = 32 * 1024 * 1024
MAX_GROUP_BYTES = 1024 * 1024


class _Group:
    __slots__ = ("pairs", "size")

    def __init__(self, pairs: dict[bytes, bytes], size: int) -> None:
        self.pairs = pairs
        self.size = size


class ScanCache:
    """The pairs of recently scanned groups, least recently used evicted first.

    Args:
        table: What every grouped key starts with: other keys are passed over cheaply.
        group_of: The group a key belongs to (the prefix a whole-group scan uses), or
            None for keys outside every group.
        budget: The most bytes of keys and values kept.
        max_group: A group that grows larger than this is no longer kept.
    """

    def __init__(
        self,
        table: bytes,
        group_of: Callable[[bytes], bytes | None],
        budget: int = BUDGET_BYTES,
        max_group: int = MAX_GROUP_BYTES,
    ) -> None:
        self._table = table
        self._group_of = group_of
        self._budget = budget
        self._max_group = max_group
        self._groups: OrderedDict[bytes, _Group] = OrderedDict()
        self.size = 0

    def is_group(self, prefix: bytes) -> bool:
        """Whether a scan of `prefix` reads one whole group (and may be kept)."""
        return self._group_of(prefix) == prefix

    def get(self, prefix: bytes) -> Iterator[Pair] | None:
        """The group's pairs in key order, or None when the group is not kept."""
        group = self._groups.get(prefix)
        if group is None:
            return None
        self._groups.move_to_end(prefix)
        return iter(sorted(group.pairs.items()))

    def put(self, prefix: bytes, pairs: list[Pair]) -> None:
        """Keeps a group's pairs, as a whole-group scan just read them."""
        self.drop(prefix)
        group = _Group(dict(pairs), len(prefix) + sum(len(k) + len(v) for k, v in pairs))
        if group.size > self._max_group:
            return
        self._groups[prefix] = group
        self.size += group.size
        self._evict()

    def drop(self, prefix: bytes) -> None:
        """Forgets a group."""
        group = self._groups.pop(prefix, None)
        if group is not None:
            self.size -= group.size

    def apply(self, writes: list[Write]) -> None:
        """Applies a write the store just made to the kept groups it touches."""
        for prefix, group, key, value in self._kept(writes):
            old = group.pairs.pop(key, None)
            change = 0 if old is None else -(len(key) + len(old))
            if value is not None:
                group.pairs[key] = value
                change += len(key) + len(value)
            group.size += change
            self.size += change
            if group.size > self._max_group:
                self.drop(prefix)
        self._evict()

    def forget(self, writes: list[Write]) -> None:
        """Forgets every group `writes` touch (a write that failed may have landed in
        part)."""
        for prefix, _, _, _ in self._kept(writes):
            self.drop(prefix)

    def _kept(self, writes: list[Write]) -> Iterator[tuple[bytes, _Group, bytes, bytes | None]]:
        """Each write to a kept group, with the group (looked up as each comes)."""
        if not self._groups:
            return
        table = self._table
        for key, value in writes:
            if not key.startswith(table):
                continue
            prefix = self._group_of(key)
            if prefix is None:
                continue
            group = self._groups.get(prefix)
            if group is not None:
                yield prefix, group, key, value

    def clear(self) -> None:
        """Forgets everything (the store was reopened or closed)."""
        self._groups.clear()
        self.size = 0

    def _evict(self) -> None:
        while self.size > self._budget and self._groups:
            _, group = self._groups.popitem(last=False)
            self.size -= group.size
