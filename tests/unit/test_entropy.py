"""The broker's block of OS random bytes (ids and replay seeds)."""

from __future__ import annotations

import os

from broker.core import entropy, model


def test_ids_are_distinct_and_keep_their_form() -> None:
    ids = {model.new_invocation_id() for _ in range(20_000)}
    assert len(ids) == 20_000
    for invocation_id in list(ids)[:100]:
        assert invocation_id.startswith("inv_") and len(invocation_id) == 4 + 22


def test_a_forked_child_never_repeats_what_its_parent_hands_out() -> None:
    entropy.token_bytes(16)  # a block is loaded, with bytes left in it
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's side
        os.write(write, entropy.token_bytes(16))
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    from_child = os.read(read, 16)
    os.close(read)
    assert len(from_child) == 16
    assert entropy.token_bytes(16) != from_child


def test_a_request_larger_than_what_is_left_gets_fresh_bytes() -> None:
    taken = [entropy.token_bytes(1000) for _ in range(10)]
    assert all(len(t) == 1000 for t in taken)
    assert len(set(taken)) == 10
    assert 0 <= entropy.randbits64() < 2**64
