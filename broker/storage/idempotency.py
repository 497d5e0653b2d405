"""Idempotency keys: (service, method, object key, idempotency key) -> invocation id."""

from __future__ import annotations

from . import keys
from .commit import Batch
from .kv import KV


def _key(service: str, method: str, object_key: str, idempotency_key: str) -> bytes:
    return (
        keys.IDEMPOTENCY
        + keys.part(service)
        + keys.part(method)
        + keys.part(object_key)
        + keys.part(idempotency_key)
    )


def put(
    batch: Batch,
    service: str,
    method: str,
    object_key: str,
    idempotency_key: str,
    invocation_id: str,
) -> None:
    """Binds the key to the invocation."""
    batch.put(_key(service, method, object_key, idempotency_key), invocation_id.encode())


def get(kv: KV, service: str, method: str, object_key: str, idempotency_key: str) -> str | None:
    """The invocation the key is bound to, or None."""
    raw = kv.get(_key(service, method, object_key, idempotency_key))
    return None if raw is None else raw.decode()


def delete(batch: Batch, service: str, method: str, object_key: str, idempotency_key: str) -> None:
    """Forgets the key (when its invocation is purged)."""
    batch.delete(_key(service, method, object_key, idempotency_key))
