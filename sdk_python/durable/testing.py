"""Test your durable services against a real broker, in-process, in a few lines.

`DurableTestEnvironment` starts a real broker (journal in memory, or in RocksDB in a
directory you choose), serves your services on a local endpoint, registers that endpoint
with the broker, and hands you gRPC channels to the broker's ingress. Your test then calls
your handlers exactly as production callers do: through the broker, with the generated
stubs. Everything listens on `127.0.0.1` with ports the OS picks, so tests can run in
parallel, and everything is stopped when the environment is left.

Plain pytest (no asyncio plugin needed): the broker and your services run on a private
event loop in a background thread::

    import grpc
    import pytest
    from durable.testing import DurableTestEnvironment
    from flights import flights_pb2, flights_pb2_grpc

    from services.flights.service import Flights


    def test_reserve_then_get() -> None:
        with DurableTestEnvironment([Flights()]) as env:
            flights = flights_pb2_grpc.FlightsStub(env.channel())
            flights.Reserve(flights_pb2.ReserveRequest(trip_id="t1"))
            assert flights.Get(flights_pb2.TripRef(trip_id="t1")).state == "reserved"


    def test_terminal_error_reaches_the_caller() -> None:
        with DurableTestEnvironment([Flights()]) as env:
            flights = flights_pb2_grpc.FlightsStub(env.channel())
            with pytest.raises(grpc.RpcError) as failure:
                flights.Reserve(flights_pb2.ReserveRequest(trip_id="t2", fail=True))
            assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION

Async tests (pytest-asyncio, anyio, or your own `asyncio.run`): the broker and your
services run on the running loop, and the `..._async` helpers are awaitable::

    import asyncio

    from durable.v1 import invocation_pb2


    def test_reserve_async() -> None:
        async def scenario() -> None:
            async with DurableTestEnvironment([Flights()]) as env:
                flights = flights_pb2_grpc.FlightsStub(env.aio_channel())
                call = flights.Reserve(flights_pb2.ReserveRequest(trip_id="t1"))
                assert (await call).state == "reserved"
                invocation_id = dict(await call.initial_metadata())["invocation-id"]
                described = await env.describe_async(invocation_id)
                assert described.invocation.status == invocation_pb2.COMPLETED

        asyncio.run(scenario())

Services that call each other through the broker go in one environment; pass any number
of servicers (they share one endpoint, one deployment)::

    with DurableTestEnvironment(
        [Flights(), Cars(), Payments(), Trips(NotificationLog(tmp_path / "log"))]
    ) as env:
        trips = trips_pb2_grpc.TripsStub(env.channel())
        assert trips.Reserve(trips_pb2.ReserveTripRequest()).status == "success"

**Replay is exercised on purpose.** `suspend_after` defaults to `0`: a handler suspends
at *every* await of a result the broker must deliver (a call to another service, a
sleep, an awakeable), and is re-invoked and replayed from its journal once the result is
in. Code that does not replay deterministically therefore diverges in your tests, not
only after a crash in production. In production the broker retries such an attempt (a
fixed deployment can then recover the invocation); here the invocation fails at once
with `INTERNAL` and the message `non-determinism at journal entry N: the journal has
<journaled command>, but the handler proposed <replayed command>`, so the call your test
made raises instead of passing on a lucky retry (`broker_settings=
{"non_determinism_terminal": False}` restores retrying). Give your calls a `timeout=`
all the same, so that a handler waiting on something that never comes fails the test.
Pass `suspend_after=1.0` (the broker's own default) to test handlers that stay in memory
while they wait.

This module imports the broker (`broker.server`) when an environment starts; importing
`durable` alone never does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import importlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc

from durable.v1 import admin_pb2, admin_pb2_grpc, invocation_pb2

from ._endpoint import create_server
from ._service import Service, Servicer

__all__ = ["INVOCATION_ID_HEADER", "DurableTestEnvironment", "invocation_id_of"]

log = logging.getLogger("durable.testing")

#: The response metadata key under which the ingress returns the invocation id.
INVOCATION_ID_HEADER = "invocation-id"

_HOST = "127.0.0.1"
# Seconds that in-flight calls get to finish when the environment stops.
_STOP_GRACE = 1.0
# Deadline of each admin API call made by the helpers.
_ADMIN_TIMEOUT = 30.0

T = TypeVar("T")
ServiceLike: TypeAlias = Service | Servicer
StatusFilter: TypeAlias = "invocation_pb2.InvocationStatus.ValueType | str | None"


class _Broker(Protocol):
    """What this module needs of `broker.server.Broker` (imported lazily, untyped)."""

    ingress_port: int
    admin_port: int

    async def start(self) -> None: ...

    async def stop(self, grace: float = ...) -> None: ...


def _new_broker(data_dir: str | None, suspend_after: float, extra: Mapping[str, Any]) -> _Broker:
    """A `broker.server.Broker` listening on free ports of 127.0.0.1 (not started yet)."""
    try:
        server = importlib.import_module("broker.server")
        config = importlib.import_module("broker.config")
    except ImportError as e:  # pragma: no cover - the SDK installed without the broker
        raise ImportError(
            "durable.testing runs the broker in-process: install the `durable-broker` "
            f"package alongside the SDK ({e})"
        ) from e
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
        ingress=f"{_HOST}:0",
        admin=f"{_HOST}:0",
        data_dir=data_dir,
        suspend_after=suspend_after,
        **options,
    )
    broker: _Broker = server.Broker(settings)
    return broker


def _status_value(status: StatusFilter) -> invocation_pb2.InvocationStatus.ValueType:
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


def invocation_id_of(call: grpc.Call | grpc.RpcError) -> str:
    """The invocation id the ingress returned for a call made through a sync stub.

    Use the stub's `with_call` form to get the call object, or pass the `grpc.RpcError`
    a failed call raised::

        response, call = stub.Reserve.with_call(request)
        env.describe(invocation_id_of(call))

    For `grpc.aio` calls read it yourself: `dict(await call.initial_metadata())`.

    Args:
        call: The completed call, or the error a failed call raised.

    Returns:
        The `inv_...` id, or `""` when the call never reached an invocation (for example,
        the ingress rejected its request).
    """
    # A sync stub's RpcError is also a grpc.Call, though not typed as one.
    initial_metadata = getattr(call, "initial_metadata", None)
    if initial_metadata is None:
        return ""
    for key, value in initial_metadata() or ():
        if key == INVOCATION_ID_HEADER:
            return value if isinstance(value, str) else value.decode()
    return ""


class _GuardedMultiCallable:
    """A sync stub's method that checks the calling thread before each call."""

    def __init__(self, inner: Any, method: str, check: Callable[[str], None]) -> None:
        self._inner = inner
        self._method = method
        self._check = check

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._check(self._method)
        return self._inner(*args, **kwargs)

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        self._check(self._method)
        return self._inner.with_call(*args, **kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        self._check(self._method)
        return self._inner.future(*args, **kwargs)


class _GuardedChannel(grpc.Channel):
    """A sync channel whose calls fail fast on the environment's own event loop.

    The broker answers on that loop, so a blocking call made from it would wait for
    itself forever. (A wrapper rather than `grpc.intercept_channel`: grpcio 1.85 crashes
    when an intercepted channel is used after it was closed.)
    """

    def __init__(self, inner: grpc.Channel, env: DurableTestEnvironment) -> None:
        self._inner = inner
        self._env = env

    def _check(self, method: str) -> None:
        if self._env._on_env_loop():
            raise RuntimeError(
                f"{method}: a blocking gRPC call from the event loop the broker runs on "
                "would wait for itself forever; in async code use env.aio_channel() "
                "(or call the sync stub through asyncio.to_thread)"
            )

    def _wrap(self, kind: str, method: str, args: tuple[Any, ...], kwargs: Any) -> Any:
        inner = getattr(self._inner, kind)(method, *args, **kwargs)
        return _GuardedMultiCallable(inner, method, self._check)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._wrap("unary_unary", method, args, kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._wrap("unary_stream", method, args, kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._wrap("stream_unary", method, args, kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._wrap("stream_stream", method, args, kwargs)

    def subscribe(
        self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False
    ) -> None:
        self._inner.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        self._inner.unsubscribe(callback)

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> _GuardedChannel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        self.close()
        return None


class DurableTestEnvironment:
    """A real broker plus your services, in-process, for tests.

    Use it as a context manager, `with` (the broker runs on a private event loop in a
    background thread; for plain pytest) or `async with` (the broker runs on the running
    loop; for async tests). Each environment can be entered once. The module docstring
    has complete examples.

    Args:
        services: Your handlers: instances of generated `...Servicer` subclasses or
            `durable.Service` objects. They are served together on one in-process
            endpoint (one deployment) that is registered with the broker. May be empty
            when you only test `endpoints` running elsewhere.
        storage: `"memory"` (the default) keeps the journal in memory; a directory path
            (`str` or `os.PathLike`, e.g. pytest's `tmp_path / "broker"`) keeps it in
            RocksDB there, so a second environment on the same path resumes what the
            first left unfinished. To use a directory literally named `memory`, pass a
            `pathlib.Path`.
        suspend_after: Seconds a handler may block on an awaited result before it
            suspends. The default `0` suspends at every such await, so your handlers
            are replayed from their journal after each one in your tests.
        endpoints: URIs of further service endpoints (`"http://127.0.0.1:9101"`) to
            register at start, for services you run yourself.
        broker_settings: Other `broker.config.Settings` fields by name, e.g.
            `{"retry_initial": 0.01, "retry_max": 0.1}` for fast retries.
        start_timeout: Seconds to wait for the broker to start and the deployments to
            register before giving up (`TimeoutError`).
        stop_timeout: Seconds to wait for everything to stop when the environment is
            left before giving up (`TimeoutError`).

    Attributes:
        ingress: `host:port` of the broker's ingress, where callers send requests.
        admin: `host:port` of the broker's admin API.
        endpoint_uris: URIs of the endpoints this environment serves in-process (the
            one hosting `services`, then those added with `add_deployment`).
    """

    def __init__(
        self,
        services: Sequence[ServiceLike] = (),
        *,
        storage: str | os.PathLike[str] = "memory",
        suspend_after: float = 0.0,
        endpoints: Sequence[str] = (),
        broker_settings: Mapping[str, Any] | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 30.0,
    ) -> None:
        if isinstance(services, (Service, Servicer)):
            raise TypeError("`services` is a list: pass [MyServicer()], not MyServicer()")
        if suspend_after < 0:
            raise ValueError(f"suspend_after must be >= 0, got {suspend_after}")
        self._services = list(services)
        if isinstance(storage, str) and storage == "memory":
            self._data_dir: str | None = None
        else:
            self._data_dir = os.fspath(storage)
        self._suspend_after = suspend_after
        self._endpoints = list(endpoints)
        self._broker_settings = dict(broker_settings or {})
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout

        self.ingress = ""
        self.admin = ""
        self.endpoint_uris: list[str] = []

        self._state = "new"  # new -> starting -> running -> stopped
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: _Broker | None = None
        self._servers: list[grpc.aio.Server] = []
        self._admin_stub: admin_pb2_grpc.AdminStub | None = None
        self._admin_aio: grpc.aio.Channel | None = None
        self._lock = threading.Lock()
        self._sync_channels: list[grpc.Channel] = []
        self._aio_channels: list[tuple[grpc.aio.Channel, asyncio.AbstractEventLoop]] = []

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> DurableTestEnvironment:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.stop()
            return
        try:
            self.stop()
        except Exception:
            # Never hide why the test failed behind a failure to clean up after it.
            log.exception("stopping the test environment failed")

    async def __aenter__(self) -> DurableTestEnvironment:
        await self.start_async()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.stop_async()
            return
        try:
            await self.stop_async()
        except Exception:
            log.exception("stopping the test environment failed")

    def start(self) -> None:
        """Starts the broker and the services on a private event loop in a new thread.

        Returns once the services are registered and callable through `ingress`.

        Raises:
            TimeoutError: Not ready within `start_timeout` seconds.
            RuntimeError: The environment was already started.
            Exception: Whatever the broker, the endpoint or registration raised.
        """
        self._begin()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=self._run_loop, args=(loop,), name="durable-test-environment", daemon=True
        )
        self._loop, self._thread = loop, thread
        thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start_on_loop(), loop)
        try:
            future.result(timeout=self._start_timeout)
        except BaseException as e:
            future.cancel()
            try:
                self._shutdown_thread()
            except Exception:
                log.exception("cleaning up after a failed start failed")
            self._state = "stopped"
            if isinstance(e, concurrent.futures.TimeoutError):
                raise TimeoutError(
                    f"the test environment did not start within {self._start_timeout} s"
                ) from None
            raise
        self._state = "running"

    def stop(self) -> None:
        """Closes the channels handed out, stops the broker and the services, joins the thread.

        Idempotent. After it returns nothing listens on the environment's ports.

        Raises:
            TimeoutError: Not stopped within `stop_timeout` seconds.
            RuntimeError: Called on an environment started with `async with`.
        """
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        if self._thread is None:
            raise RuntimeError("this environment runs on your event loop: use stop_async()")
        self._state = "stopped"
        self._close_client_channels()
        self._shutdown_thread()

    async def start_async(self) -> None:
        """Starts the broker and the services on the running event loop.

        Raises:
            TimeoutError: Not ready within `start_timeout` seconds.
            RuntimeError: The environment was already started.
            Exception: Whatever the broker, the endpoint or registration raised.
        """
        self._begin()
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self._start_on_loop(), self._start_timeout)
        except BaseException as e:
            self._state = "stopped"
            if isinstance(e, TimeoutError):
                raise TimeoutError(
                    f"the test environment did not start within {self._start_timeout} s"
                ) from None
            raise
        self._state = "running"

    async def stop_async(self) -> None:
        """Closes the channels handed out and stops the broker and the services.

        Idempotent. After it returns nothing listens on the environment's ports.

        Raises:
            TimeoutError: Not stopped within `stop_timeout` seconds.
            RuntimeError: Called on an environment started with `with`.
        """
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        if self._thread is not None:
            raise RuntimeError("this environment runs on its own thread: use stop()")
        self._state = "stopped"
        self._close_client_channels()
        try:
            await asyncio.wait_for(self._stop_on_loop(), self._stop_timeout)
        except TimeoutError:
            raise TimeoutError(
                f"the test environment did not stop within {self._stop_timeout} s"
            ) from None

    def _begin(self) -> None:
        if self._state != "new":
            raise RuntimeError(
                "a DurableTestEnvironment starts once; create a new one (on the same "
                "`storage` path to resume its invocations)"
            )
        self._state = "starting"

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    def _shutdown_thread(self) -> None:
        """Stops everything on the private loop, then the loop, then joins its thread."""
        loop, thread = self._loop, self._thread
        assert loop is not None and thread is not None
        error: BaseException | None = None
        if not loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(self._stop_on_loop(), loop)
            try:
                future.result(timeout=self._stop_timeout)
            except concurrent.futures.TimeoutError:
                future.cancel()
                error = TimeoutError(
                    f"the test environment did not stop within {self._stop_timeout} s"
                )
            except BaseException as e:
                error = e
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(loop.stop)
        thread.join(self._stop_timeout)
        if thread.is_alive() and error is None:
            error = TimeoutError(
                f"the test environment's thread did not end within {self._stop_timeout} s"
            )
        if error is not None:
            raise error

    async def _start_on_loop(self) -> None:
        try:
            broker = _new_broker(self._data_dir, self._suspend_after, self._broker_settings)
            self._broker = broker
            await broker.start()
            self.ingress = f"{_HOST}:{broker.ingress_port}"
            self.admin = f"{_HOST}:{broker.admin_port}"
            self._admin_aio = grpc.aio.insecure_channel(self.admin)
            # Typed for the sync API; on an aio channel its methods return awaitables.
            self._admin_stub = admin_pb2_grpc.AdminStub(self._admin_aio)
            if self._services:
                await self._add_deployment_on_loop(self._services)
            for uri in self._endpoints:
                await self._register_on_loop(uri)
        except BaseException:
            await self._stop_on_loop()
            raise

    async def _stop_on_loop(self) -> None:
        """Stops whatever has started; idempotent. Raises the first error once all ran."""
        errors: list[BaseException] = []
        loop = asyncio.get_running_loop()
        with self._lock:
            own = [c for c, lp in self._aio_channels if lp is loop]
            self._aio_channels = [(c, lp) for c, lp in self._aio_channels if lp is not loop]
        if self._admin_aio is not None:
            own.append(self._admin_aio)
            self._admin_aio, self._admin_stub = None, None
        for channel in own:
            try:
                await channel.close(None)
            except Exception as e:
                errors.append(e)
        broker, self._broker = self._broker, None
        if broker is not None:
            try:
                await broker.stop(_STOP_GRACE)
            except Exception as e:
                errors.append(e)
        servers, self._servers = self._servers, []
        for server in servers:
            try:
                await server.stop(_STOP_GRACE)
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]

    # ----------------------------------------------------------------- channels

    def channel(self, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A blocking `grpc.Channel` to the ingress, for the generated `...Stub` classes.

        Closed when the environment stops. In async code, use `aio_channel()` instead: a
        blocking call made on the event loop the broker runs on raises `RuntimeError`.

        Args:
            options: Extra gRPC channel arguments.
        """
        return self._sync_channel(self._require_running().ingress, options)

    def admin_channel(self, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A blocking `grpc.Channel` to the admin API (`admin_pb2_grpc.AdminStub`).

        Closed when the environment stops.

        Args:
            options: Extra gRPC channel arguments.
        """
        return self._sync_channel(self._require_running().admin, options)

    def aio_channel(self, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """A `grpc.aio.Channel` to the ingress, bound to the running event loop.

        Call it from async code. An `async with` environment closes it when it stops; with
        a sync (`with`) environment, close it yourself before your loop ends, e.g.
        `async with env.aio_channel() as channel:`.

        Args:
            options: Extra gRPC channel arguments.

        Raises:
            RuntimeError: No event loop is running.
        """
        return self._aio_channel(self._require_running().ingress, options)

    def aio_admin_channel(self, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """A `grpc.aio.Channel` to the admin API, bound to the running event loop.

        Args:
            options: Extra gRPC channel arguments.

        Raises:
            RuntimeError: No event loop is running.
        """
        return self._aio_channel(self._require_running().admin, options)

    def _sync_channel(self, target: str, options: Sequence[tuple[str, Any]]) -> grpc.Channel:
        raw = grpc.insecure_channel(target, options=list(options))
        with self._lock:
            self._sync_channels.append(raw)
        return _GuardedChannel(raw, self)

    def _aio_channel(self, target: str, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "aio_channel() needs a running event loop; in sync code use channel()"
            ) from None
        channel = grpc.aio.insecure_channel(target, options=list(options))
        with self._lock:
            self._aio_channels.append((channel, loop))
        return channel

    def _close_client_channels(self) -> None:
        """Closes the sync channels, and the aio ones whose loops still run elsewhere.

        aio channels on the environment's own loop are closed by `_stop_on_loop`.
        """
        with self._lock:
            sync, self._sync_channels = self._sync_channels, []
            foreign = [(c, lp) for c, lp in self._aio_channels if lp is not self._loop]
            self._aio_channels = [(c, lp) for c, lp in self._aio_channels if lp is self._loop]
        for channel in sync:
            channel.close()
        for aio_channel, loop in foreign:
            if loop.is_running() and not loop.is_closed() and not _is_current(loop):
                with contextlib.suppress(RuntimeError):
                    asyncio.run_coroutine_threadsafe(aio_channel.close(None), loop)

    # ----------------------------------------------------------------- admin helpers

    def invocations(
        self,
        *,
        status: StatusFilter = None,
        service: str = "",
        method: str = "",
        key: str = "",
        limit: int = 0,
    ) -> list[invocation_pb2.Invocation]:
        """Invocations the broker knows, newest first, through the admin API.

        Args:
            status: Only this status: `"pending"`, `"running"`, `"suspended"`,
                `"backing-off"`, `"completed"` or an `invocation_pb2.InvocationStatus`.
            service: Only this service, fully qualified (`"flights.Flights"`).
            method: Only this method (`"Reserve"`).
            key: Only this virtual-object key.
            limit: At most this many (before the `method` filter); 0 for all.
        """
        return self._run_blocking(lambda: self._invocations(status, service, method, key, limit))

    async def invocations_async(
        self,
        *,
        status: StatusFilter = None,
        service: str = "",
        method: str = "",
        key: str = "",
        limit: int = 0,
    ) -> list[invocation_pb2.Invocation]:
        """`invocations()` for async code."""
        return await self._run_awaitable(
            lambda: self._invocations(status, service, method, key, limit)
        )

    def describe(self, invocation_id: str) -> admin_pb2.DescribeInvocationResponse:
        """One invocation and its journal, entry by entry.

        Args:
            invocation_id: The `inv_...` id (see `invocation_id_of`).

        Raises:
            grpc.RpcError: `NOT_FOUND` for an unknown id.
        """
        return self._run_blocking(lambda: self._describe(invocation_id))

    async def describe_async(self, invocation_id: str) -> admin_pb2.DescribeInvocationResponse:
        """`describe()` for async code."""
        return await self._run_awaitable(lambda: self._describe(invocation_id))

    def register(self, uri: str) -> admin_pb2.Deployment:
        """Registers a service endpoint running elsewhere (`"http://127.0.0.1:9101"`)."""
        return self._run_blocking(lambda: self._register_on_loop(uri))

    async def register_async(self, uri: str) -> admin_pb2.Deployment:
        """`register()` for async code."""
        return await self._run_awaitable(lambda: self._register_on_loop(uri))

    def add_deployment(self, services: Sequence[ServiceLike]) -> str:
        """Serves `services` on a new in-process endpoint and registers it.

        The new deployment takes new invocations of its services; invocations already in
        flight finish on the deployment they began on. Stopped with the environment.

        Args:
            services: Servicer instances or `durable.Service`s.

        Returns:
            The new endpoint's URI (also appended to `endpoint_uris`).
        """
        return self._run_blocking(lambda: self._add_deployment_on_loop(services))

    async def add_deployment_async(self, services: Sequence[ServiceLike]) -> str:
        """`add_deployment()` for async code."""
        return await self._run_awaitable(lambda: self._add_deployment_on_loop(services))

    async def _invocations(
        self, status: StatusFilter, service: str, method: str, key: str, limit: int
    ) -> list[invocation_pb2.Invocation]:
        request = admin_pb2.ListInvocationsRequest(
            status=_status_value(status), service=service, key=key, limit=limit
        )
        response: admin_pb2.ListInvocationsResponse = await self._admin().ListInvocations(
            request, timeout=_ADMIN_TIMEOUT
        )
        return [i for i in response.invocations if not method or i.method == method]

    async def _describe(self, invocation_id: str) -> admin_pb2.DescribeInvocationResponse:
        request = admin_pb2.DescribeInvocationRequest(invocation_id=invocation_id)
        response: admin_pb2.DescribeInvocationResponse = await self._admin().DescribeInvocation(
            request, timeout=_ADMIN_TIMEOUT
        )
        return response

    async def _register_on_loop(self, uri: str) -> admin_pb2.Deployment:
        request = admin_pb2.RegisterDeploymentRequest(uri=uri)
        deployment: admin_pb2.Deployment = await self._admin().RegisterDeployment(
            request, timeout=_ADMIN_TIMEOUT
        )
        return deployment

    async def _add_deployment_on_loop(self, services: Sequence[ServiceLike]) -> str:
        if isinstance(services, (Service, Servicer)):
            raise TypeError("`services` is a list: pass [MyServicer()], not MyServicer()")
        server, port = await create_server(list(services), f"{_HOST}:0")
        self._servers.append(server)
        uri = f"http://{_HOST}:{port}"
        await self._register_on_loop(uri)
        self.endpoint_uris.append(uri)
        return uri

    def _admin(self) -> Any:
        """The admin stub on the environment's loop (its methods return awaitables)."""
        if self._admin_stub is None:
            raise RuntimeError("the test environment is not running")
        return self._admin_stub

    # ----------------------------------------------------------------- plumbing

    def _require_running(self) -> DurableTestEnvironment:
        if self._state != "running":
            raise RuntimeError(
                f"the test environment is {self._state}: use it inside `with` / `async with`"
            )
        return self

    def _on_env_loop(self) -> bool:
        return self._loop is not None and _is_current(self._loop)

    def _run_blocking(self, make: Callable[[], Awaitable[T]]) -> T:
        """Runs `make()` on the environment's loop from another thread and waits for it."""
        loop = self._require_running()._loop
        assert loop is not None
        if _is_current(loop):
            raise RuntimeError(
                "a blocking helper called on the event loop the broker runs on would wait "
                "for itself forever; await its `..._async` form instead"
            )
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(make), loop)
        # Admin calls have their own deadline; this only bounds a wedged event loop.
        return future.result(timeout=2 * _ADMIN_TIMEOUT)

    async def _run_awaitable(self, make: Callable[[], Awaitable[T]]) -> T:
        """Awaits `make()` on the environment's loop, from that loop or any other."""
        loop = self._require_running()._loop
        assert loop is not None
        if _is_current(loop):
            return await make()
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(make), loop)
        return await asyncio.wrap_future(future)

    def __repr__(self) -> str:
        storage = self._data_dir or "memory"
        return (
            f"<DurableTestEnvironment {self._state} ingress={self.ingress or '-'} "
            f"admin={self.admin or '-'} storage={storage}>"
        )


def _is_current(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether `loop` is the loop running in the calling thread."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


async def _as_coroutine(make: Callable[[], Awaitable[T]]) -> T:
    return await make()
