"""The durable `benchsvc.Bench` service: `python -m bench.service --listen ADDR`.

`Echo` is the trivial handler of the `trivial` scenario; `Steps` runs a loop of
`ctx.run` side effects (the `journal` scenario), each one journaled and fsync'd by the
broker before the handler moves on. `Counter.Add` is the `keyed` scenario: a virtual object
that reads and writes its state.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os

import durable
from benchsvc import benchsvc_pb2 as pb
from benchsvc.benchsvc_durable import BenchServicer, CounterServicer

from bench import handlers


class Bench(BenchServicer):
    """`benchsvc.Bench` through the broker."""

    async def Echo(self, ctx: durable.Context, request: pb.EchoRequest) -> pb.EchoResponse:
        """Echoes the payload; no journaled steps besides the call itself."""
        return handlers.echo(request)

    async def Steps(self, ctx: durable.Context, request: pb.StepsRequest) -> pb.StepsResponse:
        """Runs `request.steps` journaled side effects in sequence."""
        total = 0
        for i in range(request.steps):
            total += await ctx.run("step", functools.partial(handlers.step, i))
        return pb.StepsResponse(steps=request.steps, total=total)


class Counter(CounterServicer):
    """`benchsvc.Counter` through the broker: one counter per key in the object's state."""

    async def Add(self, ctx: durable.ObjectContext, request: pb.AddRequest) -> pb.AddResponse:
        """Adds `request.delta` to the key's counter; the broker journals the new value."""
        value: int = await ctx.get("value", 0) + request.delta
        ctx.set("value", value)
        return pb.AddResponse(value=value)


def main(argv: list[str] | None = None) -> None:
    """Parses `--listen` and `--log-level` and serves until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.service", description="The durable benchmark service."
    )
    parser.add_argument("--listen", default="127.0.0.1:9110", help="host:port to serve on")
    parser.add_argument("--log-level", default="WARNING", type=str.upper)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # DURABLE_REQUEST_RESPONSE=1 asks the broker for one unary call per attempt.
    durable.serve(
        [Bench(), Counter()],
        args.listen,
        request_response=os.environ.get("DURABLE_REQUEST_RESPONSE", "") == "1",
    )


if __name__ == "__main__":
    main()
