"""Long-lived background work survives a store that fails for a while: the purger, the
timer queue and a store whose reopen failed (a full disk) all carry on once it works."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from broker import timers
from broker.config import Settings
from broker.server import Broker
from broker.storage import RocksKV, StorageError, StoreUnavailable


class Flaky:
    """Fails `failures` times, then succeeds, counting calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self, *args: object) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreUnavailable("the journal store is closed")
        return 1


def test_the_purger_survives_a_failing_store_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = Broker(Settings(data_dir=None))
    broker.purge_interval = 0.001
    purge = Flaky(failures=5)
    broker.partition.purge_expired = purge  # type: ignore[method-assign]

    async def main() -> None:
        task = asyncio.create_task(broker._purge_loop())

        async def rounds() -> None:
            while purge.calls < 8:
                assert not task.done(), "the purger died"
                await asyncio.sleep(0.001)

        await asyncio.wait_for(rounds(), timeout=10)
        task.cancel()

    with caplog.at_level(logging.INFO, logger="broker"):
        asyncio.run(main())
    assert caplog.text.count("purging expired invocations failed") == 1
    assert caplog.text.count("purging expired invocations works again") == 1
    assert "purged 1 expired invocation(s)" in caplog.text


def test_a_timer_that_cannot_fire_stays_and_fires_later(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(timers, "RETRY_S", 0.001)
    fired: list[tuple[int, str, int]] = []
    flaky = Flaky(failures=5)

    def fire(due: int, invocation_id: str, index: int) -> None:
        flaky()
        fired.append((due, invocation_id, index))

    async def main() -> None:
        queue = timers.TimerQueue(fire)
        queue.start()
        queue.add(1, "inv_a", 3)

        async def fired_(count: int) -> None:
            while len(fired) < count:
                await asyncio.sleep(0.001)

        await asyncio.wait_for(fired_(1), timeout=10)
        queue.add(2, "inv_b", -1)  # the queue still runs
        await asyncio.wait_for(fired_(2), timeout=10)
        await queue.stop()

    with caplog.at_level(logging.INFO, logger="broker.timers"):
        asyncio.run(main())
    assert fired == [(1, "inv_a", 3), (2, "inv_b", -1)]
    assert caplog.text.count("firing a due timer failed") == 1
    assert caplog.text.count("due timers fire again") == 1


def test_a_failed_reopen_leaves_no_closed_handle_and_the_next_one_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RocksKV(str(tmp_path / "db"))
    store.write([(b"a", b"1")])
    store.sync()
    real_open = store._open

    def full_disk() -> object:
        raise StorageError("No space left on device")

    monkeypatch.setattr(store, "_open", full_disk)
    with pytest.raises(StorageError):
        store.recover()
    # Reads and writes fail cleanly, saying why, instead of on a closed handle.
    with pytest.raises(StoreUnavailable, match="closed after a failed reopen"):
        store.get(b"a")
    with pytest.raises(StoreUnavailable):
        list(store.scan(b""))
    with pytest.raises(StoreUnavailable):
        store.write([(b"b", b"2")])
    monkeypatch.setattr(store, "_open", real_open)
    store.recover()
    assert store.get(b"a") == b"1"
    store.close()
