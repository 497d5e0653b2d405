"""The async core of `durable.testing`: a broker and in-process endpoints on one loop.

Everything here runs on the event loop the environment lives on; `durable.testing` wraps
it for callers on other loops and threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeAlias

import grpc

from durable.v1 import admin_pb2, admin_pb2_grpc, invocation_pb2

from ._endpoint import create_server
from ._service import Service, Servicer

HOST = "127.0.0.1"
# Seconds that in-flight calls get to finish when the environment stops.
STOP_GRACE = 1.0
# Deadline of each admin API call made by the helpers.
ADMIN_TIMEOUT = 30.0

ServiceLike: TypeAlias = Service | Servicer
StatusFilter: TypeAlias = "invocation_pb2.InvocationStatus.ValueType | str | None"
TimeSkipping: TypeAlias = bool | Literal["manual"]


class Broker(Protocol):
    """What this module needs of `broker.server.Broker` (imported lazily, untyped)."""

    ingress_port: int
    admin_port: int

    async def start(self) -> None: ...

    async def stop(self, grace: float = ...) -> None: ...

    def idle(self) -> bool: ...


class VirtualClock(Protocol):
    """What this module needs of `broker.clock.VirtualClock`."""

    def time(self) -> float: ...

    def advance(self, seconds: float) -> None: ...


def _import_broker(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as e:  # pragma: no cover - the SDK installed without the broker
        raise ImportError(
            "durable.testing runs the broker in-process: install the `durable-broker` "
            f"package alongside the SDK ({e})"
        ) from e


def new_broker(
    data_dir: str | None,
    suspend_after: float,
    extra: Mapping[str, Any],
    clock: VirtualClock | None = None,
) -> Broker:
    """A `broker.server.Broker` listening on free ports of 127.0.0.1 (not started yet),
    on `clock` when given (else the wall clock)."""
    server = _import_broker("broker.server")
    config = _import_broker("broker.config")
    names = {f.name for f in dataclasses.fields(config.Settings)}
    fixed = {"ingress", "admin", "data_dir", "suspend_after"}
    unknown = sorted(set(extra) - names)
    if unknown:
        raise TypeError(f"unknown broker setting(s) {unknown}; known: {sorted(names - fixed)}")
    clashing = sorted(set(extra) & fixed)
    if clashing:
        raise TypeError(
            f"broker setting(s) {clashing} are set by DurableTestEnvironment itself; "
            "use its `storage` and `suspend_after` arguments"
        )
    # A divergent replay fails the invocation (and so the test's call) instead of being
    # retried until a replay happens to match.
    options = {"non_determinism_terminal": True, **extra}
    settings = config.Settings(
        ingress=f"{HOST}:0",
        admin=f"{HOST}:0",
        data_dir=data_dir,
        suspend_after=suspend_after,
        **options,
    )
    broker: Broker = (
        server.Broker(settings) if clock is None else server.Broker(settings, clock=clock)
    )
    return broker


def status_value(status: StatusFilter) -> invocation_pb2.InvocationStatus.ValueType:
    """`"backing-off"`, `"completed"`, `invocation_pb2.COMPLETED`, ... as the enum value."""
    if status is None:
        return invocation_pb2.INVOCATION_STATUS_UNSPECIFIED
    if isinstance(status, str):
        name = status.strip().upper().replace("-", "_")
        try:
            return invocation_pb2.InvocationStatus.Value(name)
        except ValueError:
            valid = [
                n.lower().replace("_", "-")
                for n in invocation_pb2.InvocationStatus.keys()
                if n != "INVOCATION_STATUS_UNSPECIFIED"
            ]
            raise ValueError(f"unknown invocation status {status!r}; valid: {valid}") from None
    return status


class EnvironmentCore:
    """The broker, the in-process endpoints and the admin client of one environment.

    Args:
        services: Served together on one in-process endpoint at start (may be empty).
        data_dir: RocksDB directory, or None for a journal in memory.
        suspend_after: The broker's `suspend_after`.
        endpoints: URIs of endpoints running elsewhere, registered at start.
        broker_settings: Other `broker.config.Settings` fields by name.
        time_skipping: False (the wall clock), True (a virtual clock that jumps to the
            next timer whenever the broker is idle) or "manual" (a virtual clock moved
            only by `advance`, besides the wall time that passes).
    """

    def __init__(
        self,
        services: Sequence[ServiceLike],
        data_dir: str | None,
        suspend_after: float,
        endpoints: Sequence[str],
        broker_settings: Mapping[str, Any],
        time_skipping: TimeSkipping = False,
    ) -> None:
        if time_skipping not in (False, True, "manual"):
            raise ValueError(
                f"time_skipping must be False, True or 'manual', got {time_skipping!r}"
            )
        self._services = list(services)
        self._time_skipping = time_skipping
        self._clock: VirtualClock | None = None
        self._skipper: asyncio.Task[None] | None = None
        self.data_dir = data_dir
        self._suspend_after = suspend_after
        self._endpoints = list(endpoints)
        self._broker_settings = dict(broker_settings)
        self.ingress = ""
        self.admin = ""
        self.endpoint_uris: list[str] = []
        self._broker: Broker | None = None
        self._servers: list[grpc.aio.Server] = []
        self._admin_stub: admin_pb2_grpc.AdminStub | None = None
        self._admin_aio: grpc.aio.Channel | None = None

    async def start(self) -> None:
        """Starts the broker, serves and registers the services; stops what started if
        anything fails (or the start is cancelled)."""
        try:
            clock_module = _import_broker("broker.clock") if self._time_skipping else None
            if clock_module is not None:
                self._clock = clock_module.VirtualClock()
            broker = new_broker(
                self.data_dir, self._suspend_after, self._broker_settings, self._clock
            )
            self._broker = broker
            await broker.start()
            if clock_module is not None and self._time_skipping is True:
                self._skipper = asyncio.create_task(
                    clock_module.auto_skip(self._clock, broker.idle)
                )
            self.ingress = f"{HOST}:{broker.ingress_port}"
            self.admin = f"{HOST}:{broker.admin_port}"
            self._admin_aio = grpc.aio.insecure_channel(self.admin)
            # Typed for the sync API; on an aio channel its methods return awaitables.
            self._admin_stub = admin_pb2_grpc.AdminStub(self._admin_aio)
            if self._services:
                await self.add_deployment(self._services)
            for uri in self._endpoints:
                await self.register(uri)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stops whatever has started; idempotent. Raises the first error once all ran."""
        errors: list[BaseException] = []
        skipper, self._skipper = self._skipper, None
        if skipper is not None:
            skipper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await skipper
        admin, self._admin_aio, self._admin_stub = self._admin_aio, None, None
        if admin is not None:
            try:
                await admin.close(None)
            except Exception as e:
                errors.append(e)
        broker, self._broker = self._broker, None
        if broker is not None:
            try:
                await broker.stop(STOP_GRACE)
            except Exception as e:
                errors.append(e)
        servers, self._servers = self._servers, []
        for server in servers:
            try:
                await server.stop(STOP_GRACE)
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]

    async def invocations(
        self, status: StatusFilter, service: str, method: str, key: str, limit: int
    ) -> list[invocation_pb2.Invocation]:
        """See `DurableTestEnvironment.invocations`."""
        request = admin_pb2.ListInvocationsRequest(
            status=status_value(status), service=service, key=key
        )
        listed: list[invocation_pb2.Invocation] = []
        # Page by page: the broker lists at most 1000 a call.
        while True:
            if limit:
                request.limit = min(limit - len(listed), 1000)
            response: admin_pb2.ListInvocationsResponse = await self._admin().ListInvocations(
                request, timeout=ADMIN_TIMEOUT
            )
            listed.extend(response.invocations)
            if not response.next_page_token or (limit and len(listed) >= limit):
                break
            request.page_token = response.next_page_token
        return [i for i in listed if not method or i.method == method]

    async def describe(self, invocation_id: str) -> admin_pb2.DescribeInvocationResponse:
        """See `DurableTestEnvironment.describe`."""
        request = admin_pb2.DescribeInvocationRequest(invocation_id=invocation_id)
        response: admin_pb2.DescribeInvocationResponse = await self._admin().DescribeInvocation(
            request, timeout=ADMIN_TIMEOUT
        )
        return response

    async def register(self, uri: str) -> admin_pb2.Deployment:
        """See `DurableTestEnvironment.register`."""
        request = admin_pb2.RegisterDeploymentRequest(uri=uri)
        deployment: admin_pb2.Deployment = await self._admin().RegisterDeployment(
            request, timeout=ADMIN_TIMEOUT
        )
        return deployment

    async def add_deployment(self, services: Sequence[ServiceLike]) -> str:
        """See `DurableTestEnvironment.add_deployment`."""
        if isinstance(services, (Service, Servicer)):
            raise TypeError("`services` is a list: pass [MyServicer()], not MyServicer()")
        server, port = await create_server(list(services), f"{HOST}:0", clock=self.clock)
        self._servers.append(server)
        uri = f"http://{HOST}:{port}"
        await self.register(uri)
        self.endpoint_uris.append(uri)
        return uri

    @property
    def clock(self) -> Callable[[], float]:
        """Seconds since the epoch as the broker and the in-process endpoints see them."""
        return self._clock.time if self._clock is not None else time.time

    async def advance(self, seconds: float) -> None:
        """See `DurableTestEnvironment.advance`."""
        if self._clock is None:
            raise RuntimeError(
                "advance() needs a virtual clock: create the environment with "
                "time_skipping=True or time_skipping='manual'"
            )
        if seconds < 0:
            raise ValueError(f"time only moves forward: advance({seconds})")
        self._clock.advance(seconds)

    def _admin(self) -> Any:
        """The admin stub on the environment's loop (its methods return awaitables)."""
        if self._admin_stub is None:
            raise RuntimeError("the test environment is not running")
        return self._admin_stub
