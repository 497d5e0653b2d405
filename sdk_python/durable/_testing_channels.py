"""The channels `durable.testing` hands out: guarded against blocking the broker's loop,
and remembered so that they are closed when the environment stops."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import grpc


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


class GuardedChannel(grpc.Channel):
    """A sync channel whose calls fail fast on the environment's own event loop.

    The broker answers on that loop, so a blocking call made from it would wait for
    itself forever. (A wrapper rather than `grpc.intercept_channel`: grpcio 1.85 crashes
    when an intercepted channel is used after it was closed.)
    """

    def __init__(self, inner: grpc.Channel, on_env_loop: Callable[[], bool]) -> None:
        self._inner = inner
        self._on_env_loop = on_env_loop

    def _check(self, method: str) -> None:
        if self._on_env_loop():
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

    def __enter__(self) -> GuardedChannel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        self.close()
        return None


class ClientChannels:
    """The client channels an environment handed out, to close when it stops.

    Args:
        on_env_loop: Whether the caller runs on the environment's event loop, where a
            blocking call would wait for itself.
    """

    def __init__(self, on_env_loop: Callable[[], bool]) -> None:
        self._on_env_loop = on_env_loop
        self._lock = threading.Lock()
        self._sync: list[grpc.Channel] = []
        self._aio: list[tuple[grpc.aio.Channel, asyncio.AbstractEventLoop]] = []

    def sync(self, target: str, options: Sequence[tuple[str, Any]]) -> grpc.Channel:
        """A blocking channel to `target`, guarded against use on the environment's loop."""
        raw = grpc.insecure_channel(target, options=list(options))
        with self._lock:
            self._sync.append(raw)
        return GuardedChannel(raw, self._on_env_loop)

    def aio(self, target: str, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        """A `grpc.aio` channel to `target`, bound to the running loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "aio_channel() needs a running event loop; in sync code use channel()"
            ) from None
        channel = grpc.aio.insecure_channel(target, options=list(options))
        with self._lock:
            self._aio.append((channel, loop))
        return channel

    def take_on(self, loop: asyncio.AbstractEventLoop) -> list[grpc.aio.Channel]:
        """Forgets and returns the aio channels bound to `loop`, for it to close them."""
        with self._lock:
            own = [c for c, lp in self._aio if lp is loop]
            self._aio = [(c, lp) for c, lp in self._aio if lp is not loop]
        return own

    def close_elsewhere(self, env_loop: asyncio.AbstractEventLoop | None) -> None:
        """Closes the sync channels, and the aio ones whose loops still run elsewhere.

        aio channels on the environment's own loop are closed there (see `take_on`).
        """
        with self._lock:
            sync, self._sync = self._sync, []
            foreign = [(c, lp) for c, lp in self._aio if lp is not env_loop]
            self._aio = [(c, lp) for c, lp in self._aio if lp is env_loop]
        for channel in sync:
            channel.close()
        for aio_channel, loop in foreign:
            if loop.is_running() and not loop.is_closed() and not is_current(loop):
                with contextlib.suppress(RuntimeError):
                    asyncio.run_coroutine_threadsafe(aio_channel.close(None), loop)


def is_current(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether `loop` is the loop running in the calling thread."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
