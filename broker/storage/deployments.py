"""Registered deployments with their descriptors."""

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
