"""`python -m broker`: run the broker until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from durable import tracing, wire

from . import affinity, logs
from .cluster import launch, layout
from .config import Settings, parse_args
from .server import DRAIN_S, Broker

# A start refused before anything ran (as argparse's own usage errors).
EXIT_USAGE = 2


async def _main(settings: Settings) -> None:
    tracing.configure("broker")
    # Only a broker process of its own moves its threads: embedded in a test or an
    # application, the threads are not the broker's to move.
    pinning = affinity.QuietPinning() if settings.pin_when_quiet and affinity.supported() else None
    broker = Broker(settings, pinning=pinning)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("broker").info("shutting down")
    await broker.stop(drain=DRAIN_S)
    tracing.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = sys.argv[1:] if argv is None else argv
    settings = parse_args(args)
    if settings.nats is not None:
        # Imported only here: the cluster node pulls in nats (and its aiohttp client) and
        # the replication engine, which an embedded broker never uses.
        from .cluster import node_main

        return node_main.main(settings)
    partitions = 0
    try:
        if settings.workers is None:
            launch.check_single(settings)
        else:
            partitions = launch.check(settings)
    except layout.LayoutError as e:
        # One line, before logging or any file: nothing is written for a refused start.
        print(f"python -m broker: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(settings.log_level)
    if settings.workers is not None:
        # Imported only here: the supervisor and its admin front are for --workers alone.
        from .cluster import supervisor

        return supervisor.main(settings, args, partitions)
    try:
        wire.run(_main(settings))
    except Exception as e:
        logging.getLogger("broker").critical("broker failed: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
