"""Deployments every partition should have: the front registers what one missed.

A `--workers` front registers a deployment on partition 0, then on the others under
partition 0's id. A partition that was down then (its worker restarting) missed it and
kept answering UNIMPLEMENTED for the new service after it came back, until someone
registered the URI again. Partition 0 decides ids, so its list is the reference: every
few seconds the front lists each partition's deployments and registers on a partition
the ones it lacks, under the same id. Registering is idempotent, and only what is
missing is added: a deployment on a partition but not on partition 0 (a removal that
reached only some) is left for the operator, since invocations may be pinned to it.
"""

from __future__ import annotations

import asyncio
import logging

from durable.v1 import admin_pb2

from .forward import Failed, Metadata, Partitions

log = logging.getLogger("broker.cluster.repair")

# How often the partitions' deployments are compared (seconds).
INTERVAL_S = 2.0
# The longest one comparison may take before it gives up until the next round.
ROUND_TIMEOUT_S = 30.0


async def missing(partitions: Partitions, metadata: Metadata = ()) -> int:
    """Registers on each partition the deployments of partition 0 it lacks; returns how
    many it registered. A partition that cannot be reached is skipped this round.

    Raises:
        Failed: partition 0 cannot be listed.
    """
    listing = admin_pb2.ListDeploymentsRequest().SerializeToString()
    reference = admin_pb2.ListDeploymentsResponse.FromString(
        await partitions.call(0, "ListDeployments", listing, metadata, ROUND_TIMEOUT_S)
    ).deployments
    registered = 0
    for partition in range(1, partitions.count):
        try:
            held = admin_pb2.ListDeploymentsResponse.FromString(
                await partitions.call(
                    partition, "ListDeployments", listing, metadata, ROUND_TIMEOUT_S
                )
            ).deployments
            ids = {d.id for d in held}
            for deployment in reference:
                if deployment.id in ids:
                    continue
                request = admin_pb2.RegisterDeploymentRequest(
                    uri=deployment.uri, deployment_id=deployment.id
                )
                await partitions.call(
                    partition,
                    "RegisterDeployment",
                    request.SerializeToString(),
                    metadata,
                    ROUND_TIMEOUT_S,
                )
                registered += 1
                log.warning(
                    "registered deployment %s (%s) on partition %d, which had missed it",
                    deployment.id,
                    deployment.uri,
                    partition,
                )
        except Failed as e:
            log.debug("deployments of partition %d not compared: %s", partition, e.message)
    return registered


async def run(partitions: Partitions, metadata: Metadata = ()) -> None:
    """Compares and repairs every `INTERVAL_S` until cancelled."""
    while True:
        await asyncio.sleep(INTERVAL_S)
        try:
            await missing(partitions, metadata)
        except Failed as e:
            log.debug("deployments not compared: %s", e.message)
