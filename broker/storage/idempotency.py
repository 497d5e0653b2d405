"""Idempotency keys: (service, method, object key, idempotency key) -> invocation id.

The value is the invocation id, followed (since request digests were added) by a space
and the hex SHA-256 of the request that first used the key, so a reuse of the key with
another request can be refused. Rows written before that carry the id alone and match
any request.
"""

from __future__ import annotations

import dataclasses
import hashlib

from . import keys
from .commit import Batch
from .kv import KV


@dataclasses.dataclass(frozen=True)
class Binding:
    """What an idempotency key is bound to."""

    invocation_id: str
    # SHA-256 of the first request's body; b"" for rows stored before digests existed.
    request_digest: bytes = b""


def request_digest(request: bytes) -> bytes:
    """SHA-256 of a request body (`core.dedup` hands it the body re-encoded)."""
    return hashlib.sha256(request).digest()


def _key(service: str, method: str, object_key: str, idempotency_key: str) -> bytes:
    return (
        keys.IDEMPOTENCY
        + keys.part(service)
        + keys.part(method)
        + keys.part(object_key)
        + keys.part(idempotency_key)
    )


def encode(binding: Binding) -> bytes:
    """The stored value: `inv_... HEXDIGEST`, or the id alone without a digest."""
    value = binding.invocation_id.encode()
    if binding.request_digest:
        value += b" " + binding.request_digest.hex().encode()
    return value


def decode(raw: bytes) -> Binding:
    """The binding a stored value holds (old rows: the id alone, no digest)."""
    invocation_id, _, digest = raw.partition(b" ")
    return Binding(invocation_id.decode(), bytes.fromhex(digest.decode()) if digest else b"")


def put(
    batch: Batch,
    service: str,
    method: str,
    object_key: str,
    idempotency_key: str,
    invocation_id: str,
    request_digest: bytes = b"",
) -> None:
    """Binds the key to the invocation (and the digest of the request that used it)."""
    batch.put(
        _key(service, method, object_key, idempotency_key),
        encode(Binding(invocation_id, request_digest)),
    )


def lookup(
    kv: KV, service: str, method: str, object_key: str, idempotency_key: str
) -> Binding | None:
    """What the key is bound to, or None."""
    raw = kv.get(_key(service, method, object_key, idempotency_key))
    return None if raw is None else decode(raw)


def get(kv: KV, service: str, method: str, object_key: str, idempotency_key: str) -> str | None:
    """The invocation the key is bound to, or None."""
    found = lookup(kv, service, method, object_key, idempotency_key)
    return None if found is None else found.invocation_id


def delete(batch: Batch, service: str, method: str, object_key: str, idempotency_key: str) -> None:
    """Forgets the key (when its invocation is purged)."""
    batch.delete(_key(service, method, object_key, idempotency_key))
