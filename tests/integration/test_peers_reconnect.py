"""A forwarded call reaches a partition's process that came back on the same port a
moment ago, instead of failing UNAVAILABLE while its channel waits out the reconnect
backoff of the time the process was down (a CI run saw it after a node's restart)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import grpc
import pytest

from broker.cluster.directory import Where
from broker.cluster.peers import Peers
from tests.support import free_port


class _Fixed:
    """A partition that stays at one address (as a `--workers` worker's does)."""

    count = 1

    def __init__(self, address: str) -> None:
        self.address = address

    async def ingress(self, partition: int, wait: float | None = None) -> str:
        return self.address

    async def moved(self, partition: int, address: str) -> bool:
        return False


async def _echo_server(address: str) -> grpc.aio.Server:
    async def echo(body: bytes, context: Any) -> bytes:
        return body

    handler = grpc.method_handlers_generic_handler(
        "t.T", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(address)
    await server.start()
    return server


async def _send(channel: grpc.aio.Channel) -> bytes:
    call = channel.unary_unary("/t.T/Echo", None, None)(b"ping", timeout=5)
    return cast(bytes, await call)


def test_a_call_reaches_a_process_back_on_its_port() -> None:
    async def scenario() -> None:
        address = f"127.0.0.1:{free_port()}"
        peers = Peers(cast(Where, _Fixed(address)), 1024)
        # Nobody there: the call fails (bounded), and the channel backs off.
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as down:
            await peers.call(0, _send)
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 10
        # The process is back on its port: the next call goes through at once.
        server = await _echo_server(address)
        try:
            assert await peers.call(0, _send) == b"ping"
        finally:
            await server.stop(None)

    asyncio.run(scenario())
