"""What every partition should agree on, made so by the front: deployments and the
run-time limits.

A `--workers` front registers a deployment on partition 0, then on the others under
partition 0's id, and sets limits on every partition. A partition that was down then
(its worker restarting) missed it: it kept answering UNIMPLEMENTED for the new service
after it came back, until someone registered the URI again, or enforced other limits
than the rest. Partition 0 decides ids, so its state is the reference: every few seconds
the front compares each partition with it, registers the deployments one lacks under the
same id, and sets (or clears) the run-time limits that differ. Deployments are only
added: one on a partition but not on partition 0 (a removal that reached only some) is
left for the operator, since invocations may be pinned to it.
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


def _runtime_limits(
    answer: bytes,
) -> dict[tuple[str, str], tuple[int, float]]:
    """A partition's run-time limits by scope, from its GetLimits answer."""
    return {
        (s.service, s.method): (s.concurrency, s.rate)
        for s in admin_pb2.GetLimitsResponse.FromString(answer).limits
        if s.source == "runtime"
    }


async def limits(partitions: Partitions, metadata: Metadata = ()) -> int:
    """Sets on each partition the run-time limits partition 0 has, clearing the ones it
    has not; returns how many scopes it changed. A partition that cannot be reached or
    refuses (a service it does not know yet) is skipped this round.

    Raises:
        Failed: partition 0 cannot be asked.
    """
    asking = admin_pb2.GetLimitsRequest().SerializeToString()
    reference = _runtime_limits(
        await partitions.call(0, "GetLimits", asking, metadata, ROUND_TIMEOUT_S)
    )
    changed = 0
    for partition in range(1, partitions.count):
        try:
            held = _runtime_limits(
                await partitions.call(partition, "GetLimits", asking, metadata, ROUND_TIMEOUT_S)
            )
            for scope in sorted(reference.keys() | held.keys()):
                wanted = reference.get(scope)
                if held.get(scope) == wanted:
                    continue
                service, method = scope
                request = admin_pb2.SetLimitsRequest(service=service, method=method)
                if wanted is None:
                    request.clear = True
                else:
                    request.concurrency, request.rate = wanted
                await partitions.call(
                    partition, "SetLimits", request.SerializeToString(), metadata, ROUND_TIMEOUT_S
                )
                changed += 1
                log.warning(
                    "set the limits of %s%s on partition %d to partition 0's: %s",
                    service,
                    f"/{method}" if method else "",
                    partition,
                    "none" if wanted is None else f"concurrency {wanted[0]}, rate {wanted[1]:g}/s",
                )
        except Failed as e:
            log.debug("limits of partition %d not compared: %s", partition, e.message)
    return changed


async def run(partitions: Partitions, metadata: Metadata = ()) -> None:
    """Compares and repairs every `INTERVAL_S` until cancelled."""
    while True:
        await asyncio.sleep(INTERVAL_S)
        for repair in (missing, limits):
            try:
                await repair(partitions, metadata)
            except Failed as e:
                log.debug("partitions not compared (%s): %s", repair.__name__, e.message)
