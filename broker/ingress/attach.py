"""`durable.v1.Ingress`: attach to an invocation or read its output, by id or key."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from durable.v1 import ingress_pb2, ingress_pb2_grpc

from .. import registry as reg
from ..core.model import UnknownInvocation
from ..driver import Driver
from .router import abort_with_outcome


class IngressServicer(ingress_pb2_grpc.IngressServicer):
    """Attach (wait for the result) and GetOutput (read it if ready)."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._partition = driver.partition

    async def _target(
        self, request: ingress_pb2.AttachRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> str:
        if request.HasField("idempotent"):
            t = request.idempotent
            try:
                reg.check_key(t.service, t.key)
            except reg.BadRequest as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, e.message)
            found = self._partition.find(t.service, t.method, t.key, t.idempotency_key)
            if found is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"no invocation of {t.service}/{t.method} with key {t.key!r} and "
                    f"idempotency key {t.idempotency_key!r}",
                )
                raise AssertionError("unreachable")
            return found
        if not request.invocation_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "give an invocation_id or an idempotent target"
            )
        return request.invocation_id

    async def Attach(
        self, request: ingress_pb2.AttachRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingress_pb2.Output:
        invocation_id = await self._target(request, context)
        waiting = self._driver.attach(invocation_id)
        try:
            result = await asyncio.shield(waiting)
        except asyncio.CancelledError:
            self._driver.detach(invocation_id, waiting)
            raise
        except UnknownInvocation:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no invocation {invocation_id!r}")
            raise AssertionError("unreachable") from None
        if result.HasField("failure"):
            await abort_with_outcome(context, result.failure.code, result.failure.message)
        return ingress_pb2.Output(invocation_id=invocation_id, ready=True, value=result.value)

    async def GetOutput(
        self, request: ingress_pb2.AttachRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingress_pb2.Output:
        invocation_id = await self._target(request, context)
        try:
            result = self._partition.output(invocation_id)
        except UnknownInvocation:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no invocation {invocation_id!r}")
            raise AssertionError("unreachable") from None
        if result is None:
            return ingress_pb2.Output(invocation_id=invocation_id, ready=False)
        out = ingress_pb2.Output(invocation_id=invocation_id, ready=True, value=result.value)
        if result.HasField("failure"):
            out.failure.CopyFrom(result.failure)
        return out
