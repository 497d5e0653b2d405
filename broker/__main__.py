"""`python -m broker`: run the broker until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from durable import tracing, wire

from .config import Settings, parse_args
from .server import Broker


async def _main(settings: Settings) -> None:
    tracing.configure("broker")
    broker = Broker(settings)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("broker").info("shutting down")
    await broker.stop()
    tracing.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    settings = parse_args(argv)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        wire.run(_main(settings))
    except Exception as e:
        logging.getLogger("broker").critical("broker failed: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
