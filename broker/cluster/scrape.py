"""`--metrics` with `--workers`: the supervisor's /metrics is every partition's, each
sample labelled with its `partition`.

Each partition serves its own /metrics on a private port (the directory's `metrics`
address); a scrape of the public one reads them all at once and writes each metric
family once (Prometheus refuses a family given twice), followed by
`durable_partition_up{partition}`: 0 for a partition that did not answer.
"""

from __future__ import annotations

import asyncio
import logging

from .. import metrics
from ..addresses import split_address
from .directory import Directory

log = logging.getLogger("broker.metrics")

SCRAPE_TIMEOUT_S = 2.0


async def fetch(address: str, timeout: float = SCRAPE_TIMEOUT_S) -> str | None:
    """The body of GET http://ADDRESS/metrics, or None if it does not answer 200."""
    host, port = split_address(address)

    async def get() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n".encode())
            await writer.drain()
            return await reader.read()  # the server closes after one response
        finally:
            writer.close()

    try:
        raw = await asyncio.wait_for(get(), timeout)
    except (OSError, TimeoutError):
        return None
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return None
    return body.decode("utf-8", errors="replace")


def _labelled(sample: str, partition: int) -> str:
    """`sample` with `partition="N"` as its first label."""
    label = f'partition="{partition}"'
    brace, space = sample.find("{"), sample.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        inner = sample[brace + 1 :]
        sep = "" if inner.startswith("}") else ","
        return f"{sample[:brace]}{{{label}{sep}{inner}"
    return f"{sample[:space]}{{{label}}}{sample[space:]}"


def combine(texts: list[str | None]) -> str:
    """One exposition from each partition's (None: it did not answer)."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for partition, text in enumerate(texts):
        family = ""
        # Lines end at "\n" only, as the format says: splitlines() also broke a label
        # value at "\r" or "\u2028", which then read as lines of their own.
        for line in (text or "").split("\n"):
            if line.startswith("# "):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    known = headers.setdefault(family, [])
                    if line not in known:
                        known.append(line)
                    samples.setdefault(family, [])
                continue
            if line.strip():
                samples.setdefault(family, []).append(_labelled(line, partition))
    lines: list[str] = []
    for family, rows in samples.items():
        lines += headers.get(family, [])
        lines += rows
    up = "durable_partition_up"
    lines += [f"# HELP {up} Whether the partition's metrics answered.", f"# TYPE {up} gauge"]
    lines += [f'{up}{{partition="{p}"}} {int(t is not None)}' for p, t in enumerate(texts)]
    return "\n".join(lines) + "\n"


async def serve(directory: Directory, address: str) -> asyncio.Server:
    """Serves the combined `GET /metrics` on `address`."""
    addresses = [a.metrics for a in directory.partitions]

    async def render() -> str:
        texts = await asyncio.gather(*(fetch(a) if a else _none() for a in addresses))
        return combine(list(texts))

    server = await metrics.serve_text(address, render)
    log.info("metrics of %d partitions on http://%s/metrics", directory.count, address)
    return server


async def _none() -> None:
    return None
