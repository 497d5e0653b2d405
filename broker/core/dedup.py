"""What makes two submissions the same invocation, and finding the first one.

An idempotency key makes it (service, method, key, idempotency key); a workflow's run
handler runs once per key, so for it the workflow's key alone does. The identity's row
is written in the invocation's first batch; until that batch is durable the identity is
kept in memory too, so that a second submission in the meantime finds it.
"""

from __future__ import annotations

from .. import registry as reg
from ..storage import Batch, idempotency
from ..storage.idempotency import Binding
from ..storage.kv import KV
from . import actions
from .model import Invocation

Identity = tuple[str, str, str, str]


def is_workflow_run(registry: reg.Registry, service: str, method: str) -> bool:
    """Whether `service/method` is a workflow's run handler (runs once per key)."""
    target = registry.service(service)
    if target is None or target.kind != "workflow":
        return False
    m = target.methods.get(method)
    return m is not None and not m.shared


class Dedup:
    """The identity index: storage, plus the identities whose rows are not written yet."""

    def __init__(self, kv: KV, registry: reg.Registry) -> None:
        self._kv = kv
        self._registry = registry
        self._unwritten: dict[Identity, Binding] = {}

    def identity(
        self, service: str, method: str, key: str, idempotency_key: str
    ) -> Identity | None:
        """The identity of a submission, if it has one. A workflow's run is its key's
        whatever the idempotency key: another key must not run the workflow again (and
        the request is not compared, as without a key: the run that holds the key
        answers)."""
        if is_workflow_run(self._registry, service, method):
            return (service, method, key, "")
        if idempotency_key:
            return (service, method, key, idempotency_key)
        return None

    def of(self, record: Invocation) -> Identity | None:
        """The identity of a stored invocation, if it has one."""
        return self.identity(record.service, record.method, record.key, record.idempotency_key)

    def binding(self, identity: Identity) -> Binding | None:
        """What the identity is bound to, if anything."""
        return self._unwritten.get(identity) or idempotency.lookup(self._kv, *identity)

    def find(self, identity: Identity) -> str | None:
        """The invocation bound to the identity, if any."""
        bound = self.binding(identity)
        return None if bound is None else bound.invocation_id

    def bind(self, batch: Batch, identity: Identity, invocation_id: str, request: bytes) -> None:
        """Binds the identity to the invocation in `batch`; an idempotency key also
        remembers a digest of the request, so its reuse for another one is refused."""
        digest = self._digest(identity[0], identity[1], request) if identity[3] else b""
        self._unwritten[identity] = Binding(invocation_id, digest)
        idempotency.put(batch, *identity, invocation_id, digest)
        batch.then(actions.IdentityWritten(identity, invocation_id))

    def same_request(self, bound: Binding, service: str, method: str, request: bytes) -> bool:
        """Whether `request` is the one the key was first used with. Compared as
        messages, not bytes: another client's encoding of the same request (fields in
        another order, a default value written out) is the same request. Rows stored
        before digests existed have none and match any request; rows stored before
        digests were of the message hold the digest of the bytes as received."""
        return not bound.request_digest or bound.request_digest in (
            self._digest(service, method, request),
            idempotency.request_digest(request),
        )

    def _digest(self, service: str, method: str, request: bytes) -> bytes:
        """The digest of the request as its message, in protobuf's deterministic
        encoding (the bytes as received when the method or its message is unknown)."""
        target = self._registry.service(service)
        handler = target.methods.get(method) if target is not None else None
        if handler is not None:
            try:
                message = handler.input_type.FromString(request)
                request = message.SerializeToString(deterministic=True)
            except Exception:  # DecodeError and friends: the body is what it is
                pass
        return idempotency.request_digest(request)

    def written(self, identity: Identity, invocation_id: str) -> None:
        """The binding is durable: storage answers from now on (a suspended invocation
        keeps nothing here)."""
        bound = self._unwritten.get(identity)
        if bound is not None and bound.invocation_id == invocation_id:
            del self._unwritten[identity]

    def forget(self, identity: Identity) -> None:
        """Drops the in-memory binding (the invocation ended)."""
        self._unwritten.pop(identity, None)

    def unbind(self, batch: Batch, identity: Identity) -> None:
        """Deletes the binding (retention ended)."""
        idempotency.delete(batch, *identity)
