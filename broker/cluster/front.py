"""The public admin API of a `--workers` broker: `durable.v1.Admin` on `--admin`,
answered by the partitions behind it.

Each RPC goes where its data lives, as raw bytes (only what routing needs is parsed):
  by invocation id   DescribeInvocation, Cancel/Kill/Pause/Resume/PurgeInvocation
                     (`placement.of_id`); Resolve/RejectAwakeable (the awakeable id
                     names its invocation)
  by key             CompletePromise, GetState, SetState, DescribeKey (`placement.of_key`)
  every partition    ListInvocations, ListAwaiting, GetStats, ListDeployments and
                     GetLimits (merged, see `merge`); RegisterDeployment (partition 0
                     first, then the others under partition 0's id; `repair` adds it
                     later to one that was down), RemoveDeployment
                     and SetLimits
  partition 0        ListServices and every Schedule RPC
  the front itself   ClusterStatus
A partition's error passes through with its status and message; a partition that
cannot be reached is UNAVAILABLE naming it. The admin token and TLS are the single
broker's (`broker.security`); the caller's metadata goes on to the partitions, which
check the token too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc
from durable.v1 import admin_pb2
from durable.wire import parse_awakeable_id
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .. import admin_paging, security
from ..config import Settings, receive_limit
from ..interceptors import ErrorStatuses
from . import merge, placement
from .directory import Directory
from .forward import ADMIN_SERVICE, Failed, Partitions, forwarded_metadata

log = logging.getLogger("broker.cluster.front")

_HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[bytes, Context], Awaitable[bytes]]
# The workers as the supervisor knows them, for ClusterStatus.
Nodes = Callable[[], list[admin_pb2.ClusterNode]]

_BY_ID: dict[str, type[Message]] = {
    "DescribeInvocation": admin_pb2.DescribeInvocationRequest,
    "ExportInvocation": admin_pb2.ExportInvocationRequest,
    "CancelInvocation": admin_pb2.InvocationRequest,
    "KillInvocation": admin_pb2.InvocationRequest,
    "PauseInvocation": admin_pb2.InvocationRequest,
    "ResumeInvocation": admin_pb2.InvocationRequest,
    "PurgeInvocation": admin_pb2.InvocationRequest,
}
_BY_AWAKEABLE: dict[str, type[Message]] = {
    "ResolveAwakeable": admin_pb2.ResolveAwakeableRequest,
    "RejectAwakeable": admin_pb2.RejectAwakeableRequest,
}
_BY_KEY: dict[str, type[Message]] = {
    "CompletePromise": admin_pb2.CompletePromiseRequest,
    "GetState": admin_pb2.GetStateRequest,
    "SetState": admin_pb2.SetStateRequest,
    "DescribeKey": admin_pb2.DescribeKeyRequest,
}
_FIRST = (
    "ListServices",
    "CreateSchedule",
    "ListSchedules",
    "DescribeSchedule",
    "PauseSchedule",
    "ResumeSchedule",
    "TriggerSchedule",
    "DeleteSchedule",
)


async def _fail(context: Context, failed: Failed) -> NoReturn:
    await context.abort(failed.code, failed.message)
    raise AssertionError("unreachable")


async def _parse(context: Context, kind: type[Message], body: bytes) -> Any:
    request = kind()
    try:
        request.ParseFromString(body)
    except Exception as e:  # protobuf's DecodeError and its kin
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request does not parse as {kind.DESCRIPTOR.full_name}: {e}",
        )
    return request


class AdminFront:
    """Routes `durable.v1.Admin` over the partitions.

    Args:
        partitions: The partitions' admin APIs.
        nodes: The workers, for ClusterStatus.
    """

    def __init__(self, partitions: Partitions, nodes: Nodes) -> None:
        self.partitions = partitions
        self._nodes = nodes
        # Held while deployments or limits change on every partition, and by `repair`
        # while it brings one partition in line: it never acts on a list a change made
        # stale (a removed deployment brought back).
        self.changes = asyncio.Lock()

    def handlers(self) -> dict[str, Handler]:
        """Every Admin method's handler, by method name."""
        out: dict[str, Handler] = {}
        for name, kind in _BY_ID.items():
            out[name] = self._routed(name, kind, lambda r: self._of_id(r.invocation_id))
        for name, kind in _BY_AWAKEABLE.items():
            out[name] = self._routed(name, kind, lambda r: self._of_awakeable(r.awakeable_id))
        for name, kind in _BY_KEY.items():
            out[name] = self._routed(
                name, kind, lambda r: placement.of_key(r.key, self.partitions.count)
            )
        for name in _FIRST:
            out[name] = self._routed(name, None, lambda r: 0)
        out.update(
            ListInvocations=self.ListInvocations,
            ListAwaiting=self.ListAwaiting,
            GetStats=self.GetStats,
            ListDeployments=self.ListDeployments,
            GetLimits=self.GetLimits,
            RegisterDeployment=self._changing(self.RegisterDeployment),
            RemoveDeployment=self._changing(self.RemoveDeployment),
            SetLimits=self._changing(self.SetLimits),
            ClusterStatus=self.ClusterStatus,
        )
        return out

    def _changing(self, handler: Handler) -> Handler:
        async def locked(body: bytes, context: Context) -> bytes:
            async with self.changes:
                return await handler(body, context)

        return locked

    def _of_id(self, invocation_id: str) -> int:
        return placement.of_id(invocation_id, self.partitions.count)

    def _of_awakeable(self, awakeable_id: str) -> int:
        parsed = parse_awakeable_id(awakeable_id)
        # A malformed id: partition 0 answers it as the single broker does.
        return self._of_id(parsed[0]) if parsed else 0

    def _routed(
        self, method: str, kind: type[Message] | None, where: Callable[[Any], int]
    ) -> Handler:
        async def handle(body: bytes, context: Context) -> bytes:
            request = await _parse(context, kind, body) if kind is not None else None
            return await self._call(context, where(request), method, body)

        return handle

    async def _call(self, context: Context, partition: int, method: str, body: bytes) -> bytes:
        try:
            return await self.partitions.call(
                partition, method, body, forwarded_metadata(context), context.time_remaining()
            )
        except Failed as e:
            await _fail(context, e)

    async def _all(
        self, context: Context, method: str, body: bytes, partitions: list[int] | None = None
    ) -> list[bytes]:
        try:
            return await self.partitions.call_all(
                method, body, forwarded_metadata(context), context.time_remaining(), partitions
            )
        except Failed as e:
            await _fail(context, e)

    async def ListInvocations(self, body: bytes, context: Context) -> bytes:
        request = await _parse(context, admin_pb2.ListInvocationsRequest, body)
        try:
            admin_paging.check(request)
        except admin_paging.PagingError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        answers = await self._listings(context, request)
        return merge.invocations(request, answers).SerializeToString()

    async def _listings(
        self, context: Context, request: admin_pb2.ListInvocationsRequest
    ) -> list[admin_pb2.ListInvocationsResponse]:
        """Each partition's first `merge.wanted(request)` matches after the page token,
        paged: a partition lists at most `MAX_LIST_LIMIT` a call. The partitions page in
        step, one round of calls at a time, each with its own token."""
        pages: list[list[admin_pb2.ListInvocationsResponse]] = [
            [] for _ in range(self.partitions.count)
        ]
        asked = {p: merge.partition_request(request) for p in range(self.partitions.count)}
        while asked:
            bodies = {p: r.SerializeToString() for p, r in asked.items()}
            for p, answer in (await self._each(context, "ListInvocations", bodies)).items():
                pages[p].append(admin_pb2.ListInvocationsResponse.FromString(answer))
            asked = {
                p: following
                for p in asked
                if (following := merge.next_partition_request(request, pages[p])) is not None
            }
        return [merge.joined(mine) for mine in pages]

    async def _each(
        self, context: Context, method: str, bodies: dict[int, bytes]
    ) -> dict[int, bytes]:
        """`method` on each partition given, with its own request, at once; the first
        partition's error (by partition number) when any fails."""
        answers = await asyncio.gather(
            *(
                self.partitions.call(
                    p, method, body, forwarded_metadata(context), context.time_remaining()
                )
                for p, body in bodies.items()
            ),
            return_exceptions=True,
        )
        for answer in answers:
            if isinstance(answer, Failed):
                await _fail(context, answer)
            if isinstance(answer, BaseException):
                raise answer
        return {p: a for p, a in zip(bodies, answers, strict=True) if isinstance(a, bytes)}

    async def ListAwaiting(self, body: bytes, context: Context) -> bytes:
        request = await _parse(context, admin_pb2.ListAwaitingRequest, body)
        answers = await self._all(context, "ListAwaiting", body)
        parsed = [admin_pb2.ListAwaitingResponse.FromString(a) for a in answers]
        return merge.awaiting(request.limit, parsed).SerializeToString()

    async def GetStats(self, body: bytes, context: Context) -> bytes:
        answers = await self._all(context, "GetStats", body)
        parsed = [admin_pb2.GetStatsResponse.FromString(a) for a in answers]
        return merge.stats(parsed).SerializeToString()

    async def ListDeployments(self, body: bytes, context: Context) -> bytes:
        answers = await self._all(context, "ListDeployments", body)
        parsed = [admin_pb2.ListDeploymentsResponse.FromString(a) for a in answers]
        return merge.deployments(parsed).SerializeToString()

    async def GetLimits(self, body: bytes, context: Context) -> bytes:
        answers = await self._all(context, "GetLimits", body)
        parsed = [admin_pb2.GetLimitsResponse.FromString(a) for a in answers]
        return merge.limits(parsed).SerializeToString()

    async def SetLimits(self, body: bytes, context: Context) -> bytes:
        # Every partition enforces the limits on the invocations it runs.
        answers = await self._all(context, "SetLimits", body)
        parsed = [admin_pb2.SetLimitsResponse.FromString(a) for a in answers]
        return merge.scope(parsed).SerializeToString()

    async def RegisterDeployment(self, body: bytes, context: Context) -> bytes:
        request = await _parse(context, admin_pb2.RegisterDeploymentRequest, body)
        if request.deployment_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "deployment_id is set by the broker's front itself; leave it empty",
            )
        # Every partition first checks without registering (its own journals replay,
        # with `check`; its invocations in flight keep their contract, unless `force`):
        # a refusal by any leaves the deployment registered nowhere.
        checked = 0
        if request.check or not request.force:
            only = admin_pb2.RegisterDeploymentRequest(
                uri=request.uri, check=request.check, check_only=True, force=request.force
            )
            results = await asyncio.gather(
                *(
                    self.partitions.call(
                        p,
                        "RegisterDeployment",
                        only.SerializeToString(),
                        forwarded_metadata(context),
                        context.time_remaining(),
                    )
                    for p in range(self.partitions.count)
                ),
                return_exceptions=True,
            )
            refusals = [r for r in results if isinstance(r, BaseException)]
            if not request.check:
                # The in-place check alone: a partition out of reach now (its worker down)
                # cannot refuse, and the repair registers the deployment there once it
                # is back. One that was reached and did not say yes refuses: a check cut
                # short (a slow endpoint, a hung worker) is no check.
                refusals = [r for r in refusals if not (isinstance(r, Failed) and not r.reached)]
            if refusals:
                # Every partition's divergences, not only the first one's.
                failed = [r for r in refusals if isinstance(r, Failed)]
                if len(failed) < len(refusals):
                    raise refusals[0]
                await _fail(context, Failed(failed[0].code, "\n".join(f.message for f in failed)))
                raise AssertionError("unreachable")
            checked = sum(
                admin_pb2.Deployment.FromString(r).checked_journals
                for r in results
                if isinstance(r, bytes)
            )
            # Each partition checks again as it registers (not forced): what the endpoint
            # answers may have changed since (a rolling deploy behind one address), and a
            # refusal then leaves the deployment on some partitions only, said so below,
            # rather than a contract swapped under invocations in flight.
            request.check = False
            body = request.SerializeToString()
        # Partition 0 decides the id (new, the URI's, or a removed deployment's), so
        # that every partition knows the deployment by one id.
        first = await self._call(context, 0, "RegisterDeployment", body)
        deployment = admin_pb2.Deployment.FromString(first)
        request.deployment_id = deployment.id
        others = list(range(1, self.partitions.count))
        if others:
            try:
                await self.partitions.call_all(
                    "RegisterDeployment",
                    request.SerializeToString(),
                    forwarded_metadata(context),
                    context.time_remaining(),
                    others,
                )
            except Failed as e:
                # Registering again is idempotent: it completes what is missing.
                await _fail(
                    context,
                    Failed(
                        e.code,
                        f"{deployment.id} is registered on partition 0 but not on every "
                        f"other partition: {e.message}; register {request.uri} again",
                    ),
                )
        deployment.checked_journals = checked
        return deployment.SerializeToString()

    async def RemoveDeployment(self, body: bytes, context: Context) -> bytes:
        request = await _parse(context, admin_pb2.RemoveDeploymentRequest, body)
        if not request.force:
            await self._refuse_in_flight(context, request.deployment_id)
        # The others first: partition 0 lists the deployment until the last step, so
        # a removal cut short can be asked for again.
        removed = 0
        others = list(range(1, self.partitions.count))
        for p, answer in zip(others, await self._gone(context, body, others), strict=True):
            if answer is not None:
                removed += admin_pb2.RemoveDeploymentResponse.FromString(answer).in_flight
            else:
                log.info("%s was already gone from partition %d", request.deployment_id, p)
        first = admin_pb2.RemoveDeploymentResponse.FromString(
            await self._call(context, 0, "RemoveDeployment", body)
        )
        return admin_pb2.RemoveDeploymentResponse(
            in_flight=first.in_flight + removed
        ).SerializeToString()

    async def _gone(
        self, context: Context, body: bytes, partitions: list[int]
    ) -> list[bytes | None]:
        """RemoveDeployment on each partition; None where it was not there (already
        removed by an earlier, interrupted removal)."""

        async def one(p: int) -> bytes | None:
            try:
                metadata = forwarded_metadata(context)
                timeout = context.time_remaining()
                return await self.partitions.call(p, "RemoveDeployment", body, metadata, timeout)
            except Failed as e:
                if e.code == grpc.StatusCode.NOT_FOUND:
                    return None
                raise

        try:
            return list(await asyncio.gather(*(one(p) for p in partitions)))
        except Failed as e:
            await _fail(context, e)

    async def _refuse_in_flight(self, context: Context, deployment_id: str) -> None:
        listed = await self._all(context, "ListDeployments", b"")
        answers = [admin_pb2.ListDeploymentsResponse.FromString(a) for a in listed]
        if not any(d.id == deployment_id for d in answers[0].deployments):
            return  # partition 0 answers NOT_FOUND itself
        in_flight = sum(
            d.in_flight for a in answers for d in a.deployments if d.id == deployment_id
        )
        if in_flight:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"deployment {deployment_id} has {in_flight} invocation(s) in flight; wait "
                "for them to finish, or force the removal",
            )

    async def ClusterStatus(self, body: bytes, context: Context) -> bytes:
        directory = self.partitions.directory
        assert isinstance(directory, Directory), "cluster mode answers with its own status"
        nodes = self._nodes()
        serving = await asyncio.gather(
            *(self.partitions.serving(p) for p in range(directory.count))
        )
        out = admin_pb2.ClusterStatusResponse(mode="workers", nodes=nodes)
        for p, address in enumerate(directory.partitions):
            out.partitions.add(
                id=p,
                owner=f"worker-{directory.owner(p)}",
                ingress=address.ingress,
                admin=address.admin,
                metrics=address.metrics or "",
                serving=serving[p],
            )
        return out.SerializeToString()


class FrontServer:
    """The gRPC server on the public admin address.

    Args:
        settings: The broker's settings (admin token, TLS, payload limit).
        front: What answers.
    """

    def __init__(self, settings: Settings, front: AdminFront) -> None:
        self.settings = settings
        self.front = front
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, address: str) -> int:
        """Serves on `address` (port 0 picks one); returns the port."""
        interceptors: list[grpc.aio.ServerInterceptor] = (  # type: ignore[type-arg]
            [security.TokenInterceptor(self.settings.admin_token)]
            if self.settings.admin_token
            else []
        )
        interceptors.append(ErrorStatuses())
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", receive_limit(self.settings.max_payload_bytes)),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
            interceptors=interceptors,
        )
        servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    ADMIN_SERVICE,
                    {
                        name: grpc.unary_unary_rpc_method_handler(handler)
                        for name, handler in self.front.handlers().items()
                    },
                ),
            )
        )
        reflection.enable_server_reflection(
            (ADMIN_SERVICE, _HEALTH, reflection.SERVICE_NAME), server
        )
        self.port = await security.bind(
            server, address, self.settings.tls_cert, self.settings.tls_key
        )
        await server.start()
        self._server = server
        return self.port

    async def stop(self, grace: float = 2.0) -> None:
        """Stops serving, then closes the channels to the partitions."""
        if self._server is not None:
            await self._server.stop(grace)
        await self.front.partitions.close()
