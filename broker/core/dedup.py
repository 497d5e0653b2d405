"""What makes two submissions the same invocation, and finding the first one.

An idempotency key makes it (service, method, key, idempotency key); a workflow's run
handler runs once per key, so for it the workflow's key alone does. The identity's row
is written in the invocation's first batch; until that batch is durable the identity is
kept in memory too, so that a second submission in the meantime finds it.
"""

from __future__ import annotations

from .. import registry as reg
from ..storage import Batch, idempotency
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
        self._unwritten: dict[Identity, str] = {}

    def identity(
        self, service: str, method: str, key: str, idempotency_key: str
    ) -> Identity | None:
        """The identity of a submission, if it has one."""
        if idempotency_key or is_workflow_run(self._registry, service, method):
            return (service, method, key, idempotency_key)
        return None

    def of(self, record: Invocation) -> Identity | None:
        """The identity of a stored invocation, if it has one."""
        return self.identity(record.service, record.method, record.key, record.idempotency_key)

    def find(self, identity: Identity) -> str | None:
        """The invocation bound to the identity, if any."""
        return self._unwritten.get(identity) or idempotency.get(self._kv, *identity)

    def bind(self, batch: Batch, identity: Identity, invocation_id: str) -> None:
        """Binds the identity to the invocation in `batch`."""
        self._unwritten[identity] = invocation_id
        idempotency.put(batch, *identity, invocation_id)
        batch.then(actions.IdentityWritten(identity, invocation_id))

    def written(self, identity: Identity, invocation_id: str) -> None:
        """The binding is durable: storage answers from now on (a suspended invocation
        keeps nothing here)."""
        if self._unwritten.get(identity) == invocation_id:
            del self._unwritten[identity]

    def forget(self, identity: Identity) -> None:
        """Drops the in-memory binding (the invocation ended)."""
        self._unwritten.pop(identity, None)

    def unbind(self, batch: Batch, identity: Identity) -> None:
        """Deletes the binding (retention ended)."""
        idempotency.delete(batch, *identity)
