"""`import durable` picks gRPC's older I/O engine (see `durable._grpc_engine`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Makes calls to itself and reports how much CPU gRPC's EventEngine threads used (they do
# the socket work under gRPC's default engine, nothing under the older one), and
# whether GRPC_EXPERIMENTS is left in the environment.
PROBE = r"""
import asyncio, json, os, sys
exec(sys.argv[1])
import grpc

async def echo(request, context):
    return request

def engine_ticks():
    ticks = 0
    for task in os.listdir("/proc/self/task"):
        if open(f"/proc/self/task/{task}/comm").read().strip() == "event_engine":
            fields = open(f"/proc/self/task/{task}/stat").read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks

async def main():
    server = grpc.aio.server()
    methods = {"M": grpc.unary_unary_rpc_method_handler(echo)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/t.S/M")
        for _ in range(3000):
            await call(b"x")
        # Read while the channel is open: the engine's idle threads exit, and their
        # CPU time with them.
        ticks = engine_ticks()
    await server.stop(None)
    print(json.dumps({"ticks": ticks, "left": os.environ.get("GRPC_EXPERIMENTS")}))

asyncio.run(main())
"""


def _probe(prelude: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, prelude],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads Linux's /proc")
def test_importing_durable_first_keeps_grpc_socket_work_off_its_engine_threads() -> None:
    chosen = _probe("import durable")
    assert chosen["left"] is None  # children choose for themselves
    assert isinstance(chosen["ticks"], int) and chosen["ticks"] <= 2, chosen
    # Without the choice (the user set the variable, here to gRPC's defaults), the same
    # calls keep the engine's threads busy: the probe can tell the two apart.
    default = _probe("import os; os.environ['GRPC_EXPERIMENTS'] = ''; import durable")
    assert isinstance(default["ticks"], int) and default["ticks"] > 10, default
    assert default["left"] == ""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads Linux's /proc")
def test_a_process_that_imported_grpc_first_is_left_alone() -> None:
    # Too late to choose: gRPC already read its settings, so nothing is changed.
    late = _probe("import grpc, durable")
    assert late["left"] is None
    assert isinstance(late["ticks"], int) and late["ticks"] > 10, late
