"""Opening a RocksDB data dir: torn tails, damaged logs, the high-water mark.

A copy of the data dir taken while the store is open (after an fsync) is what a crash
leaves behind; the tests damage such copies and open them.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from broker.storage import RocksKV, StorageError, highwater, wal


def _crash_image(tmp_path: Path, batches: int = 50) -> Path:
    """A data dir as a crash leaves it: `batches` fsynced one-key batches."""
    live = tmp_path / "live"
    store = RocksKV(str(live))
    try:
        for i in range(batches):
            store.write([(b"k%03d" % i, b"v" * 100)])
        store.sync()
        image = tmp_path / "image"
        shutil.copytree(live, image, ignore=shutil.ignore_patterns("LOCK"))
    finally:
        store.close()
    return image


def _log(directory: Path) -> Path:
    return max(directory.glob("*.log"), key=lambda p: p.stat().st_size)


def _keys(directory: Path) -> int:
    store = RocksKV(str(directory))
    try:
        return sum(1 for _ in store.scan(b"k"))
    finally:
        store.close()


def test_the_walker_finds_every_batch_and_its_sequence_numbers(tmp_path: Path) -> None:
    image = _crash_image(tmp_path)
    (found,) = wal.scan(str(image))
    assert [last for _, last in found.batches] == list(range(1, 51))
    assert found.tail_bytes == 0 and found.unreadable_at is None
    assert found.bytes_after(50) == 0
    assert found.bytes_after(49) == found.size - found.batches[-1][0]


def test_a_torn_last_record_is_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = _crash_image(tmp_path)
    log = _log(image)
    os.truncate(log, log.stat().st_size - 10)
    with caplog.at_level(logging.WARNING, logger="broker.storage"):
        assert _keys(image) == 49
    assert "incomplete last record" in caplog.text and log.name in caplog.text


def test_a_clean_crash_image_opens_without_a_word(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = _crash_image(tmp_path)
    with caplog.at_level(logging.WARNING, logger="broker.storage"):
        assert _keys(image) == 50
    assert caplog.text == ""


def test_damage_in_the_middle_of_the_log_refuses_and_changes_nothing(tmp_path: Path) -> None:
    image = _crash_image(tmp_path)
    log = _log(image)
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0xFF
    log.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in image.iterdir()}
    with pytest.raises(StorageError, match=rf"damaged .*/{log.name} at byte \d+"):
        RocksKV(str(image))
    assert {p.name: p.read_bytes() for p in image.iterdir()} == before
    assert 0 < _keys_accepting(image) < 50


def _keys_accepting(directory: Path) -> int:
    store = RocksKV(str(directory), accept_data_loss=True)
    try:
        return sum(1 for _ in store.scan(b"k"))
    finally:
        store.close()


def test_a_store_behind_its_high_water_mark_refuses(tmp_path: Path) -> None:
    image = _crash_image(tmp_path)
    highwater.write(str(image), 51)  # one fsynced write more than the log holds
    with pytest.raises(StorageError, match="missing acknowledged journal writes"):
        RocksKV(str(image))
    assert _keys_accepting(image) == 50
    assert highwater.read(str(image)) == 50  # what is left is the measure now
    assert _keys(image) == 50


def test_the_mark_follows_fsyncs_and_close(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    store = RocksKV(path)
    store.write([(b"a", b"1"), (b"b", b"2")])
    store.close()
    assert highwater.read(path) == 2


def test_an_unreadable_mark_refuses(tmp_path: Path) -> None:
    image = _crash_image(tmp_path)
    (image / highwater.FILE).write_bytes(b"\xff\xfe")
    with pytest.raises(StorageError, match="does not hold a sequence number"):
        RocksKV(str(image))


def test_zeros_after_the_last_record_are_room_not_a_torn_tail(tmp_path: Path) -> None:
    image = _crash_image(tmp_path)
    log = _log(image)
    with log.open("ab") as f:
        f.write(b"\0" * 5000)  # as a preallocating file system may leave it
    (found,) = wal.scan(str(image))
    assert found.tail_bytes == 0 and len(found.batches) == 50
    assert _keys(image) == 50


def _walfile(name: str, first: int, last: int, tail: int = 0) -> wal.WalFile:
    batches = [(i * 10, seq) for i, seq in enumerate(range(first, last + 1))]
    size = len(batches) * 10 + tail
    return wal.WalFile(name, size, batches, size - tail, None, first)


def test_a_log_cut_short_before_a_newer_one_is_a_hole() -> None:
    # RocksDB's tail tolerance covers every log: an older log cut short replays "fine"
    # and the newer one goes on after the hole (seen with two live logs after a
    # SIGKILL during a memtable switch, the older one truncated to half).
    cut = [_walfile("000100.log", 1, 40, tail=5), _walfile("000102.log", 60, 70)]
    assert "000100.log was cut short" in (wal.hole(cut) or "")
    # An ordinary crash: the newest log is torn, or the next one goes straight on.
    assert wal.hole([_walfile("000100.log", 1, 40), _walfile("000102.log", 41, 50, tail=7)]) is None
    assert wal.hole([_walfile("000100.log", 1, 40, tail=5), _walfile("000102.log", 41, 50)]) is None
    # A leftover obsolete log that ends cleanly is not judged.
    assert wal.hole([_walfile("000090.log", 1, 20), _walfile("000102.log", 41, 50)]) is None
