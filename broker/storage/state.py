"""Virtual-object state: (service, key, name) -> value."""

from __future__ import annotations

from . import keys
from .commit import Batch
from .kv import KV


def _prefix(service: str, key: str) -> bytes:
    return keys.STATE + keys.part(service) + keys.part(key)


def put(batch: Batch, service: str, key: str, name: str, value: bytes) -> None:
    """Sets one state value.

    Raises:
        keys.KeyTooLong: a name over `keys.MAX_PART_BYTES`, the limit on keys and on
            promise names (it ends the key, so storage could hold it, but a name that
            long is a mistake, and listing the names would outgrow a response).
    """
    raw = name.encode()
    keys.check_part(raw, "a state name")
    batch.put(_prefix(service, key) + raw, value)


def delete(batch: Batch, service: str, key: str, name: str) -> None:
    """Clears one state value."""
    batch.delete(_prefix(service, key) + name.encode())


def written_in(batch: Batch, service: str, key: str) -> bool:
    """Whether `batch` sets or clears any of the object's state values."""
    prefix = _prefix(service, key)
    return any(k.startswith(prefix) for k, _ in batch.puts)


def load(kv: KV, service: str, key: str) -> dict[str, bytes]:
    """Every state value of the object."""
    prefix = _prefix(service, key)
    return {k[len(prefix) :].decode(): v for k, v in kv.scan(prefix)}


def size(values: dict[str, bytes]) -> int:
    """What state counts against --max-state-bytes: every name plus its value."""
    return sum(value_size(name, value) for name, value in values.items())


def value_size(name: str, value: bytes) -> int:
    """What one state value counts against --max-state-bytes."""
    return len(name) + len(value)
