"""The verdict of `bench.ab`'s paired comparison: differences per round and the sign test."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.ab import Paired, Variant, block_p50_ms, leg_rounds, legs_line, sign_test, summary


def test_differences_are_b_minus_a_round_by_round() -> None:
    paired = Paired(a=[2.0, 2.0, 3.0], b=[1.5, 2.5, 2.0])
    assert paired.diffs == [-0.5, 0.5, -1.0]
    assert paired.b_faster == 2


@pytest.mark.parametrize(
    ("wins", "rounds", "p"),
    [(5, 10, 1.0), (0, 10, 2 / 1024), (10, 10, 2 / 1024), (8, 10, 2 * 56 / 1024), (0, 0, 1.0)],
)
def test_sign_test_is_the_exact_two_sided_binomial(wins: int, rounds: int, p: float) -> None:
    assert sign_test(wins, rounds) == pytest.approx(p)


def test_the_summary_gives_medians_the_relative_difference_and_the_test() -> None:
    line = summary(Paired(a=[2.0] * 10, b=[1.8] * 10))
    assert "A p50 2.000 ms, B p50 1.800 ms" in line
    assert "B - A -0.200 ms (-10.0%)" in line
    assert "B faster in 10 of 10 rounds (sign test p = 0.00)" in line
    assert "CPU" not in line  # not measured


def test_the_summary_gives_the_broker_cpu_per_call_when_measured() -> None:
    line = summary(Paired(a=[2.0] * 4, b=[2.0] * 4, cpu_a=[1.0] * 4, cpu_b=[0.9, 0.9, 0.9, 1.1]))
    assert "broker CPU per call: A 1.000 ms, B 0.900 ms; B - A -0.100 ms (-10.0%)" in line
    assert "B cheaper in 3 of 4 rounds" in line


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_block_makes_its_calls_with_that_many_callers_at_a_time(concurrency: int) -> None:
    in_flight, most, made = 0, 0, 0

    async def call() -> None:
        nonlocal in_flight, most, made
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        made += 1

    p50 = asyncio.run(block_p50_ms(call, 12, concurrency))
    assert made == 12
    assert most == concurrency
    assert p50 >= 1.0  # ms: each call slept 1 ms


def test_a_variant_is_described_by_what_sets_it_apart() -> None:
    assert Variant({}, []).describe() == "env -, tree this one"
    described = Variant({"K": "1"}, ["--log-level=INFO"], Path("/w"), {}).describe()
    assert described == ("env {'K': '1'}, tree /w, broker args --log-level=INFO, service env -")


@pytest.mark.parametrize(
    ("rounds", "legs"),
    [
        (30, [(("A", "B"), 15), (("B", "A"), 15)]),
        (7, [(("A", "B"), 3), (("B", "A"), 4)]),
        (1, [(("B", "A"), 1)]),
    ],
)
def test_half_the_rounds_start_b_first(
    rounds: int, legs: list[tuple[tuple[str, str], int]]
) -> None:
    assert leg_rounds(rounds) == legs


def test_pooled_legs_keep_every_round_paired() -> None:
    first = Paired(a=[2.0, 2.0], b=[1.9, 1.8], cpu_a=[1.0, 1.0], cpu_b=[0.9, 0.9])
    second = Paired(a=[2.1], b=[2.2], cpu_a=[1.1], cpu_b=[1.2])
    pooled = first + second
    assert pooled.diffs == pytest.approx([-0.1, -0.2, 0.1])
    assert pooled.cpu_b == [0.9, 0.9, 1.2]


def test_each_leg_is_reported_by_what_started_first() -> None:
    line = legs_line([("A", Paired(a=[2.0] * 3, b=[1.9] * 3)), ("B", Paired(a=[2.0], b=[2.1]))])
    assert "A started first: B - A -0.100 ms (-5.0%, 3 rounds)" in line
    assert "B started first: B - A +0.100 ms (+5.0%, 1 rounds)" in line
