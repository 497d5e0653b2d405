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

**Time skipping.** A test of a handler that sleeps an hour need not take an hour. With
`time_skipping=True`, durable time (sleeps, delayed sends, retry backoff, `with_timeout`
and `select` timers, retention, and `ctx.now()`) runs on a virtual clock: wall time plus
an offset. Whenever the broker is *idle* (no attempt running or queued for a slot, no
journal write pending or being carried out, checked twice a few milliseconds apart) and
a durable timer is pending, the clock jumps to that timer::

    with DurableTestEnvironment([Reminders()], time_skipping=True) as env:
        reminders = reminders_pb2_grpc.RemindersStub(env.channel())
        reminders.RemindTomorrow(request, timeout=10)  # sleeps 24 h: returns at once

With `time_skipping="manual"` the clock moves only with the wall time and with
`env.advance(seconds)` (`await env.advance_async(seconds)` in async tests), which fires
every timer due by then; use it to check what happens before and after a deadline.
`env.time()` reads the environment's clock. The auto mode jumps as soon as the broker is
idle, so a call still on its way from your test to the ingress may arrive after a timer
it was meant to precede; use the manual mode when that ordering matters. Retries of a
`ctx.run` inside one attempt (its `retry_policy=` delays) wait on the wall clock.

**Replaying recorded journals.** Before you deploy a change to a handler, check that it
still replays what the running code journaled: export an invocation's journal with
`brokerctl invocations export ID > inv.json` and replay it against the new code,
in-process and without side effects (calls, sends, sleeps and `ctx.run` results come from
the journal; the replay stops at the first step the journal does not hold)::

    from durable.testing import replay

    def test_new_checkout_replays_production_journals() -> None:
        result = replay(Path("journals/inv_1.json"), Checkout())
        assert result.ok, str(result)  # e.g. "... diverges at entry 3: the journal
        # records run 'charge', the new code produced call shop.Mail/Send"

`replay` returns a `ReplayResult`: `ok`, or the first `Divergence` (entry index, the
recorded command and the command the new code produced) or the error the handler raised.
An export that cannot be read raises `JournalFormatError` saying what is wrong.

This module imports the broker (`broker.server`) when an environment starts; importing
`durable` alone never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from durable.v1 import admin_pb2, invocation_pb2

from ._journal_export import JournalFormatError
from ._replay import Divergence, ReplayResult, replay, replay_async
from ._service import Service, Servicer
from ._testing_channels import ClientChannels, is_current
from ._testing_core import (
    ADMIN_TIMEOUT,
    EnvironmentCore,
    ServiceLike,
    StatusFilter,
    TimeSkipping,
)
from ._testing_thread import LoopThread

__all__ = [
    "INVOCATION_ID_HEADER",
    "Divergence",
    "DurableTestEnvironment",
    "JournalFormatError",
    "ReplayResult",
    "invocation_id_of",
    "replay",
    "replay_async",
]

log = logging.getLogger("durable.testing")

#: The response metadata key under which the ingress returns the invocation id.
INVOCATION_ID_HEADER = "invocation-id"

T = TypeVar("T")


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
        time_skipping: `False` (the default): durable time is the wall clock. `True`:
            durable time (sleeps, delayed sends, retry backoff, `with_timeout` and
            `select` timers, retention, `ctx.now()`) runs on a virtual clock that
            jumps to the next timer whenever the broker is idle (no attempt running or
            queued, no journal write pending), so a handler sleeping a day completes at
            once. `"manual"`: the same virtual clock, moved only by `advance` (and by
            the wall time that passes). See "Time skipping" in the module docstring.

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
        time_skipping: TimeSkipping = False,
    ) -> None:
        if isinstance(services, (Service, Servicer)):
            raise TypeError("`services` is a list: pass [MyServicer()], not MyServicer()")
        if suspend_after < 0:
            raise ValueError(f"suspend_after must be >= 0, got {suspend_after}")
        data_dir = None if isinstance(storage, str) and storage == "memory" else os.fspath(storage)
        self._core = EnvironmentCore(
            services, data_dir, suspend_after, endpoints, broker_settings or {}, time_skipping
        )
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._state = "new"  # new -> starting -> running -> stopped
        self._loop: asyncio.AbstractEventLoop | None = None
        # Only for `with`: the private loop's thread.
        self._thread: LoopThread | None = None
        self._channels = ClientChannels(self._on_env_loop)

    @property
    def ingress(self) -> str:
        """`host:port` of the broker's ingress (`""` until started)."""
        return self._core.ingress

    @property
    def admin(self) -> str:
        """`host:port` of the broker's admin API (`""` until started)."""
        return self._core.admin

    @property
    def endpoint_uris(self) -> list[str]:
        """URIs of the endpoints this environment serves in-process."""
        return self._core.endpoint_uris

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
        with _cleanup_after(exc):
            self.stop()

    async def __aenter__(self) -> DurableTestEnvironment:
        await self.start_async()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with _cleanup_after(exc):
            await self.stop_async()

    def start(self) -> None:
        """Starts the broker and the services on a private event loop in a new thread.

        Returns once the services are registered and callable through `ingress`.

        Raises:
            TimeoutError: Not ready within `start_timeout` seconds.
            RuntimeError: The environment was already started.
            Exception: Whatever the broker, the endpoint or registration raised.
        """
        self._begin()
        self._thread = LoopThread("durable-test-environment")
        self._loop = self._thread.loop
        try:
            # `_started` has its own deadline; this one only bounds a wedged event loop.
            self._thread.run(self._started, self._start_timeout + self._stop_timeout)
        except BaseException as e:
            try:
                self._thread.close(self._stopped, self._stop_timeout, "the test environment")
            except Exception:
                log.exception("cleaning up after a failed start failed")
            self._state = "stopped"
            if isinstance(e, TimeoutError):
                raise self._start_timed_out() from None
            raise
        self._state = "running"

    def stop(self) -> None:
        """Closes the channels handed out, stops the broker and the services, joins the thread.

        Idempotent. After it returns nothing listens on the environment's ports.

        Raises:
            TimeoutError: Not stopped within `stop_timeout` seconds.
            RuntimeError: Called on an environment started with `async with`.
        """
        if not self._stopping(sync=True):
            return
        assert self._thread is not None
        self._thread.close(self._stopped, self._stop_timeout, "the test environment")

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
            await self._started()
        except BaseException:
            self._state = "stopped"
            raise
        self._state = "running"

    async def stop_async(self) -> None:
        """Closes the channels handed out and stops the broker and the services.

        Idempotent. After it returns nothing listens on the environment's ports.

        Raises:
            TimeoutError: Not stopped within `stop_timeout` seconds.
            RuntimeError: Called on an environment started with `with`.
        """
        if self._stopping(sync=False):
            await self._stopped()

    def _begin(self) -> None:
        if self._state != "new":
            raise RuntimeError(
                "a DurableTestEnvironment starts once; create a new one (on the same "
                "`storage` path to resume its invocations)"
            )
        self._state = "starting"

    def _stopping(self, sync: bool) -> bool:
        """Whether there is something to stop; closes the channels outside its loop."""
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return False
        if sync and self._thread is None:
            raise RuntimeError("this environment runs on your event loop: use stop_async()")
        if not sync and self._thread is not None:
            raise RuntimeError("this environment runs on its own thread: use stop()")
        self._state = "stopped"
        self._channels.close_elsewhere(self._loop)
        return True

    def _start_timed_out(self) -> TimeoutError:
        return TimeoutError(f"the test environment did not start within {self._start_timeout} s")

    async def _started(self) -> None:
        """Starts everything on the running loop (the environment's), within the deadline."""
        try:
            await asyncio.wait_for(self._core.start(), self._start_timeout)
        except TimeoutError:
            raise self._start_timed_out() from None

    async def _stopped(self) -> None:
        """Stops everything on the running loop (the environment's), within the deadline."""
        try:
            await asyncio.wait_for(self._stop_on_loop(), self._stop_timeout)
        except TimeoutError:
            raise TimeoutError(
                f"the test environment did not stop within {self._stop_timeout} s"
            ) from None

    async def _stop_on_loop(self) -> None:
        """Closes the aio channels on this loop, then stops the core; raises the first error."""
        errors: list[BaseException] = []
        for channel in self._channels.take_on(asyncio.get_running_loop()):
            try:
                await channel.close(None)
            except Exception as e:
                errors.append(e)
        try:
            await self._core.stop()
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
        return self._channels.sync(self._require_running().ingress, options)

    def admin_channel(self, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A blocking `grpc.Channel` to the admin API (`admin_pb2_grpc.AdminStub`).

        Closed when the environment stops.

        Args:
            options: Extra gRPC channel arguments.
        """
        return self._channels.sync(self._require_running().admin, options)

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
        return self._channels.aio(self._require_running().ingress, options)

    def aio_admin_channel(self, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """A `grpc.aio.Channel` to the admin API, bound to the running event loop.

        Args:
            options: Extra gRPC channel arguments.

        Raises:
            RuntimeError: No event loop is running.
        """
        return self._channels.aio(self._require_running().admin, options)

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
        return self._sync(
            lambda: self.invocations_async(
                status=status, service=service, method=method, key=key, limit=limit
            )
        )

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
        return await self._on_loop(
            lambda: self._core.invocations(status, service, method, key, limit)
        )

    def describe(self, invocation_id: str) -> admin_pb2.DescribeInvocationResponse:
        """One invocation and its journal, entry by entry.

        Args:
            invocation_id: The `inv_...` id (see `invocation_id_of`).

        Raises:
            grpc.RpcError: `NOT_FOUND` for an unknown id.
        """
        return self._sync(lambda: self.describe_async(invocation_id))

    async def describe_async(self, invocation_id: str) -> admin_pb2.DescribeInvocationResponse:
        """`describe()` for async code."""
        return await self._on_loop(lambda: self._core.describe(invocation_id))

    def register(self, uri: str) -> admin_pb2.Deployment:
        """Registers a service endpoint running elsewhere (`"http://127.0.0.1:9101"`)."""
        return self._sync(lambda: self.register_async(uri))

    async def register_async(self, uri: str) -> admin_pb2.Deployment:
        """`register()` for async code."""
        return await self._on_loop(lambda: self._core.register(uri))

    def add_deployment(self, services: Sequence[ServiceLike]) -> str:
        """Serves `services` on a new in-process endpoint and registers it.

        The new deployment takes new invocations of its services; invocations already in
        flight finish on the deployment they began on. Stopped with the environment.

        Args:
            services: Servicer instances or `durable.Service`s.

        Returns:
            The new endpoint's URI (also appended to `endpoint_uris`).
        """
        return self._sync(lambda: self.add_deployment_async(services))

    async def add_deployment_async(self, services: Sequence[ServiceLike]) -> str:
        """`add_deployment()` for async code."""
        return await self._on_loop(lambda: self._core.add_deployment(services))

    # ----------------------------------------------------------------- time skipping

    def advance(self, seconds: float) -> None:
        """Moves the virtual clock `seconds` forward and fires every durable timer that
        became due (in due order). Returns once they fired; what the handlers then do
        happens on the broker's loop, so poll for its effects with a deadline.

        Raises:
            RuntimeError: The environment was created without `time_skipping`.
            ValueError: `seconds` is negative.
        """
        self._sync(lambda: self.advance_async(seconds))

    async def advance_async(self, seconds: float) -> None:
        """`advance()` for async code."""
        await self._on_loop(lambda: self._core.advance(seconds))

    def time(self) -> float:
        """Seconds since the epoch on the environment's clock: the wall clock, or the
        virtual one with `time_skipping` (what `ctx.now()` reads)."""
        return self._core.clock()

    # ----------------------------------------------------------------- plumbing

    def _require_running(self) -> DurableTestEnvironment:
        if self._state != "running":
            raise RuntimeError(
                f"the test environment is {self._state}: use it inside `with` / `async with`"
            )
        return self

    def _on_env_loop(self) -> bool:
        return self._loop is not None and is_current(self._loop)

    def _sync(self, make: Callable[[], Awaitable[T]]) -> T:
        """The sync form of an `..._async` helper: runs `make()` on the environment's loop
        from another thread and waits for it."""
        loop = self._require_running()._loop
        assert loop is not None
        if is_current(loop):
            raise RuntimeError(
                "a blocking helper called on the event loop the broker runs on would wait "
                "for itself forever; await its `..._async` form instead"
            )
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(make), loop)
        # Admin calls have their own deadline; this only bounds a wedged event loop.
        return future.result(timeout=2 * ADMIN_TIMEOUT)

    async def _on_loop(self, make: Callable[[], Awaitable[T]]) -> T:
        """Awaits `make()` on the environment's loop, from that loop or any other."""
        loop = self._require_running()._loop
        assert loop is not None
        if is_current(loop):
            return await make()
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(make), loop)
        return await asyncio.wrap_future(future)

    def __repr__(self) -> str:
        storage = self._core.data_dir or "memory"
        return (
            f"<DurableTestEnvironment {self._state} ingress={self.ingress or '-'} "
            f"admin={self.admin or '-'} storage={storage}>"
        )


@contextlib.contextmanager
def _cleanup_after(failure: BaseException | None) -> Iterator[None]:
    """Stopping after a test: its errors raise, unless the test itself already failed."""
    if failure is None:
        yield
        return
    try:
        yield
    except Exception:
        # Never hide why the test failed behind a failure to clean up after it.
        log.exception("stopping the test environment failed")


async def _as_coroutine(make: Callable[[], Awaitable[T]]) -> T:
    return await make()
