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
# The longest one registration may take (its endpoint's discovery): the front's own
# registrations and removals wait for it.
REGISTER_TIMEOUT_S = 5.0


# The requests a round sends every partition, serialized once.
_LIST_DEPLOYMENTS = admin_pb2.ListDeploymentsRequest().SerializeToString()
_GET_LIMITS = admin_pb2.GetLimitsRequest().SerializeToString()


async def _reference(partitions: Partitions, metadata: Metadata) -> dict[str, str]:
    """Partition 0's deployments: uri by id, oldest first."""
    answer = await partitions.call(
        0, "ListDeployments", _LIST_DEPLOYMENTS, metadata, ROUND_TIMEOUT_S
    )
    return {d.id: d.uri for d in admin_pb2.ListDeploymentsResponse.FromString(answer).deployments}


async def missing(partitions: Partitions, lock: asyncio.Lock, metadata: Metadata = ()) -> int:
    """Registers on each partition the deployments of partition 0 it lacks; returns how
    many it registered. A partition that cannot be reached, or a deployment whose
    endpoint cannot be (an old version shut down), is skipped this round.

    Each registration happens under `lock`, which the front holds while it registers or
    removes a deployment, after partition 0 is asked again: a deployment removed since
    the round began is not brought back.

    Raises:
        Failed: partition 0 cannot be listed.
    """
    reference = await _reference(partitions, metadata)
    registered = 0
    for partition in range(1, partitions.count):
        try:
            answer = await partitions.call(
                partition, "ListDeployments", _LIST_DEPLOYMENTS, metadata, ROUND_TIMEOUT_S
            )
        except Failed as e:
            log.debug("deployments of partition %d not compared: %s", partition, e.message)
            continue
        held = {d.id for d in admin_pb2.ListDeploymentsResponse.FromString(answer).deployments}
        for deployment_id in reference:
            if deployment_id in held:
                continue
            try:
                async with lock:
                    uri = (await _reference(partitions, metadata)).get(deployment_id)
                    if uri is None:
                        continue  # removed meanwhile
                    request = admin_pb2.RegisterDeploymentRequest(
                        uri=uri, deployment_id=deployment_id
                    )
                    await partitions.call(
                        partition,
                        "RegisterDeployment",
                        request.SerializeToString(),
                        metadata,
                        REGISTER_TIMEOUT_S,
                    )
            except Failed as e:
                log.debug(
                    "deployment %s not registered on partition %d: %s",
                    deployment_id,
                    partition,
                    e.message,
                )
                continue
            registered += 1
            log.warning(
                "registered deployment %s (%s) on partition %d, which had missed it",
                deployment_id,
                uri,
                partition,
            )
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


async def limits(partitions: Partitions, lock: asyncio.Lock, metadata: Metadata = ()) -> int:
    """Sets on each partition the run-time limits partition 0 has, clearing the ones it
    has not; returns how many scopes it changed. Each partition is compared under
    `lock` (the front holds it while it sets limits), with partition 0 asked again; one
    that cannot be reached, or refuses a scope (a service it does not know yet), is
    skipped this round.
    """
    changed = 0
    for partition in range(1, partitions.count):
        async with lock:
            try:
                reference = _runtime_limits(
                    await partitions.call(0, "GetLimits", _GET_LIMITS, metadata, ROUND_TIMEOUT_S)
                )
                held = _runtime_limits(
                    await partitions.call(
                        partition, "GetLimits", _GET_LIMITS, metadata, ROUND_TIMEOUT_S
                    )
                )
            except Failed as e:
                log.debug("limits of partition %d not compared: %s", partition, e.message)
                continue
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
                try:
                    await partitions.call(
                        partition,
                        "SetLimits",
                        request.SerializeToString(),
                        metadata,
                        ROUND_TIMEOUT_S,
                    )
                except Failed as e:
                    log.debug("limits of %s on partition %d not set: %s", scope, partition, e)
                    continue
                changed += 1
                log.warning(
                    "set the limits of %s%s on partition %d to partition 0's: %s",
                    service,
                    f"/{method}" if method else "",
                    partition,
                    "none" if wanted is None else f"concurrency {wanted[0]}, rate {wanted[1]:g}/s",
                )
    return changed


async def run(partitions: Partitions, lock: asyncio.Lock, metadata: Metadata = ()) -> None:
    """Compares and repairs every `INTERVAL_S` until cancelled."""
    while True:
        await asyncio.sleep(INTERVAL_S)
        try:
            await missing(partitions, lock, metadata)
        except Failed as e:
            log.debug("deployments not compared: %s", e.message)
        await limits(partitions, lock, metadata)
