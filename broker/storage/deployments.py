"""Registered deployments with their descriptors, and the ids of removed ones.

A removed deployment leaves its id behind under its (canonical) URI: invocations pinned
to it may still be in flight (a forced removal), and registering that URI again must
give them back a deployment of theirs rather than strand them.
"""

from __future__ import annotations

from collections.abc import Iterator

from durable.v1 import storage_pb2

from . import keys
from .commit import Batch
from .kv import KV

Deployment = storage_pb2.DeploymentRecord


def put(batch: Batch, record: Deployment) -> None:
    """Writes the deployment."""
    batch.put(keys.DEPLOYMENTS + keys.part(record.id), record.SerializeToString())


def delete(batch: Batch, deployment_id: str) -> None:
    """Removes the deployment."""
    batch.delete(keys.DEPLOYMENTS + keys.part(deployment_id))


def scan(kv: KV) -> Iterator[Deployment]:
    """Every deployment."""
    for _, raw in kv.scan(keys.DEPLOYMENTS):
        yield Deployment.FromString(raw)


def retire(batch: Batch, uri: str, deployment_id: str) -> None:
    """Remembers that the deployment at `uri` (canonical) had id `deployment_id`."""
    batch.put(keys.RETIRED_DEPLOYMENTS + keys.part(uri), deployment_id.encode())


def retired_id(kv: KV, uri: str) -> str | None:
    """The id the last deployment removed from `uri` (canonical) had, if any."""
    raw = kv.get(keys.RETIRED_DEPLOYMENTS + keys.part(uri))
    return raw.decode() if raw is not None else None


def unretire(batch: Batch, uri: str) -> None:
    """Forgets the removed id of `uri`: a deployment there has it again."""
    batch.delete(keys.RETIRED_DEPLOYMENTS + keys.part(uri))
