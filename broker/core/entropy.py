"""Random bytes from the operating system, fetched in blocks.

Every new invocation takes 16 random bytes for its id and 8 for its replay seed. Asked
for one at a time (`secrets`), each is a `getrandom` system call plus `SystemRandom`'s
Python-level work, a visible share of a trivial call's cost in the broker. The bytes are
the same ones `os.urandom` gives, only read 4 KiB at a time; a forked child starts with
an empty block, so it never hands out bytes its parent handed out too.
"""

from __future__ import annotations

import os

_BLOCK = 4096

_block = b""
_at = 0


def token_bytes(count: int) -> bytes:
    """`count` random bytes (at most one block)."""
    global _block, _at
    if _at + count > len(_block):
        _block, _at = os.urandom(max(_BLOCK, count)), 0
    taken = _block[_at : _at + count]
    _at += count
    return taken


def randbits64() -> int:
    """A random unsigned 64-bit integer."""
    return int.from_bytes(token_bytes(8), "big")


def _forget() -> None:
    global _block, _at
    _block, _at = b"", 0


os.register_at_fork(after_in_child=_forget)
