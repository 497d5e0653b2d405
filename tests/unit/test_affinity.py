"""When the broker pins its Python threads and when it sets them free (broker/affinity.py),
against a fake OS."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from broker.affinity import REPLACE_S, SETTLE_S, Affinity, QuietPinning

PYTHON_THREADS = (100, 101, 102)  # the loop, gRPC's poller, the sync thread
NATIVE_THREADS = (200, 201)  # gRPC's event engine, RocksDB


class FakeOS(Affinity):
    def __init__(self, allowed: set[int], cpu: int = 1) -> None:
        self._allowed = allowed
        self.cpu: int | None = cpu
        self.masks: dict[int, set[int]] = {t: set(allowed) for t in PYTHON_THREADS + NATIVE_THREADS}

    def allowed(self) -> set[int]:
        return set(self._allowed)

    def current_cpu(self) -> int:
        if self.cpu is None:
            raise OSError("no /proc")
        return self.cpu

    def python_threads(self) -> Iterable[int]:
        return PYTHON_THREADS

    def all_threads(self) -> Iterable[int]:
        return list(self.masks)

    def set(self, thread_id: int, cpus: set[int]) -> None:
        self.masks[thread_id] = set(cpus)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pinning(fake: FakeOS) -> tuple[QuietPinning, Clock]:
    clock = Clock()
    return QuietPinning(fake, clock), clock


def test_a_lone_attempt_pins_the_python_threads_to_the_loops_cpu() -> None:
    fake = FakeOS({0, 1, 2, 3}, cpu=2)
    pinning, _ = _pinning(fake)
    pinning.attempts_in_flight(1)
    assert pinning.pinned_to == 2
    assert all(fake.masks[t] == {2} for t in PYTHON_THREADS)
    assert all(fake.masks[t] == {0, 1, 2, 3} for t in NATIVE_THREADS)


def test_a_second_attempt_frees_every_thread_at_once() -> None:
    fake = FakeOS({0, 1})
    pinning, _ = _pinning(fake)
    pinning.attempts_in_flight(1)
    fake.masks[300] = {1}  # a thread started while pinned inherited the pin
    pinning.attempts_in_flight(2)
    assert pinning.pinned_to is None
    assert all(mask == {0, 1} for mask in fake.masks.values())


def test_pinning_again_waits_for_a_quiet_spell() -> None:
    fake = FakeOS({0, 1})
    pinning, clock = _pinning(fake)
    pinning.attempts_in_flight(1)
    pinning.attempts_in_flight(2)
    clock.now += SETTLE_S / 2
    pinning.attempts_in_flight(1)
    assert pinning.pinned_to is None, "load that comes and goes keeps the threads free"
    clock.now += SETTLE_S
    pinning.attempts_in_flight(1)
    assert pinning.pinned_to == 1
    assert pinning.pins == 2


def test_a_pin_expires_so_the_kernel_can_place_the_threads_again() -> None:
    fake = FakeOS({0, 1}, cpu=0)
    pinning, clock = _pinning(fake)
    pinning.attempts_in_flight(1)
    clock.now += REPLACE_S / 2
    pinning.attempts_in_flight(1)
    assert pinning.pinned_to == 0
    clock.now += REPLACE_S / 2
    pinning.attempts_in_flight(1)
    assert pinning.pinned_to is None
    assert all(mask == {0, 1} for mask in fake.masks.values())
    fake.cpu = 1  # the kernel moved the loop meanwhile
    pinning.attempts_in_flight(1)
    assert pinning.pinned_to == 1
    assert all(fake.masks[t] == {1} for t in PYTHON_THREADS)


def test_busy_attempts_keep_postponing_the_pin() -> None:
    fake = FakeOS({0, 1})
    pinning, clock = _pinning(fake)
    pinning.attempts_in_flight(3)
    for _ in range(5):
        clock.now += SETTLE_S / 2
        pinning.attempts_in_flight(2)
        pinning.attempts_in_flight(1)
    assert pinning.pinned_to is None
    assert pinning.pins == 0


def test_one_allowed_cpu_or_an_unknown_cpu_pins_nothing() -> None:
    single = FakeOS({3}, cpu=3)
    pinning, _ = _pinning(single)
    pinning.attempts_in_flight(1)
    assert pinning.pinned_to is None
    assert all(mask == {3} for mask in single.masks.values())

    blind = FakeOS({0, 1})
    blind.cpu = None
    pinning, _ = _pinning(blind)
    pinning.attempts_in_flight(1)
    assert pinning.pinned_to is None

    elsewhere = FakeOS({0, 1}, cpu=5)  # outside the mask (a stale read): not a pin target
    pinning, _ = _pinning(elsewhere)
    pinning.attempts_in_flight(1)
    assert pinning.pinned_to is None
    assert all(mask == {0, 1} for mask in elsewhere.masks.values())


def test_a_move_the_os_refuses_is_skipped_without_an_error() -> None:
    # The real calls: a CPU that does not exist (a container's CPU set that changed) and
    # a thread that ended; neither may reach the driver carrying out a start.
    real = Affinity()
    before = os.sched_getaffinity(0)
    real.set(threading.get_native_id(), {100_000})
    real.set(2**22 + 12_345, before)
    assert os.sched_getaffinity(0) == before


def test_unpin_restores_the_mask_the_process_started_with() -> None:
    fake = FakeOS({2, 3}, cpu=3)  # started under `taskset -c 2,3`
    pinning, _ = _pinning(fake)
    pinning.attempts_in_flight(1)
    pinning.unpin()
    assert all(mask == {2, 3} for mask in fake.masks.values())
