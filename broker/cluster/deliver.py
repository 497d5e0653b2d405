"""`durable.v1.Partitions/Deliver`: a partition's private door for other partitions'
outbox messages."""

from __future__ import annotations

import hmac
from typing import Any

import grpc
from durable.v1 import cluster_pb2, cluster_pb2_grpc

from ..driver import Driver

# The metadata carrying the cluster's secret on deliveries.
SECRET_HEADER = "x-durable-cluster-secret"


class DeliverServicer(cluster_pb2_grpc.PartitionsServicer):
    """Applies delivered messages to one partition; answers once they are durable.

    Args:
        driver: The partition's driver.
        secret: What a delivery must carry (`SECRET_HEADER`) to be applied.
    """

    def __init__(self, driver: Driver, secret: str) -> None:
        self._driver = driver
        self._partition = driver.partition
        self._secret = secret

    async def Deliver(
        self, request: cluster_pb2.DeliverRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cluster_pb2.DeliverResponse:
        given = dict(context.invocation_metadata() or ()).get(SECRET_HEADER, "")
        if not self._secret or not hmac.compare_digest(str(given), self._secret):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "deliveries between partitions come from this broker's own workers only",
            )
        me = self._partition.placement.me
        if request.destination != me:
            # A directory out of date: applying here would route the message nowhere.
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this is partition {me}, not partition {request.destination}",
            )
        applied = await self._driver.commit(
            self._partition.on_delivery, request.source, list(request.messages)
        )
        return cluster_pb2.DeliverResponse(applied=applied)
