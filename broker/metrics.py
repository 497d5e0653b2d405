"""Prometheus metrics in the text exposition format, served on an opt-in port.

`--metrics 127.0.0.1:9092` serves `GET /metrics`. Counters and histograms live in
memory and restart from zero with the broker, as Prometheus expects.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from .addresses import split_address

log = logging.getLogger("broker.metrics")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


# Distinct label values kept per series family; later ones are counted as OTHER. Service
# names come from registrations, but a handler may send to any name (refused, and
# counted): /metrics must not grow with every name someone makes up.
MAX_LABELS = 1000
OTHER = "(other)"


def escape_label(value: str) -> str:
    """A label value escaped as the exposition format wants (backslash, double quote,
    line feed), so that no value can end its label or line early."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Histogram:
    """Cumulative buckets, a sum and a count, per label value."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts: dict[str, list[int]] = collections.defaultdict(
            lambda: [0] * (len(buckets) + 1)
        )
        self.sums: dict[str, float] = collections.defaultdict(float)

    def observe(self, value: float, label: str = "") -> None:
        """Records one observation."""
        if label not in self.counts and len(self.counts) >= MAX_LABELS:
            label = OTHER
        self.counts[label][bisect.bisect_left(self.buckets, value)] += 1
        self.sums[label] += value

    def render(self, name: str, label_name: str) -> list[str]:
        """The histogram's exposition lines."""
        lines = []
        for label, counts in sorted(self.counts.items()):
            prefix = f'{label_name}="{escape_label(label)}",' if label_name else ""
            cumulative = 0
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f'{name}_bucket{{{prefix}le="{le}"}} {cumulative}')
            labels = f"{{{prefix.rstrip(',')}}}" if prefix else ""
            lines.append(f"{name}_sum{labels} {self.sums[label]:.6f}")
            lines.append(f"{name}_count{labels} {cumulative}")
        return lines


class FrameCounts(Protocol):
    """Frames sent to endpoints on multiplexed streams, and the messages in them."""

    frames: int
    messages: int


class Metrics:
    """Everything the broker counts.

    Attributes:
        frames: Frame counts of the partition's own streams to endpoints
            (`broker.multiplex.Linger`); None when it shares a process's streams.
    """

    def __init__(self) -> None:
        self.frames: FrameCounts | None = None
        self.counters: dict[str, collections.Counter[str]] = {
            name: collections.Counter()
            for name in ("started", "completed", "failed", "suspended", "retried", "queued")
        }
        self.invocation_seconds = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(_SIZE_BUCKETS)
        self.fsync_seconds = Histogram(LATENCY_BUCKETS)

    def count(self, event: str, service: str) -> None:
        """Adds one to `durable_invocations_<event>_total{service}`."""
        counter = self.counters[event]
        if service not in counter and len(counter) >= MAX_LABELS:
            service = OTHER
        counter[service] += 1

    def render(self) -> str:
        """The whole exposition, as Prometheus scrapes it."""
        lines: list[str] = []
        help_text = {
            "started": "Invocations accepted.",
            "completed": "Invocations completed successfully.",
            "failed": "Invocations completed with a terminal failure.",
            "suspended": "Suspensions (a handler waiting with no stream open).",
            "retried": "Attempts that failed transiently and were scheduled again.",
            "queued": "New invocations that waited for a concurrency or rate limit.",
        }
        for event, counter in self.counters.items():
            name = f"durable_invocations_{event}_total"
            lines += [f"# HELP {name} {help_text[event]}", f"# TYPE {name} counter"]
            for service, n in sorted(counter.items()):
                lines.append(f'{name}{{service="{escape_label(service)}"}} {n}')
        if self.frames is not None:
            for name, value, text in (
                ("durable_endpoint_frames_total", self.frames.frames, "Frames sent to endpoints."),
                (
                    "durable_endpoint_messages_total",
                    self.frames.messages,
                    "Messages in the frames sent to endpoints (several per frame while the "
                    "broker's event loop is saturated).",
                ),
            ):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} counter", f"{name} {value}"]
        for name, hist, label, text in (
            (
                "durable_invocation_duration_seconds",
                self.invocation_seconds,
                "service",
                "From acceptance to completion.",
            ),
            ("durable_journal_batch_steps", self.batch_size, "", "Batches per group commit."),
            ("durable_journal_fsync_seconds", self.fsync_seconds, "", "WAL fsync latency."),
        ):
            lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
            lines += hist.render(name, label)
        return "\n".join(lines) + "\n"


async def serve(metrics: Metrics, address: str) -> asyncio.Server:
    """Serves `GET /metrics` on `address` (HTTP/1.1, one response per connection)."""

    async def render() -> str:
        return metrics.render()

    server = await serve_text(address, render)
    log.info("metrics on http://%s/metrics", address)
    return server


async def serve_text(address: str, render: Callable[[], Awaitable[str]]) -> asyncio.Server:
    """Serves `GET /metrics` on `address` with what `render` returns (Prometheus text;
    HTTP/1.1, one response per connection); any other path is 404."""
    host, port = split_address(address)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if path.split(b"?")[0] == b"/metrics":
                body, status = (await render()).encode(), b"200 OK"
                kind = b"text/plain; version=0.0.4"
            else:
                body, status, kind = b"try /metrics\n", b"404 Not Found", b"text/plain"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + kind
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except asyncio.LimitOverrunError:
            # Headers past the reader's 64 KiB: no scraper sends those.
            writer.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n"
            )
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
