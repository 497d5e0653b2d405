"""`durable.v1.Partitions/Deliver`: a partition's private door for other partitions'
outbox messages."""

from __future__ import annotations

from typing import Any

import grpc
from durable.v1 import cluster_pb2, cluster_pb2_grpc

from ..driver import Driver


class DeliverServicer(cluster_pb2_grpc.PartitionsServicer):
    """Applies delivered messages to one partition; answers once they are durable."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._partition = driver.partition

    async def Deliver(
        self, request: cluster_pb2.DeliverRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cluster_pb2.DeliverResponse:
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
