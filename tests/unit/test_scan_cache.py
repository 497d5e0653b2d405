"""Objects' state read from memory: the cache on its own, and RocksKV serving state scans
from it while every write keeps it equal to the store."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from broker.storage import Batch, RocksKV, StoreUnavailable, keys, state
from broker.storage.scan_cache import ScanCache

SERVICE = "counter.Counter"


def group(key: str) -> bytes:
    return keys.STATE + keys.part(SERVICE) + keys.part(key)


def test_state_object_names_the_object_of_a_state_key_only() -> None:
    prefix = group("k1")
    assert keys.state_object(prefix + b"value") == prefix
    assert keys.state_object(prefix) == prefix  # a value named ""
    assert keys.state_object(keys.INVOCATIONS + b"inv_1") is None
    assert keys.state_object(keys.STATE) is None  # the whole table, not one object
    assert keys.state_object(keys.STATE + keys.part(SERVICE)) is None
    assert keys.state_object(prefix[:-1]) is None  # the key part cut short


def test_a_kept_group_follows_the_writes_applied_to_it() -> None:
    cache = ScanCache(keys.STATE, keys.state_object)
    prefix, other = group("k1"), group("k2")
    cache.put(prefix, [(prefix + b"a", b"1"), (prefix + b"b", b"2")])
    assert cache.is_group(prefix) and not cache.is_group(keys.STATE)
    cache.apply(
        [
            (prefix + b"a", None),
            (prefix + b"c", b"3"),
            (prefix + b"b", b"22"),
            (other + b"x", b"not kept"),
            (keys.INVOCATIONS + b"inv_1", b"another table"),
        ]
    )
    assert list(cache.get(prefix) or ()) == [(prefix + b"b", b"22"), (prefix + b"c", b"3")]
    assert cache.get(other) is None  # never scanned whole: not known
    assert cache.size == len(prefix) + sum(len(k) + len(v) for k, v in cache.get(prefix) or ())


def test_forget_and_clear_drop_groups() -> None:
    cache = ScanCache(keys.STATE, keys.state_object)
    one, two = group("k1"), group("k2")
    cache.put(one, [(one + b"a", b"1")])
    cache.put(two, [(two + b"a", b"1")])
    cache.forget([(one + b"a", b"9")])
    assert cache.get(one) is None and cache.get(two) is not None
    cache.clear()
    assert cache.get(two) is None and cache.size == 0


def test_groups_past_the_size_limits_are_not_kept() -> None:
    cache = ScanCache(keys.STATE, keys.state_object, budget=300, max_group=100)
    big = group("big")
    cache.put(big, [(big + b"a", b"x" * 200)])
    assert cache.get(big) is None
    grows = group("grows")
    cache.put(grows, [(grows + b"a", b"x")])
    cache.apply([(grows + b"b", b"x" * 200)])  # grew past the limit: dropped
    assert cache.get(grows) is None and cache.size == 0


def test_the_least_recently_read_group_goes_first() -> None:
    prefixes = [group(f"k{i}") for i in range(3)]
    size = len(prefixes[0]) + len(prefixes[0] + b"a") + 40
    cache = ScanCache(keys.STATE, keys.state_object, budget=2 * size)
    cache.put(prefixes[0], [(prefixes[0] + b"a", b"x" * 40)])
    cache.put(prefixes[1], [(prefixes[1] + b"a", b"x" * 40)])
    assert cache.get(prefixes[0]) is not None  # read: now the most recent
    cache.put(prefixes[2], [(prefixes[2] + b"a", b"x" * 40)])
    assert cache.get(prefixes[1]) is None
    assert cache.get(prefixes[0]) is not None and cache.get(prefixes[2]) is not None
    assert cache.size == 2 * size


def test_rocks_state_reads_match_the_store_through_every_kind_of_write(tmp_path: Path) -> None:
    # Random sets, clears and whole-object clears over a few objects, each followed by
    # a read through the cache; the reads are compared with a fresh store's (no cache).
    kv = RocksKV(str(tmp_path / "db"))
    expected: dict[str, dict[str, bytes]] = {f"k{i}": {} for i in range(4)}
    rng = random.Random(7)
    for step in range(400):
        key = rng.choice(sorted(expected))
        batch = Batch()
        roll = rng.random()
        if roll < 0.6:
            name, value = rng.choice("abcde"), f"{step}".encode()
            state.put(batch, SERVICE, key, name, value)
            expected[key][name] = value
        elif roll < 0.9 and expected[key]:
            name = rng.choice(sorted(expected[key]))
            state.delete(batch, SERVICE, key, name)
            del expected[key][name]
        else:
            for name in expected[key]:
                state.delete(batch, SERVICE, key, name)
            expected[key].clear()
        batch.put(keys.INVOCATIONS + b"inv_%d" % step, b"record")  # other tables too
        kv.write(batch.puts)
        assert state.load(kv, SERVICE, key) == expected[key]
    kv.close()
    reopened = RocksKV(str(tmp_path / "db"))
    try:
        for key, values in expected.items():
            assert state.load(reopened, SERVICE, key) == values
    finally:
        reopened.close()


def test_rocks_a_failed_write_leaves_no_cached_state_behind(tmp_path: Path) -> None:
    kv = RocksKV(str(tmp_path / "db"))
    batch = Batch()
    state.put(batch, SERVICE, "k1", "value", b"1")
    kv.write(batch.puts)
    assert state.load(kv, SERVICE, "k1") == {"value": b"1"}  # kept from here on
    kv._db = None  # the store as a failed reopen leaves it: every write refused
    batch = Batch()
    state.put(batch, SERVICE, "k1", "value", b"2")
    with pytest.raises(StoreUnavailable):
        kv.write(batch.puts)
    with pytest.raises(StoreUnavailable):  # read from the store again, not memory
        state.load(kv, SERVICE, "k1")
    kv.recover()
    try:
        assert state.load(kv, SERVICE, "k1") == {"value": b"1"}
    finally:
        kv.close()
