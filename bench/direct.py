"""The floor: `benchsvc.Bench` on a plain `grpc.aio` server, no broker, no journal.

`python -m bench.direct --listen ADDR`. The handlers call the same logic as the durable
service (`bench.handlers`), and the server is configured like the SDK's, so the difference
between the two is what the broker and the durable protocol cost.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

import grpc
from benchsvc import benchsvc_pb2 as pb
from benchsvc import benchsvc_pb2_grpc
from durable import wire
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench import handlers


class DirectBench(benchsvc_pb2_grpc.BenchServicer):
    """`benchsvc.Bench` over plain gRPC."""

    async def Echo(
        self, request: pb.EchoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EchoResponse:
        return handlers.echo(request)

    async def Steps(
        self, request: pb.StepsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StepsResponse:
        total = sum(handlers.step(i) for i in range(request.steps))
        return pb.StepsResponse(steps=request.steps, total=total)


async def serve(address: str) -> None:
    """Serves on `address` until SIGTERM or SIGINT."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    benchsvc_pb2_grpc.add_BenchServicer_to_server(DirectBench(), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(address)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> None:
    """Parses `--listen` and serves."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.direct", description="The benchmark handler over plain gRPC."
    )
    parser.add_argument("--listen", default="127.0.0.1:9111", help="host:port to serve on")
    parser.add_argument("--log-level", default="WARNING", type=str.upper)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level)
    wire.run(serve(args.listen))


if __name__ == "__main__":
    main()
