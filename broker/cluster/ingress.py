"""A worker's public ingress: every call goes to the partition that owns it.

Every worker listens on the one public address (SO_REUSEPORT: the kernel spreads client
connections over them). A call whose key or idempotency key lives in one of this
worker's partitions is served in-process; any other is forwarded, bytes and metadata as
they came, to the owning partition's private ingress. A plain call with neither goes to
one of this worker's own partitions, so it never crosses processes.

A call outlives the process serving its partition. Once the partition acknowledged it
(the `invocation-id` header), a failure that is not the invocation's own outcome (the
partition's process died or handed the partition over) is followed: the caller waits,
attached by id, for the result wherever the partition is served next. Before that, a
call is sent again only when it certainly never arrived, or when it carries an
idempotency key and the partition moved (the key makes a second send the same call).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import grpc
from durable.v1 import ingress_pb2, ingress_pb2_grpc

from .. import codes
from .. import registry as reg
from ..ingress import IngressRouter, IngressServicer
from ..ingress.router import (
    INVOCATION_ID,
    Moved,
    Routes,
    idempotency_key_of,
    is_outcome,
    status_of,
)
from ..storage import StoreUnavailable
from .directory import Unreachable, never_sent
from .peers import FOLLOW_S, Answered, Peers, Unanswered, undelivered
from .placement import Placement

log = logging.getLogger("broker.cluster")

# Metadata gRPC sets itself: a forwarded call gets its own.
_OWN_METADATA = ("user-agent", "grpc-", ":", "content-type", "te")

Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Coroutine[Any, Any, Any]]


def forwarded_metadata(context: grpc.aio.ServicerContext[Any, Any]) -> list[tuple[str, Any]]:
    """The caller's metadata, without what gRPC sets on every call itself."""
    return [
        (k, v) for k, v in (context.invocation_metadata() or ()) if not k.startswith(_OWN_METADATA)
    ]


@asynccontextmanager
async def relayed_errors(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
    """Answers with the owning partition's status when a forwarded call fails, and
    UNAVAILABLE when nobody serves it now."""
    try:
        yield
    except grpc.aio.AioRpcError as e:
        await _relay(context, e)
    except Answered as e:
        await _relay(context, e.error)
    except InDoubt as e:
        await context.abort(grpc.StatusCode.UNKNOWN, str(e))
    except Unreachable as e:
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))


class InDoubt(Exception):
    """A forwarded call without an idempotency key whose partition went away (or stepped
    down) after receiving it and before saying its invocation id: it may have run.

    Relayed as UNKNOWN, not as the transport's UNAVAILABLE, which gRPC clients take
    as safe to retry: a retry could run the call a second time."""

    def __init__(self, home: int, error: grpc.aio.AioRpcError) -> None:
        super().__init__(
            f"partition {home}: the process serving it went away with this call in flight "
            f"({error.code().name}: {error.details()}); the call may have run: send calls "
            "with an idempotency-key header, which are safe to retry"
        )


def failed_forward(
    home: int,
    error: grpc.aio.AioRpcError,
    invocation_id: str,
    resendable: bool,
    acknowledged: bool,
) -> Exception:
    """What a forwarded call that failed after it was sent raises: `Moved` to follow
    its invocation to the next leader, `Unanswered` to send it again (it has an
    idempotency key), `InDoubt` when it may have run, `Answered` to relay the
    partition's own answer."""
    if undelivered(error) and invocation_id:
        return Moved(invocation_id)
    if undelivered(error) and resendable and not acknowledged:
        return Unanswered(error)
    if undelivered(error):
        return InDoubt(home, error)
    return Answered(error)


async def _relay(context: grpc.aio.ServicerContext[Any, Any], error: grpc.aio.AioRpcError) -> None:
    if is_outcome(error):
        trailing: Any = error.trailing_metadata() or ()  # opaque items in grpc-stubs
        context.set_trailing_metadata(tuple(trailing))
    await context.abort(error.code(), error.details() or "")


def _follow_s(context: grpc.aio.ServicerContext[Any, Any]) -> float:
    """How long a caller waits for a leader, or for its invocation at the partition's
    next leader: until its own deadline, or `FOLLOW_S`."""
    remaining = context.time_remaining()
    return FOLLOW_S if remaining is None else remaining


def _follow_deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float:
    """`_follow_s` from now, in loop time."""
    return asyncio.get_running_loop().time() + _follow_s(context)


class ClusterRouter(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Routes `/package.Service/Method` calls to the owning partition.

    Args:
        local: This worker's partitions' own routers, by partition.
        registry: The services (to find a call's key); every partition has the same.
        placement: The partition count (`me` is not used).
        peers: Channels to every partition's private ingress.
        catch_up: Cluster mode: brings `registry` up to date with the cluster's log, for
            a call to a service it does not know (it may have been registered through
            another node a moment ago).
    """

    def __init__(
        self,
        local: dict[int, IngressRouter],
        registry: reg.Registry,
        placement: Placement,
        peers: Peers,
        catch_up: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._local = local
        self._registry = registry
        self._placement = placement
        self._peers = peers
        self._catch_up = catch_up
        self._turn = itertools.count()
        self._routes = Routes(self._call)

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._routes.handler(handler_call_details)

    def home(self, service: str, method: str, key: str, idempotency_key: str) -> int:
        """The partition a call goes to."""
        home = self._placement.home(service, method, key, idempotency_key)
        if home is not None:
            return home
        # A call with no key: any partition; one of this process's when it has any (in
        # cluster mode a node may lead none, or a changing set).
        turn = next(self._turn)
        local = sorted(self._local)
        return local[turn % len(local)] if local else turn % self._placement.partitions

    async def _key(self, service: str, method: str, body: bytes) -> str:
        try:
            return reg.resolve(self._registry, service, method, body)[2]
        except reg.BadRequest as e:
            if e.code != codes.UNIMPLEMENTED or self._catch_up is None:
                raise
        await self._catch_up()
        return reg.resolve(self._registry, service, method, body)[2]

    async def _call(
        self, service: str, method: str, body: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        metadata = forwarded_metadata(context)
        try:
            idempotency_key = idempotency_key_of(metadata)
            key = await self._key(service, method, body)
        except reg.BadRequest as e:
            await context.abort(status_of(e.code), e.message)
            raise AssertionError("unreachable") from None
        home = self.home(service, method, key, idempotency_key)
        async with relayed_errors(context):
            try:
                local = self._local.get(home)
                if local is not None and not local.lost:
                    try:
                        # The key is read: the partition's router need not parse it again.
                        return await local.handle(service, method, body, context, key, True)
                    except StoreUnavailable:
                        # Not acknowledged. Sent again only when it carries an idempotency
                        # key and this process lost the partition.
                        if not idempotency_key or not local.lost:
                            raise
                return await self._forward(
                    home, service, method, body, metadata, context, bool(idempotency_key)
                )
            except Moved as e:
                log.info(
                    "partition %d went away while %s ran; waiting for it at the next leader",
                    home,
                    e.invocation_id,
                )
                if not e.acknowledged:
                    return await self._follow_unacknowledged(home, e.invocation_id, context)
                request = ingress_pb2.AttachRequest(invocation_id=e.invocation_id)
                return (await self._peers.attach(home, request, _follow_deadline(context))).value
        raise AssertionError("unreachable")

    async def _follow_unacknowledged(
        self, home: int, invocation_id: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        """Waits for a keyless call whose creation was being appended when its partition
        stepped down, at the next leader: its answer if the append was stored; if not,
        UNAVAILABLE (it never ran: safe to send again); if no leader answers in time,
        UNKNOWN (it may have run)."""
        request = ingress_pb2.AttachRequest(invocation_id=invocation_id)
        try:
            output = await self._peers.attach(home, request, _follow_deadline(context))
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND and not is_outcome(e):
                # The next leader applied the whole log before serving, and the old
                # leader's later appends are refused: the creation is not in it.
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"partition {home}: its node stepped down before this call was "
                    "stored; it did not run: send it again",
                )
            if is_outcome(e):
                # Stored, and it failed: its id goes out with its answer, as acknowledged.
                await context.send_initial_metadata(((INVOCATION_ID, invocation_id),))
            if not undelivered(e):
                raise  # the invocation's own outcome, or the caller's deadline
            reason = f"{e.code().name}: {e.details()}"
        except Unreachable as e:
            reason = str(e)
        else:
            # It was stored: the id the call would have answered with, as acknowledged.
            await context.send_initial_metadata(((INVOCATION_ID, invocation_id),))
            return output.value
        await context.abort(
            grpc.StatusCode.UNKNOWN,
            f"partition {home}: its node stepped down while storing this call, and no node "
            f"answered for it since ({reason}); the call may have run: send calls with an "
            "idempotency-key header, which are safe to retry",
        )
        raise AssertionError("unreachable")

    async def _forward(
        self,
        home: int,
        service: str,
        method: str,
        body: bytes,
        metadata: list[tuple[str, Any]],
        context: grpc.aio.ServicerContext[Any, Any],
        resendable: bool,
    ) -> bytes:
        """Sends the call to the process serving partition `home`; `resendable` when it
        carries an idempotency key.

        Raises:
            Moved: the partition acknowledged the call, then its process went away.
        """

        async def send(channel: grpc.aio.Channel) -> bytes:
            # No serializers: the body goes on as the bytes it came as.
            call = channel.unary_unary(f"/{service}/{method}", None, None)(
                body, metadata=metadata, timeout=context.time_remaining()
            )
            initial = await call.initial_metadata()
            invocation_id = next((str(v) for k, v in initial or () if k == INVOCATION_ID), "")
            if initial:
                await context.send_initial_metadata(tuple(initial))
            try:
                response: bytes = await call
            except grpc.aio.AioRpcError as e:
                if never_sent(e):
                    raise  # it reached nobody: `Peers.call` follows the partition
                # Otherwise the partition may have the call: never sent again as it is.
                raise failed_forward(home, e, invocation_id, resendable, bool(initial)) from None
            return response

        # Until the call is sent it reached nobody: while the partition has no leader (an
        # election, a NATS server restarting) it waits for one up to the caller's deadline
        # rather than failing a call that a moment later would go through.
        return await self._peers.call(home, send, _follow_s(context))


class ClusterIngressServicer(ingress_pb2_grpc.IngressServicer):
    """`durable.v1.Ingress` (Attach, GetOutput) served by the owning partition."""

    def __init__(
        self, local: dict[int, IngressServicer], placement: Placement, peers: Peers
    ) -> None:
        self._local = local
        self._placement = placement
        self._peers = peers

    def _home(self, request: ingress_pb2.AttachRequest) -> int:
        if request.HasField("idempotent"):
            t = request.idempotent
            home = self._placement.home(t.service, t.method, t.key, t.idempotency_key)
            return min(self._local, default=0) if home is None else home
        return self._placement.of_id(request.invocation_id)

    async def _route(
        self,
        name: str,
        request: ingress_pb2.AttachRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> ingress_pb2.Output:
        home = self._home(request)
        local = self._local.get(home)
        if local is not None:
            handler: Handler = getattr(local, name)
            output: ingress_pb2.Output = await handler(request, context)
            return output

        async def send(channel: grpc.aio.Channel) -> ingress_pb2.Output:
            forwarded: ingress_pb2.Output = await getattr(
                ingress_pb2_grpc.IngressStub(channel), name
            )(request, metadata=forwarded_metadata(context), timeout=context.time_remaining())
            return forwarded

        async with relayed_errors(context):
            return await self._peers.call(home, send)
        raise AssertionError("unreachable")

    async def Attach(
        self, request: ingress_pb2.AttachRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingress_pb2.Output:
        home = self._home(request)
        local = self._local.get(home)
        if local is not None:
            try:
                return await local.Attach(request, context)
            except StoreUnavailable:
                pass  # this process stopped serving the partition while the caller waited
        async with relayed_errors(context):
            return await self._peers.attach(
                home, request, _follow_deadline(context), forwarded_metadata(context)
            )
        raise AssertionError("unreachable")

    async def GetOutput(
        self, request: ingress_pb2.AttachRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingress_pb2.Output:
        return await self._route("GetOutput", request, context)
