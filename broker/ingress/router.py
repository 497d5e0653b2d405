"""Routes `/package.Service/Method` calls to invocations, bytes in and bytes out.

Status codes (documented for callers):
  UNIMPLEMENTED       unknown service or method
  INVALID_ARGUMENT    the body does not parse as the method's request; a keyed call
                      without its key; an idempotency key starting with "schedule:"
  RESOURCE_EXHAUSTED  the body is larger than the payload limit
  NOT_FOUND           attaching to an invocation that does not exist (idempotency)
  FAILED_PRECONDITION the idempotency key was already used with a different request
  any code            a handler's `TerminalError` code, with its message
Nothing is journaled for a rejected call.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from .. import codes, tracing
from .. import registry as reg
from ..core.model import IdempotencyConflict, UnknownInvocation
from ..core.schedules import KEY_PREFIX as SCHEDULE_KEY_PREFIX
from ..driver import Driver
from ..storage import AppendInDoubt, StoreUnavailable

log = logging.getLogger("broker.ingress")

IDEMPOTENCY_KEY = "idempotency-key"
INVOCATION_ID = "invocation-id"
# Trailing metadata of a call that failed with its invocation's own outcome (a handler's
# terminal error), as opposed to the broker failing to deliver one: a cluster's front
# follows an invocation to its partition's next leader on the second, never the first.
OUTCOME = "invocation-outcome"


async def abort_with_outcome(
    context: grpc.aio.ServicerContext[Any, Any], code: int, message: str
) -> None:
    """Ends the call with the invocation's failure, marked as its outcome."""
    context.set_trailing_metadata(((OUTCOME, "failure"),))
    await context.abort(status_of(code), message)


def idempotency_key_of(metadata: Iterable[tuple[str, Any]]) -> str:
    """The call's `idempotency-key` ("" without one).

    Raises:
        reg.BadRequest: INVALID_ARGUMENT when the call carries more than one: which
            would decide is an accident of ordering, and two orders of the same pair
            would be two calls.
    """
    keys = [v for k, v in metadata if k == IDEMPOTENCY_KEY]
    if len(keys) > 1:
        raise reg.BadRequest(
            codes.INVALID_ARGUMENT,
            f"{len(keys)} {IDEMPOTENCY_KEY} headers: send one key per call",
        )
    return str(keys[0]) if keys else ""


def is_outcome(error: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call's status is its invocation's own outcome."""
    trailing: Any = error.trailing_metadata() or ()  # typed as opaque items in grpc-stubs
    return any(k == OUTCOME for k, _ in trailing)


class Moved(Exception):
    """The partition stopped being served here after the invocation was acknowledged:
    it goes on at the partition's next leader, where the caller can attach to it.

    Not `acknowledged`: the partition stopped with the invocation's creation being
    appended to its log, before the caller was told its id; the next leader has it
    only if that append was stored."""

    def __init__(self, invocation_id: str, acknowledged: bool = True) -> None:
        super().__init__(invocation_id)
        self.invocation_id = invocation_id
        self.acknowledged = acknowledged


_BUILTIN_PREFIXES = ("/grpc.reflection.", "/grpc.health.", "/durable.v1.Ingress/")


status_of = codes.grpc_status


Call = Callable[[str, str, bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]


def route(
    handler_call_details: grpc.HandlerCallDetails, call: Call
) -> grpc.RpcMethodHandler[Any, Any] | None:
    """`call(service, method, body, context)` as the handler of a `/Service/Method`
    path, bytes in and out; None for the broker's own services."""
    path: str = handler_call_details.method
    if path.startswith(_BUILTIN_PREFIXES):
        return None
    service, _, method = path.lstrip("/").partition("/")
    return grpc.unary_unary_rpc_method_handler(functools.partial(call, service, method))


# Paths are whatever callers send: at most this many handlers are kept.
MAX_ROUTES = 4096


class Routes:
    """`route`'s handler for each path, made once per path: grpc asks for a handler on
    every call, and a new one each time is a partial and a handler tuple for nothing
    (the storage interceptor keeps its wrapper of each handler likewise)."""

    def __init__(self, call: Call) -> None:
        self._call = call
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any] | None] = {}

    def handler(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        path: str = handler_call_details.method
        try:
            return self._handlers[path]
        except KeyError:
            pass
        handler = route(handler_call_details, self._call)
        if len(self._handlers) >= MAX_ROUTES:
            self._handlers.clear()
        self._handlers[path] = handler
        return handler


class IngressRouter(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A generic handler: any registered method, raw bytes, answered from the journal."""

    def __init__(self, driver: Driver, registry: reg.Registry, max_payload: int) -> None:
        self._driver = driver
        self._registry = registry
        self._max_payload = max_payload
        self._routes = Routes(self.handle)

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._routes.handler(handler_call_details)

    @property
    def lost(self) -> bool:
        """Whether this partition may no longer write here (a cluster leader was fenced
        off): it is about to be served elsewhere."""
        return self._driver.committer.lost is not None

    async def handle(
        self,
        service: str,
        method: str,
        body: bytes,
        context: grpc.aio.ServicerContext[Any, Any],
        key: str | None = None,
        follow: bool = False,
    ) -> bytes:
        """Serves one call of `service`/`method` in this partition; `key` is the call's
        key when the caller already read it from the body (a worker's public ingress).

        Raises:
            Moved: with `follow` (a cluster's front, which attaches at the next leader),
                when this process stops serving the partition after the invocation id
                went out, or (a call without an idempotency key) while its creation was
                being appended.
        """
        if len(body) > self._max_payload:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request of {len(body)} bytes exceeds the {self._max_payload}-byte payload "
                "limit (--max-payload-bytes)",
            )
        if not self._driver.committer.healthy:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the broker cannot write its journal right now "
                f"({self._driver.committer.last_error}); retry later",
            )
        if key is None:
            try:
                _, _, key = reg.resolve(self._registry, service, method, body)
            except reg.BadRequest as e:
                await context.abort(status_of(e.code), e.message)
                raise AssertionError("unreachable") from None
        received = context.invocation_metadata() or ()
        try:
            idempotency_key = idempotency_key_of(received)
        except reg.BadRequest as e:
            await context.abort(status_of(e.code), e.message)
            raise AssertionError("unreachable") from None
        headers = {k: v for k, v in received if isinstance(v, str)}
        if idempotency_key.startswith(SCHEDULE_KEY_PREFIX):
            # A caller's key there could take a schedule's coming slot from it.
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"idempotency keys starting with {SCHEDULE_KEY_PREFIX!r} are the broker's "
                "own (its schedules' firings): choose another key",
            )
        with tracing.ingress(service, method, headers.get("traceparent", "")) as traceparent:
            try:
                invocation_id, result_future, durable = self._driver.invoke(
                    service,
                    method,
                    key,
                    body,
                    headers,
                    idempotency_key=idempotency_key,
                    traceparent=traceparent,
                )
            except IdempotencyConflict as e:
                # As payment APIs do: a key names one request; silently answering another
                # request with the first one's result would hide a client bug.
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"idempotency key {idempotency_key!r} was already used for "
                    f"{service}/{method} with a different request (invocation "
                    f"{e.invocation_id}); send the same request to get its result, or use "
                    "a new key for a new request",
                )
                raise AssertionError("unreachable") from None
            try:
                # The id is an acknowledgement: hand it out only once the invocation (or
                # the one this call attached to) is durable, so it still names it after a
                # crash.
                try:
                    await asyncio.shield(durable)
                except AppendInDoubt:
                    # Perhaps in the log: a keyless call must not be answered "retry"
                    # (it could run twice). A key makes sending it again safe.
                    if follow and not idempotency_key:
                        raise Moved(invocation_id, acknowledged=False) from None
                    raise
                await context.send_initial_metadata(((INVOCATION_ID, invocation_id),))
                try:
                    # Shielded: a caller that goes away must not cancel the invocation.
                    result = await asyncio.shield(result_future)
                except StoreUnavailable:
                    if follow:
                        raise Moved(invocation_id) from None
                    raise
            except asyncio.CancelledError:
                self._driver.detach(invocation_id, result_future)
                raise
            except UnknownInvocation:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND, f"invocation {invocation_id} not found"
                )
                raise AssertionError("unreachable") from None
        if result.HasField("failure"):
            await abort_with_outcome(context, result.failure.code, result.failure.message)
        return result.value
