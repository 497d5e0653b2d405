"""How every broker process (embedded, worker, cluster node) logs: one line per record on
stderr, tagged with the process it came from."""

from __future__ import annotations

import logging
import sys


def configure(level: str | int, tag: str = "") -> None:
    """Sends records at `level` and above to stderr; `tag` names the process (a worker's
    index, a node's name) so that interleaved logs stay readable."""
    prefix = f"{tag} " if tag else ""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s",
        stream=sys.stderr,
    )
    # grpc's own DEBUG records (a line per call about its event loop) would bury the
    # broker's: at --log-level DEBUG a failing test's log tail showed nothing else.
    grpc_log = logging.getLogger("grpc")
    grpc_log.setLevel(max(logging.getLogger().level, logging.INFO))
    logging.getLogger("grpc._common").addFilter(_unparsed_replies)


def _unparsed_replies(record: logging.LogRecord) -> bool:
    """Drops grpc's traceback for a message from an endpoint that does not parse: grpc
    hands the broker None for it, and the broker reports that as the endpoint's protocol
    violation, naming the endpoint (registration, attempts, multiplexed frames)."""
    return record.getMessage() != "Exception deserializing message!"


def reason(error: BaseException) -> str:
    """What to log for `error`: its message, or its type when it has none (nats-py's and
    asyncio's timeouts carry no message)."""
    return str(error) or type(error).__name__
