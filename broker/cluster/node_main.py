"""Runs a cluster node (`python -m broker --nats ...`) until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from durable import tracing, wire

from .. import logs
from ..config import Settings
from ..replication.engine import EngineError
from ..storage.kv import StorageError
from . import layout
from .node import NodeError, check, open_node

log = logging.getLogger("broker.cluster")

EXIT_USAGE = 2
# A node hands its partitions over on SIGTERM within this; what is left then (NATS is
# unreachable, say) the leases' TTL hands over instead.
_STOP_S = 6.0


class _Refused(Exception):
    """The start is refused before anything was written."""


def _replica_advice(problem: str, data_dir: str) -> str:
    """A storage refusal, with what to do on a cluster node: its data dir holds only
    replicas of the partitions' logs, so it is rebuilt, not restored from a backup."""
    backup = "restore it from a backup"
    if backup not in problem:
        return problem  # e.g. another broker holds it: the message says what to do
    return problem.replace(
        backup,
        f"a cluster node's data dir holds only replicas of the partitions' logs: stop "
        f"this node, delete {data_dir} and start it again to rebuild it from the log",
    )


async def _run(settings: Settings) -> None:
    try:
        node = await open_node(settings)
    except (EngineError, NodeError, layout.LayoutError) as e:
        raise _Refused(str(e)) from None
    except StorageError as e:
        raise _Refused(_replica_advice(str(e), settings.data_dir or "")) from None
    tracing.configure("broker")
    await node.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("node %s shutting down: handing its partitions over", node.name)
    try:
        await asyncio.wait_for(node.stop(), _STOP_S)
    except TimeoutError:
        log.warning("shutdown took over %.0f s; leaving the rest to the leases' TTL", _STOP_S)
    try:
        await asyncio.wait_for(node.engine.close(), 2.0)
    except TimeoutError:
        await node.engine.nc.close()
    tracing.shutdown()


def main(settings: Settings) -> int:
    """Runs the node; the exit status."""
    try:
        check(settings)
    except NodeError as e:
        print(f"python -m broker: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(settings.log_level, settings.node or "")
    try:
        wire.run(_run(settings))
    except _Refused as e:
        print(f"python -m broker: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        log.critical("node failed: %s", e)
        return 1
    return 0
