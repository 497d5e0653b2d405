"""A private event loop in a daemon thread: where a `with` test environment runs, so that
plain (sync) tests can use it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class LoopThread:
    """An event loop running in a thread of its own until `close`.

    Args:
        name: The thread's name.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=_run_forever, args=(self.loop,), name=name, daemon=True
        )
        self._thread.start()

    def run(self, make: Callable[[], Awaitable[T]], timeout: float) -> T:
        """Runs `make()` on the loop and waits for its result.

        Raises:
            TimeoutError: Not done within `timeout` seconds (it is cancelled).
        """
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(make), self.loop)
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self, finish: Callable[[], Awaitable[None]], timeout: float, what: str) -> None:
        """Runs `finish()` on the loop, then stops the loop and joins the thread.

        Raises:
            TimeoutError: `finish()` or the thread took longer than `timeout`.
            BaseException: What `finish()` raised (after the thread has ended).
        """
        error: BaseException | None = None
        if not self.loop.is_closed():
            try:
                self.run(finish, timeout)
            except TimeoutError:
                error = TimeoutError(f"{what} did not stop within {timeout} s")
            except BaseException as e:
                error = e
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if self._thread.is_alive() and error is None:
            error = TimeoutError(f"{what}'s thread did not end within {timeout} s")
        if error is not None:
            raise error


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
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


async def _as_coroutine(make: Callable[[], Awaitable[T]]) -> T:
    return await make()
