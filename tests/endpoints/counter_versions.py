"""`python -m tests.endpoints.counter_versions --listen ADDR --variant V`: new releases of
the playground's `playground.Counter`, for tests of `deployments register --check`.

  compatible  `Add` replies with a text as well, and `Hold` computes its total another
              way: the same steps in the same order, so every recorded journal replays
  reordered   `Add` writes `by-N` before `total`, and `Hold` reads the total before it
              sleeps: two steps swapped, so journals diverge (`Add` at entry 2, `Hold`
              at entry 1)
"""

from __future__ import annotations

import argparse

import durable
from playground import playground_pb2 as pb

from services.playground.service import Counter

VARIANTS = ("compatible", "reordered")


class CompatibleCounter(Counter):
    """Same steps, other values and texts."""

    async def Add(self, ctx: durable.ObjectContext, request: pb.AddRequest) -> pb.Reply:
        reply = await super().Add(ctx, request)
        reply.text = f"added {request.amount}"
        return reply


class ReorderedCounter(Counter):
    """Two steps of each handler swapped."""

    async def Add(self, ctx: durable.ObjectContext, request: pb.AddRequest) -> pb.Reply:
        total = int(await ctx.get("total", 0)) + request.amount
        ctx.set(f"by-{request.amount}", True)
        ctx.set("total", total)
        return pb.Reply(number=total)

    async def Hold(self, ctx: durable.ObjectContext, request: pb.AddRequest) -> pb.Reply:
        total = int(await ctx.get("total", 0)) + request.amount
        await ctx.sleep(request.millis / 1000)
        ctx.set("total", total)
        return pb.Reply(number=total)


def main() -> None:
    """Serves one variant of `playground.Counter`."""
    parser = argparse.ArgumentParser(prog="python -m tests.endpoints.counter_versions")
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--variant", required=True, choices=VARIANTS)
    args = parser.parse_args()
    counter = CompatibleCounter() if args.variant == "compatible" else ReorderedCounter()
    durable.serve([counter], args.listen)


if __name__ == "__main__":
    main()
