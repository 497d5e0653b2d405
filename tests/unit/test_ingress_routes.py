"""The ingress's handlers per path: made once, bounded, the broker's own paths declined."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
import pytest

from broker.ingress import router
from broker.ingress.router import Routes
from broker.interceptors import ErrorStatuses, fit_details
from broker.storage import StorageError, StoreUnavailable


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def _unary(handler: Any) -> Any:
    """A handler's coroutine function, untyped: the tests call it with stand-ins."""
    return handler.unary_unary


async def _echo(service: str, method: str, body: bytes, context: Any) -> bytes:
    return f"{service}/{method}:".encode() + body


def test_a_path_gets_one_handler_that_serves_its_service_and_method() -> None:
    routes = Routes(_echo)
    first = cast(Any, routes.handler(_Details("/trips.Trips/Reserve")))
    assert first is not None
    assert routes.handler(_Details("/trips.Trips/Reserve")) is first
    other = cast(Any, routes.handler(_Details("/flights.Flights/Get")))
    assert other is not None and other is not first
    assert asyncio.run(_unary(first)(b"x", None)) == b"trips.Trips/Reserve:x"
    assert asyncio.run(_unary(other)(b"y", None)) == b"flights.Flights/Get:y"
    for builtin in ("/grpc.health.v1.Health/Check", "/durable.v1.Ingress/Attach"):
        assert routes.handler(_Details(builtin)) is None


def test_the_handlers_kept_stay_bounded_whatever_paths_callers_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(router, "MAX_ROUTES", 8)
    routes = Routes(_echo)
    for n in range(100):
        assert routes.handler(_Details(f"/s.S/M{n}")) is not None
    assert len(routes._handlers) <= 8


class _Context:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)


def test_the_storage_interceptor_wraps_each_handler_once_and_maps_its_errors() -> None:
    async def failing(request: bytes, context: Any) -> bytes:
        if request == b"down":
            raise StoreUnavailable("the store is reopening")
        raise StorageError("the data dir is damaged")

    handler = grpc.unary_unary_rpc_method_handler(failing)
    interceptor = ErrorStatuses()

    async def continuation(details: grpc.HandlerCallDetails) -> Any:
        return handler

    async def scenario() -> tuple[_Context, _Context]:
        wrapped = cast(Any, await interceptor.intercept_service(continuation, _Details("/s.S/M")))
        again = await interceptor.intercept_service(continuation, _Details("/s.S/M"))
        assert again is wrapped
        down, damaged = _Context(), _Context()
        await _unary(wrapped)(b"down", down)
        await _unary(wrapped)(b"damaged", damaged)
        return down, damaged

    down, damaged = asyncio.run(scenario())
    assert down.aborted == (grpc.StatusCode.UNAVAILABLE, "the store is reopening; retry later")
    assert damaged.aborted == (grpc.StatusCode.DATA_LOSS, "the data dir is damaged")


def _header_size(details: str) -> int:
    """`details` as grpc percent-encodes it for the `grpc-message` header."""
    return sum(1 if " " <= c <= "~" and c != "%" else 3 * len(c.encode()) for c in details)


@pytest.mark.parametrize("text", ["a" * 20_000, "é" * 20_000, "%" * 20_000, "a€😀" * 5000])
def test_a_long_status_message_is_cut_to_fit_its_header(text: str) -> None:
    fitted = fit_details(text, limit=6000)
    assert _header_size(fitted) <= 6000
    kept = fitted[: fitted.index(" [... ")]
    assert text.startswith(kept)
    assert _header_size(fitted) > 5900  # the budget used, not thrown away
    assert fitted.endswith(
        f" [... {len(text) - len(kept)} more characters cut to fit a gRPC status]"
    )


def test_a_message_that_fits_is_left_alone() -> None:
    assert fit_details("no invocation 'inv_x'") == "no invocation 'inv_x'"
    exactly = "é" * 1000  # two UTF-8 bytes, each sent as %XX: 6000 header bytes
    assert fit_details(exactly, limit=6000) == exactly
