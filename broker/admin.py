"""The admin API: deployments, services and invocations, for operators and brokerctl.

Status codes: NOT_FOUND for an unknown invocation id; INVALID_ARGUMENT for a malformed
request or an endpoint whose services cannot be served (the message says why);
UNAVAILABLE when the endpoint to register cannot be reached.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import grpc
from durable.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    invocation_pb2,
    protocol_pb2,
)

from . import registry as reg
from .core.model import now_ms
from .core.partition import Partition, UnknownInvocation
from .invoker import Invoker, endpoint_address
from .storage import Batch, deployments

log = logging.getLogger("broker.admin")

Status = invocation_pb2.InvocationStatus


class AdminServicer(admin_pb2_grpc.AdminServicer):
    """Implements `durable.v1.Admin`."""

    def __init__(self, partition: Partition, registry: reg.Registry, invoker: Invoker) -> None:
        self._partition = partition
        self._registry = registry
        self._invoker = invoker

    async def RegisterDeployment(
        self,
        request: admin_pb2.RegisterDeploymentRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.Deployment:
        uri = request.uri.strip()
        address = endpoint_address(uri)
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"not an endpoint URI: {request.uri!r} (expected http://HOST:PORT)",
            )
        try:
            discovered: protocol_pb2.DiscoverResponse = await self._invoker.stub(uri).Discover(  # type: ignore[misc]
                protocol_pb2.DiscoverRequest(), timeout=10
            )
        except grpc.aio.AioRpcError as e:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"cannot discover the endpoint at {uri}: {e.code().name}: {e.details()}",
            )
            raise AssertionError("unreachable") from None
        existing = self._registry.by_uri(uri)
        record = reg.Deployment(
            id=existing.id if existing else "dp_" + secrets.token_hex(8),
            uri=uri,
            services=list(discovered.services),
            files=discovered.files,
            created_at_ms=existing.created_at_ms if existing else now_ms(),
        )
        try:
            self._registry.add(record)
        except reg.RegistrationError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot register {uri}: {e}")
        batch = Batch()
        deployments.put(batch, record)
        await self._partition.committer.commit(batch)
        log.info("registered deployment %s at %s: %s", record.id, uri, ", ".join(record.services))
        return _deployment(record)

    async def ListDeployments(
        self, request: admin_pb2.ListDeploymentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListDeploymentsResponse:
        return admin_pb2.ListDeploymentsResponse(
            deployments=[_deployment(d) for d in self._registry.deployments()]
        )

    async def ListServices(
        self, request: admin_pb2.ListServicesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListServicesResponse:
        out = []
        for s in self._registry.services():
            key_field = next((m.key_field for m in s.methods.values() if m.key_field), "")
            out.append(
                admin_pb2.Service(
                    name=s.name,
                    kind=s.kind,
                    deployment_id=s.deployment_id,
                    key_field=key_field,
                    handlers=[
                        admin_pb2.Handler(
                            name=m.name,
                            input_type=m.input_type.DESCRIPTOR.full_name,
                            output_type=m.output_type.DESCRIPTOR.full_name,
                            shared=m.shared,
                        )
                        for m in s.methods.values()
                    ],
                )
            )
        return admin_pb2.ListServicesResponse(services=out)

    async def ListInvocations(
        self, request: admin_pb2.ListInvocationsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListInvocationsResponse:
        records = [
            r
            for r in self._partition.records()
            if (not request.status or r.status == request.status)
            and (not request.service or r.service == request.service)
            and (not request.key or r.key == request.key)
        ]
        records.sort(key=lambda r: (r.created_at_ms, r.id), reverse=True)
        if request.limit:
            records = records[: request.limit]
        return admin_pb2.ListInvocationsResponse(invocations=records)

    async def DescribeInvocation(
        self,
        request: admin_pb2.DescribeInvocationRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.DescribeInvocationResponse:
        try:
            record, journal = self._partition.record(request.invocation_id)
        except UnknownInvocation:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no invocation {request.invocation_id!r}"
            )
            raise AssertionError("unreachable") from None
        return admin_pb2.DescribeInvocationResponse(invocation=record, journal=journal)


def _deployment(record: reg.Deployment) -> admin_pb2.Deployment:
    return admin_pb2.Deployment(
        id=record.id,
        uri=record.uri,
        services=list(record.services),
        created_at_ms=record.created_at_ms,
    )
