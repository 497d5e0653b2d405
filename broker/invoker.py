"""The invoker: one bidirectional stream to a service endpoint per attempt.

It sends the start message (with the journal) once everything the journal shows is
durable, forwards completions as the partition releases them, and reports what the
endpoint did (`core.events`) through the one callback it is given. It decides nothing
itself and knows nothing of the partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from durable.v1 import protocol_pb2, protocol_pb2_grpc

from . import codes
from .core.actions import StartAttempt
from .core.events import AttemptEvent, Ended, Failed, Proposed, RanResult, Suspended
from .core.model import Result
from .multiplex import Connection, Linger, Streams
from .registry import Deployment, Registry
from .security import ENDPOINT_SECRET_HEADER
from .storage.kv import StoreUnavailable

# Told what an attempt did: (invocation id, attempt number, event); answers why the
# event fails the attempt, if it does.
Report = Callable[[str, int, AttemptEvent], str | None]
# An object's state as stored, read once the attempt's start barrier passed.
ReadState = Callable[[str, str, str], dict[str, bytes]]

log = logging.getLogger("broker.invoker")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# The largest start message: what the stream's message limit leaves after the frame.
START_LIMIT = MAX_MESSAGE_BYTES - 1024


class StartTooLarge(Exception):
    """An attempt's start message cannot fit in one message to the endpoint: no attempt
    of the invocation can ever start (the journal only grows)."""


class Attempt:
    """One attempt's outgoing half: completions wait here until the stream takes them."""

    def __init__(self, number: int, ready: asyncio.Future[None]) -> None:
        self.number = number
        self.ready = ready
        self.queue: asyncio.Queue[protocol_pb2.InvokeRequest | None] = asyncio.Queue()
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        # Once set, completions go straight to the stream instead of the queue.
        self._sink: Callable[[protocol_pb2.InvokeRequest], object] | None = None

    def send_completion(self, index: int, result: Result) -> None:
        """Queues a completion for the endpoint (ignored once the attempt ended)."""
        if not self.closed:
            message = protocol_pb2.InvokeRequest(
                completion=protocol_pb2.CompletionMessage(entry_index=index, result=result)
            )
            if self._sink is not None:
                self._sink(message)
            else:
                self.queue.put_nowait(message)

    def forward_to(self, sink: Callable[[protocol_pb2.InvokeRequest], object]) -> None:
        """Sends what is queued, and every later completion, to `sink`."""
        while not self.queue.empty():
            message = self.queue.get_nowait()
            if message is not None:
                sink(message)
        self._sink = sink

    def close(self) -> None:
        """Ends the request stream."""
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)


def endpoint_streams(endpoint_secret: str | None, linger: float = 0.0) -> Streams:
    """Channels and multiplexed streams to endpoints, sending the secret with every call
    for endpoints that require it; frames wait up to `linger` seconds while the event loop
    is saturated (`Linger`)."""
    metadata = ((ENDPOINT_SECRET_HEADER, endpoint_secret),) if endpoint_secret else ()
    return Streams(metadata, MAX_MESSAGE_BYTES, Linger(linger))


class Invoker:
    """Opens attempt streams; keeps one channel per endpoint.

    Args:
        registry: Where an attempt's deployment is looked up.
        barrier: A future of "everything submitted so far is durable".
        prior_barrier: A future of "every batch before the latest one is durable", for
            an early start that reads state (`StartAttempt.early`).
        report: Where what the endpoint did goes.
        read_state: The object's state for an attempt (invocation id, service, key),
            added to a keyed attempt's start.
        streams: The process's channels and multiplexed streams, when its partitions
            share them (a worker, a cluster node); by default the invoker's own.
        linger: For the invoker's own streams: how long frames may wait (`Linger`).
    """

    def __init__(
        self,
        registry: Registry,
        barrier: Callable[[], asyncio.Future[None]],
        prior_barrier: Callable[[], asyncio.Future[None]],
        report: Report,
        read_state: ReadState,
        endpoint_secret: str | None = None,
        max_concurrency: int = 0,
        inactivity_timeout: float = 600.0,
        unary_first: bool = True,
        multiplex: bool = True,
        streams: Streams | None = None,
        linger: float = 0.0,
    ) -> None:
        self._registry = registry
        self._barrier = barrier
        self._prior_barrier = prior_barrier
        self._report = report
        self._read_state = read_state
        # The attempt running now, by invocation id.
        self._attempts: dict[str, Attempt] = {}
        # Per deployment: attempts beyond the limit wait here, in arrival order.
        self._max_concurrency = max_concurrency
        self._inactivity_timeout = inactivity_timeout
        self._unary_first = unary_first
        self._multiplex = multiplex
        self._no_unary: set[str] = set()
        self._slots: dict[str, asyncio.Semaphore] = {}
        # Shared by every partition of the process when given; else this invoker's own.
        self._owns_streams = streams is None
        self._streams = streams or endpoint_streams(endpoint_secret, linger)
        self._tasks: set[asyncio.Task[None]] = set()
        # Set by `quiesce`: this process is about to stop serving the partition.
        self._quiescing = False

    @property
    def streams(self) -> Streams | None:
        """The invoker's own streams; None when they are shared with other partitions."""
        return self._streams if self._owns_streams else None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Sent with every call to an endpoint, for endpoints that require it."""
        return self._streams.metadata

    def stub(self, uri: str) -> protocol_pb2_grpc.ServiceEndpointStub:
        """The (cached) stub for an endpoint."""
        return self._streams.stub(uri)

    def new_channel(self, uri: str) -> grpc.aio.Channel:
        """A channel of its own to an endpoint, which the caller closes: one that knows
        nothing of earlier failures (a registration right after the endpoint restarted
        must not wait out the cached channel's reconnect backoff)."""
        return self._streams.new_channel(uri, fresh=True)

    @property
    def in_flight(self) -> int:
        """How many attempts are running now."""
        return len(self._attempts)

    def start(self, action: StartAttempt) -> None:
        """Begins an attempt; the stream opens once the journal it carries is durable,
        or for an `early` one, once the state it reads is (at once without state).
        Once quiescing, nothing starts: the partition's next server (a restarted broker,
        the next cluster leader) starts it when it recovers the invocation."""
        if self._quiescing:
            return
        if not action.early:
            ready = self._barrier()
        elif action.start.key:
            ready = self._prior_barrier()
        else:
            ready = asyncio.get_running_loop().create_future()
            ready.set_result(None)
        attempt = Attempt(action.attempt, ready)
        self._attempts[action.invocation_id] = attempt
        attempt.task = asyncio.create_task(
            self._run(action.invocation_id, attempt, action.start, action.deployment_id)
        )
        self._tasks.add(attempt.task)
        attempt.task.add_done_callback(self._tasks.discard)

    def _current(self, invocation_id: str, number: int) -> Attempt | None:
        attempt = self._attempts.get(invocation_id)
        return attempt if attempt is not None and attempt.number == number else None

    def send_completion(self, invocation_id: str, number: int, index: int, result: Result) -> None:
        """Hands a durable completion to attempt `number` (dropped if it has ended)."""
        attempt = self._current(invocation_id, number)
        if attempt is not None:
            attempt.send_completion(index, result)

    def abandon(self, invocation_id: str, number: int) -> None:
        """Stops attempt `number` now: its stream is cancelled."""
        attempt = self._current(invocation_id, number)
        if attempt is not None:
            del self._attempts[invocation_id]
            attempt.close()
            if attempt.task is not None:
                attempt.task.cancel()

    def forget(self, deployment_id: str) -> None:
        """Lets go of a removed deployment's multiplexed stream: it closes once the
        attempts still on it (after a forced removal) have ended."""
        self._streams.forget(deployment_id)

    async def quiesce(self, timeout: float) -> int:
        """Starts no more attempts and waits up to `timeout` seconds for the running ones
        to end; returns how many still run. The process must stop serving the partition
        afterwards (a graceful shutdown, a cluster handover).

        An attempt cut short runs again from its journal wherever the partition goes on,
        and a side effect it was in the middle of runs a second time; most attempts end
        within milliseconds, so a moment's wait spares them that.
        """
        self._quiescing = True
        running = [t for t in self._tasks if not t.done()]
        if running and timeout > 0:
            await asyncio.wait(running, timeout=timeout)
        return sum(1 for t in self._tasks if not t.done())

    async def close(self) -> None:
        """Abandons in-flight attempts (they resume after a restart; on a shared stream
        the endpoint is told to stop each) and closes this invoker's own streams."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._owns_streams:
            await self._streams.close()

    async def _run(
        self,
        invocation_id: str,
        attempt: Attempt,
        start: protocol_pb2.StartMessage,
        deployment_id: str,
    ) -> None:
        try:
            deployment = self._registry.deployment(deployment_id)
            if deployment is None:
                failed = Failed(f"deployment {deployment_id} is not registered")
                self._report(invocation_id, attempt.number, failed)
                return
            outcome = _Outcome()
            slot: contextlib.AbstractAsyncContextManager[Any] = contextlib.nullcontext()
            if self._max_concurrency > 0:
                slot = self._slots.setdefault(
                    deployment.id, asyncio.Semaphore(self._max_concurrency)
                )
            async with slot:
                await self._attempt(invocation_id, attempt, start, deployment, outcome)
            if outcome.error:
                failed = Failed(
                    outcome.error,
                    outcome.retry_after,
                    outcome.pause,
                    outcome.non_determinism,
                    outcome.terminal_code,
                )
                self._report(invocation_id, attempt.number, failed)
        finally:
            if self._attempts.get(invocation_id) is attempt:
                del self._attempts[invocation_id]

    async def _attempt(
        self,
        invocation_id: str,
        attempt: Attempt,
        start: protocol_pb2.StartMessage,
        deployment: Deployment,
        outcome: _Outcome,
    ) -> None:
        call: Any = None
        try:
            if self._multiplex and deployment.multiplex and not deployment.request_response:
                await self._multiplexed(invocation_id, attempt, start, deployment, outcome)
            elif self._unary(deployment, start):
                await self._ready(attempt, start)
                reply = await self.stub(deployment.uri).InvokeOnce(  # type: ignore[misc]
                    protocol_pb2.InvokeRequest(start=start),
                    metadata=self.metadata,
                    timeout=self._inactivity_timeout,
                )
                if reply is None:  # grpc.aio hands over None for a reply it cannot parse
                    outcome.error = (
                        "protocol violation: the endpoint's InvokeOnce reply does not parse "
                        "as an InvokeOnceResponse"
                    )
                else:
                    for response in reply.messages:
                        if self._handle(invocation_id, attempt, response, outcome):
                            break
                    else:
                        outcome.error = "the endpoint's reply did not end the attempt"
            else:
                # Ready before the call opens: a start too large fails here, where a
                # failure inside the request iterator would reach nobody.
                await self._ready(attempt, start)

                async def requests() -> AsyncIterator[protocol_pb2.InvokeRequest]:
                    yield protocol_pb2.InvokeRequest(start=start)
                    while (message := await attempt.queue.get()) is not None:
                        yield message

                # The generated stubs are typed for the sync API; this is a grpc.aio channel.
                call = self.stub(deployment.uri).Invoke(
                    requests(),  # type: ignore[arg-type]
                    metadata=self.metadata,
                )
                # A watchdog rather than a timeout per read: it costs nothing per message.
                watchdog = _Watchdog(self._inactivity_timeout, call.cancel)
                try:
                    async for response in call:
                        watchdog.reset()
                        if self._handle(invocation_id, attempt, response, outcome):
                            break
                    else:
                        outcome.error = "the endpoint closed the stream before ending the attempt"
                except (asyncio.CancelledError, grpc.aio.AioRpcError):
                    if not watchdog.fired:
                        raise
                    outcome.error = (
                        f"the endpoint sent nothing for {self._inactivity_timeout:g}s "
                        "(--inactivity-timeout); attempt abandoned"
                    )
                finally:
                    watchdog.stop()
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED and not deployment.request_response:
                self._no_unary.add(deployment.id)  # an endpoint that only streams
            outcome.error = f"call to {deployment.uri} failed: {e.code().name}: {e.details()}"
        except StartTooLarge as e:
            outcome.error = str(e)
            outcome.terminal_code = codes.RESOURCE_EXHAUSTED
        except StoreUnavailable as e:
            # The journal cannot be written (a full disk, or a cluster node that lost
            # the partition's lead): the attempt stops; it resumes from its journal.
            log.warning("invocation %s: attempt stopped: %s", invocation_id, e)
            outcome.error = f"broker error driving the attempt: {e!r}"
        except Exception as e:
            log.exception("invocation %s: attempt crashed", invocation_id)
            outcome.error = f"broker error driving the attempt: {e!r}"
        finally:
            attempt.close()
            if call is not None:
                await self._finish(call, clean=outcome.error is None)

    def _connection(self, deployment: Deployment) -> Connection:
        """The deployment's multiplexed stream, opened anew if the last one ended."""
        return self._streams.connection(deployment.id, deployment.uri)

    async def _multiplexed(
        self,
        invocation_id: str,
        attempt: Attempt,
        start: protocol_pb2.StartMessage,
        deployment: Deployment,
        outcome: _Outcome,
    ) -> None:
        """Drives the attempt over the deployment's shared stream.

        Messages are handled as the stream's reader delivers them, so an attempt costs
        one wake-up of this coroutine at its end, not one per message.
        """
        await self._ready(attempt, start)
        connection = self._connection(deployment)
        over = asyncio.get_running_loop().create_future()

        def finish(error: str | None = None) -> None:
            if error is not None and outcome.error is None:
                outcome.error = error
            if not over.done():
                over.set_result(None)

        def receive(message: protocol_pb2.InvokeResponse | str) -> None:
            if over.done():
                return
            if isinstance(message, str):
                finish(message)
                return
            watchdog.reset()
            try:
                if self._handle(invocation_id, attempt, message, outcome):
                    finish()
            except StoreUnavailable as e:
                log.warning("invocation %s: attempt stopped: %s", invocation_id, e)
                finish(f"broker error driving the attempt: {e!r}")
            except Exception as e:
                log.exception("invocation %s: attempt crashed", invocation_id)
                finish(f"broker error driving the attempt: {e!r}")

        watchdog = _Watchdog(
            self._inactivity_timeout,
            lambda: finish(
                f"the endpoint sent nothing for {self._inactivity_timeout:g}s "
                "(--inactivity-timeout); attempt abandoned"
            ),
        )
        attempt_id = connection.open(receive)
        try:
            refused = connection.send(attempt_id, protocol_pb2.InvokeRequest(start=start))
            if refused is not None:
                finish(refused)
            attempt.forward_to(lambda m: connection.send(attempt_id, m))
            await over
        finally:
            watchdog.stop()
            connection.release(attempt_id, abandon=not outcome.ended_by_endpoint)

    def _unary(self, deployment: Deployment, start: protocol_pb2.StartMessage) -> bool:
        """Whether this attempt is one unary InvokeOnce rather than a stream.

        Request/response endpoints always are. With unary-first, so is the first attempt
        of a fresh invocation on a streaming endpoint: most handlers (a state update, a
        quick reply) finish in it at a fraction of a stream's cost, and one that must wait
        simply suspends and continues on a stream.
        """
        if deployment.request_response:
            return True
        return (
            self._unary_first
            and deployment.id not in self._no_unary
            and start.attempt == 1
            and len(start.journal) == 1
        )

    async def _finish(self, call: Any, clean: bool) -> None:
        """Ends the stream: after a clean end, let it complete (both sides are done; a
        cancel would cost grpc a formatted traceback); otherwise cancel it."""
        if clean:
            try:
                await asyncio.wait_for(call.code(), timeout=5)
                return
            except (TimeoutError, asyncio.CancelledError, grpc.aio.AioRpcError):
                pass
        call.cancel()

    async def _ready(self, attempt: Attempt, start: protocol_pb2.StartMessage) -> None:
        """Waits until the journal the start carries is durable, then adds the state.

        Raises:
            StartTooLarge: the start cannot be sent, now or ever.
        """
        await attempt.ready
        if start.key:
            start.state.update(self._read_state(start.invocation_id, start.service, start.key))
        size = start.ByteSize()
        if size > START_LIMIT:
            raise StartTooLarge(
                f"the journal and state an attempt starts from are {size} bytes, over the "
                f"{START_LIMIT}-byte limit of a message to the endpoint: it cannot be "
                "resumed; keep what it journals (side effects' results, calls' requests "
                "and results) smaller"
            )

    def _handle(
        self,
        invocation_id: str,
        attempt: Attempt,
        response: protocol_pb2.InvokeResponse | None,
        outcome: _Outcome,
    ) -> bool:
        """Reports one message of the endpoint's; True when the attempt is over."""
        if response is None:  # grpc.aio hands over None for a frame it cannot parse
            outcome.error = (
                "protocol violation: the endpoint sent a frame that does not parse as an "
                "InvokeResponse"
            )
            return True
        report = functools.partial(self._report, invocation_id, attempt.number)
        kind = response.WhichOneof("message")
        if kind == "entry":
            outcome.error = report(Proposed(response.entry.index, response.entry.entry))
        elif kind == "run_result":
            r = response.run_result
            outcome.error = report(RanResult(r.entry_index, r.result))
        elif kind == "suspension":
            outcome.error = report(Suspended(tuple(response.suspension.waiting_on)))
            outcome.ended_by_endpoint = True
            return True
        elif kind == "error":
            e = response.error
            marked = e.non_determinism and not e.message.startswith("non-determinism")
            prefix = "non-determinism: " if marked else ""
            outcome.error = f"{prefix}{e.message}"
            if e.retry_after_ms:
                outcome.retry_after = e.retry_after_ms / 1000
            outcome.pause = e.pause
            outcome.non_determinism = e.non_determinism
            outcome.ended_by_endpoint = True
            return True
        elif kind == "end":
            outcome.error = report(Ended())
            outcome.ended_by_endpoint = True
            return True
        else:
            outcome.error = "protocol violation: an empty message from the endpoint"
        return outcome.error is not None


class _Watchdog:
    """Calls `expire` unless reset within `timeout` seconds.

    A reset only records the time; the one timer re-arms itself for what is left, so
    each message costs an attribute write, not a timer.
    """

    def __init__(self, timeout: float, expire: Callable[[], object]) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._expire = expire
        self._last = self._loop.time()
        self.fired = False
        self._handle = self._loop.call_later(timeout, self._check)

    def _check(self) -> None:
        left = self._last + self._timeout - self._loop.time()
        if left > 0:
            self._handle = self._loop.call_later(left, self._check)
            return
        self.fired = True
        self._expire()

    def reset(self) -> None:
        """Restarts the countdown."""
        self._last = self._loop.time()

    def stop(self) -> None:
        """Stops watching."""
        self._handle.cancel()


class _Outcome:
    """How an attempt ended, when it did not end well."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.retry_after: float | None = None
        self.pause = False
        self.non_determinism = False
        # Set when no attempt can ever succeed (see `StartTooLarge`).
        self.terminal_code = 0
        # The endpoint sent its last message for the attempt (end, suspension, error):
        # it needs no word to stop.
        self.ended_by_endpoint = False
