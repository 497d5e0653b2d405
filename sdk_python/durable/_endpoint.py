"""The gRPC transport: a service endpoint the broker discovers and drives."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal
import sys
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
)
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import descriptor, descriptor_pb2
from google.protobuf import message as protobuf_message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from durable.v1 import protocol_pb2, protocol_pb2_grpc

from . import tracing, wire
from ._context import (
    Context,
    ObjectContext,
    ObjectSharedContext,
    WorkflowContext,
    WorkflowSharedContext,
)
from ._errors import ProtocolViolation, Suspended
from ._multiplex import TERMINAL, Multiplexer
from ._peer import add_to_server, check_start, protocol_error
from ._runtime import Runtime
from ._service import Service, Servicer
from .process import listen_problem
from .wire import Unparsed

log = logging.getLogger("durable")
M = TypeVar("M", bound=protobuf_message.Message)

PROTOCOL_VERSION = 1
SECRET_HEADER = "x-durable-secret"
# Journals travel in one start message; let them be large.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _files(services: Iterable[Service]) -> descriptor_pb2.FileDescriptorSet:
    """Every file the services are declared in, dependencies first."""
    out = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def visit(f: descriptor.FileDescriptor) -> None:
        if f.name in seen:
            return
        seen.add(f.name)
        for dep in f.dependencies:
            visit(dep)
        f.CopyToProto(out.file.add())

    for s in services:
        visit(s.descriptor.file)
    return out


@contextlib.contextmanager
def _handler_span(start: protocol_pb2.StartMessage) -> Iterator[None]:
    """The handler runs inside a span under its attempt's, so its own spans nest."""
    if not tracing.enabled():
        yield
        return
    from opentelemetry import trace

    with tracing.tracer("durable.sdk").start_as_current_span(
        f"handler {start.service}/{start.method}",
        context=tracing.context_from(start.traceparent),
        attributes={
            "durable.invocation_id": start.invocation_id,
            "durable.attempt": start.attempt,
            "durable.replayed_entries": len(start.journal),
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield
        except Suspended:
            span.add_event("suspended")
            raise
        except Exception as e:
            span.record_exception(e)
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(e)))
            raise


class _Endpoint(protocol_pb2_grpc.ServiceEndpointServicer):
    def __init__(
        self,
        services: Sequence[Service],
        request_response: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._services = {s.name: s for s in services}
        self._clock = clock
        self._request_response = request_response
        self._multiplexers: set[Multiplexer] = set()
        self._draining = False

    async def Discover(
        self,
        request: protocol_pb2.DiscoverRequest | Unparsed,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> protocol_pb2.DiscoverResponse:
        if isinstance(request, Unparsed):
            await _refuse(context, "Discover", request.problem)
        return protocol_pb2.DiscoverResponse(
            services=sorted(self._services),
            files=_files(self._services.values()),
            protocol_version=PROTOCOL_VERSION,
            request_response=self._request_response,
            multiplex=True,
            missing_handlers=[
                f"{s.name}/{m.name}"
                for s in self._services.values()
                for m in s.descriptor.methods
                if m.name not in s.handlers
            ],
            retry_policies=[
                protocol_pb2.HandlerRetryPolicy(
                    service=s.name, method=h.name, policy=h.retry_policy.to_proto()
                )
                for s in self._services.values()
                for h in s.handlers.values()
                if h.retry_policy is not None
            ],
        )

    def _attempt(
        self,
        start: protocol_pb2.StartMessage,
        send: Callable[[protocol_pb2.InvokeResponse], None],
    ) -> tuple[Runtime, Callable[[], Coroutine[Any, Any, None]]]:
        """A runtime for the attempt (sending through `send`) and the handler to execute."""
        runtime = Runtime(start, send, self._clock)
        service = self._services.get(start.service)
        handler = service.handlers.get(start.method) if service else None
        if service is None or handler is None:
            runtime.machine.fail(
                grpc.StatusCode.UNIMPLEMENTED.value[0],
                f"this endpoint has no handler {start.service}/{start.method}",
            )
            runtime.flush()

            async def nothing() -> None:
                pass

            return runtime, nothing
        ctx: Context
        if service.kind == "workflow":
            ctx = WorkflowSharedContext(runtime) if handler.shared else WorkflowContext(runtime)
        elif service.kind == "virtual_object":
            ctx = ObjectSharedContext(runtime) if handler.shared else ObjectContext(runtime)
        else:
            ctx = Context(runtime)

        async def run_handler() -> bytes:
            request = _parse_input(handler.input_type, runtime.machine.input.request)
            with _handler_span(start):
                response = await handler.fn(ctx, request)
            if not isinstance(response, handler.output_type):
                raise TypeError(
                    f"{start.service}/{start.method} returned {type(response).__name__}, "
                    f"expected {handler.output_type.__name__}"
                )
            return response.SerializeToString()

        return runtime, lambda: runtime.execute(run_handler)

    async def Invoke(
        self,
        request_iterator: AsyncIterator[protocol_pb2.InvokeRequest | Unparsed],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[protocol_pb2.InvokeResponse]:
        first = await anext(request_iterator, None)
        outgoing: asyncio.Queue[protocol_pb2.InvokeResponse] = asyncio.Queue()
        try:
            if first is None:
                raise ProtocolViolation("the stream ended before its start message")
            start = check_start(first)
            runtime, execute = self._attempt(start, outgoing.put_nowait)
        except ProtocolViolation as e:
            await _refuse(context, "Invoke", str(e))

        async def read_completions() -> None:
            try:
                async for message in request_iterator:
                    _take(runtime, message)
            except ProtocolViolation as e:
                # The attempt cannot go on from a message it cannot take: end it with
                # an error the broker records, rather than wait on what never comes.
                log.warning("invocation %s: %s", start.invocation_id, e)
                outgoing.put_nowait(protocol_error(str(e)))
                return
            runtime.on_input_closed()

        handler_task = asyncio.create_task(execute())
        reader_task = asyncio.create_task(read_completions())
        try:
            while True:
                message = await outgoing.get()
                yield message
                if message.WhichOneof("message") in TERMINAL:
                    break
        finally:
            reader_task.cancel()
            if not handler_task.done():
                handler_task.cancel()

    async def InvokeOnce(
        self,
        request: protocol_pb2.InvokeRequest | Unparsed,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> protocol_pb2.InvokeOnceResponse:
        outgoing: asyncio.Queue[protocol_pb2.InvokeResponse] = asyncio.Queue()
        try:
            runtime, execute = self._attempt(check_start(request), outgoing.put_nowait)
        except ProtocolViolation as e:
            await _refuse(context, "InvokeOnce", str(e))
        # Nothing more will arrive: any await that is not complete suspends at once.
        runtime.input_closed = True
        await execute()
        reply = protocol_pb2.InvokeOnceResponse()
        while not outgoing.empty():
            message = outgoing.get_nowait()
            reply.messages.append(message)
            if message.WhichOneof("message") in TERMINAL:
                break
        return reply

    async def Multiplex(
        self,
        request_iterator: AsyncIterator[protocol_pb2.MultiplexRequest | Unparsed],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[protocol_pb2.MultiplexResponse]:
        mux = Multiplexer(self._attempt, draining=self._draining)
        self._multiplexers.add(mux)
        reader = asyncio.create_task(mux.read(request_iterator))
        try:
            async for frame in mux.frames():
                yield frame
            if mux.refused is not None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, mux.refused)
        finally:
            reader.cancel()
            mux.stop_all()
            self._multiplexers.discard(mux)

    async def drain(self, timeout: float) -> None:
        """Lets attempts on multiplexed streams finish (for up to `timeout` seconds),
        refusing new ones, then ends the streams so the broker goes elsewhere."""
        self._draining = True
        for mux in list(self._multiplexers):
            mux.drain()
        waits = [asyncio.ensure_future(mux.ended.wait()) for mux in self._multiplexers]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for wait in pending:  # past the grace period: grpc's stop cancels the calls
                wait.cancel()


async def _refuse(
    context: grpc.aio.ServicerContext[Any, Any], method: str, problem: str
) -> NoReturn:
    """Ends the call with INVALID_ARGUMENT: the caller's mistake, one log line."""
    log.warning("%s refused: %s", method, problem)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)


def _take(runtime: Runtime, message: protocol_pb2.InvokeRequest | Unparsed) -> None:
    """Hands a message that follows the start on an attempt's stream to its runtime."""
    if isinstance(message, Unparsed):
        raise ProtocolViolation(message.problem)
    kind = message.WhichOneof("message")
    if kind == "completion":
        runtime.on_completion(message.completion)
    elif kind == "start":
        raise ProtocolViolation("a second start on the stream of an attempt already started")


def _parse_input(input_type: type[M], data: bytes) -> M:
    """The handler's request, from the journal's input entry."""
    try:
        return input_type.FromString(data)
    except protobuf_message.DecodeError as e:
        raise ProtocolViolation(
            f"the input is not a valid {input_type.DESCRIPTOR.full_name} message ({e})"
        ) from None


class _SecretInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Serves the broker protocol only to callers with the shared secret."""

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if not details.method.startswith("/durable.v1.ServiceEndpoint/"):
            return await continuation(details)
        given = str(dict(details.invocation_metadata or ()).get(SECRET_HEADER, "")).encode()
        if hmac.compare_digest(given, self._secret):
            return await continuation(details)

        async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "this endpoint requires the broker's shared secret (--endpoint-secret)",
            )

        if details.method.endswith(("/Invoke", "/Multiplex")):
            return grpc.stream_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


async def create_server(
    services: Sequence[Service | Servicer],
    address: str = "127.0.0.1:0",
    *,
    request_response: bool = False,
    secret: str | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[grpc.aio.Server, int]:
    """A started gRPC server hosting the services; returns it and its bound port.

    Args:
        services: `durable.Service`s or instances of generated `Servicer` subclasses.
        address: `host:port`; port 0 picks a free one.
        request_response: Ask the broker to drive this endpoint with one unary call per
            attempt (as FaaS platforms run handlers) instead of a stream.
        secret: Serve only a broker that sends this shared secret (default: the
            `DURABLE_ENDPOINT_SECRET` environment variable; none when unset).
        clock: Seconds since the epoch, for `ctx.now()` and the due times of sleeps,
            delayed sends and timeouts (`durable.testing` passes its virtual clock).
    """
    secret = secret if secret is not None else os.environ.get("DURABLE_ENDPOINT_SECRET") or None
    bound = [s if isinstance(s, Service) else Service.from_servicer(s) for s in services]
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Fail loudly when the port is taken instead of silently sharing it.
            ("grpc.so_reuseport", 0),
        ],
        interceptors=[_SecretInterceptor(secret)] if secret else [],
    )
    endpoint = _Endpoint(bound, request_response, clock)
    add_to_server(endpoint, server)
    plain_stop = server.stop

    async def stop(grace: float | None = None) -> None:
        # grpc's stop refuses new calls and gives running ones `grace` seconds, but a
        # multiplexed stream never ends by itself: drain it within the same grace.
        stopping = asyncio.ensure_future(plain_stop(grace))
        if grace:
            await endpoint.drain(grace)
        await stopping

    server.stop = stop  # type: ignore[method-assign]
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # Checked first so that a taken port is one clear error, not grpc's log line as well.
    _check_bindable(address)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:
        raise ListenError(
            f"cannot listen on {address}: the port is in use or the address is not local "
            f"(grpc: {e})"
        ) from None
    await server.start()
    return server, port


class ListenError(OSError):
    """The endpoint's address cannot be bound (the port is taken, or not a local address)."""


def _check_bindable(address: str) -> None:
    """Raises `ListenError` when `address` (host:port) cannot be bound right now: not
    HOST:PORT, a port out of range, a host that does not resolve, or a port taken.

    Binds and releases a socket with SO_REUSEADDR, as grpc does, so a port held only in
    TIME_WAIT passes and one with a listener fails. Port 0 always passes.
    """
    problem = listen_problem(address)
    if problem is not None:
        raise ListenError(f"cannot listen on {address}: {problem.reason}")


async def serve_async(
    services: Sequence[Service | Servicer], address: str, *, request_response: bool = False
) -> None:
    """Serves until SIGTERM or SIGINT, then drains in-flight attempts for up to 5 s."""
    names = [s.name if isinstance(s, Service) else s.SERVICE_DESCRIPTOR.full_name for s in services]
    tracing.configure(",".join(names))
    server, port = await create_server(services, address, request_response=request_response)
    host = address.rsplit(":", 1)[0]
    mode = "request/response" if request_response else "streaming"
    started = f"durable endpoint listening on {host}:{port} ({mode}), serving {', '.join(names)}"
    if log.hasHandlers() and log.isEnabledFor(logging.INFO):
        log.info("%s", started)
    else:
        # Logging is not set up (a user's own script), or set to say less than this:
        # still say where it listens, once.
        print(started, file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(5)
    tracing.shutdown()


def serve(
    services: Sequence[Service | Servicer],
    address: str = "127.0.0.1:9080",
    *,
    request_response: bool = False,
) -> None:
    """Runs a service endpoint hosting `services` on `address` until SIGTERM/SIGINT.

    With `request_response`, the broker drives it with one unary call per attempt.
    Prints (or logs, when logging is set up) one line saying where it listens. When the
    address cannot be bound, prints one line saying so and exits with status 1.
    """
    try:
        wire.run(serve_async(services, address, request_response=request_response))
    except ListenError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
