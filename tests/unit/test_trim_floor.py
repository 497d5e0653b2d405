"""How far a cluster partition's leader trims its log (`replica.trim_floor`)."""

from __future__ import annotations

from broker.cluster.replica import trim_floor


def test_a_snapshot_with_every_follower_past_it_is_trimmed_through() -> None:
    assert trim_floor(covered=40, followers=[55, 41], trimmed=0) == 40


def test_a_follower_behind_the_snapshot_holds_the_trim_at_its_position() -> None:
    assert trim_floor(covered=40, followers=[55, 23], trimmed=0) == 23


def test_a_held_back_trim_goes_further_once_the_follower_catches_up() -> None:
    # The snapshot is unchanged (no entry appended since): the trim still moves on.
    assert trim_floor(covered=40, followers=[55, 23], trimmed=0) == 23
    assert trim_floor(covered=40, followers=[55, 60], trimmed=23) == 40


def test_nothing_is_trimmed_twice_or_backwards() -> None:
    assert trim_floor(covered=40, followers=[60], trimmed=40) is None
    assert trim_floor(covered=40, followers=[12], trimmed=23) is None
    assert trim_floor(covered=0, followers=[], trimmed=0) is None


def test_with_no_live_follower_the_snapshot_alone_decides() -> None:
    assert trim_floor(covered=81, followers=[], trimmed=40) == 81
