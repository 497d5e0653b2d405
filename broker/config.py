"""Broker settings: flags, each with an environment variable, and their defaults."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in `text`: `250ms`, `30s`, `5m`, `24h`, `7d`, or a bare number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 500ms, 30s, 24h)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


@dataclasses.dataclass
class Settings:
    """Everything the broker can be told at start-up."""

    ingress: str = "127.0.0.1:9090"
    admin: str = "127.0.0.1:9091"
    # None keeps everything in memory (tests, the SDK's testing helper).
    data_dir: str | None = ".data/broker"
    log_level: str = "INFO"
    # How long a handler may block on an incomplete step before it suspends;
    # 0 suspends at every such await (replay exercised constantly, used in tests).
    suspend_after: float = 1.0
    retry_initial: float = 0.1
    retry_factor: float = 2.0
    retry_max: float = 30.0
    # Completed invocations (and their idempotency keys) are kept this long.
    retention: float = 24 * 3600.0
    max_payload_bytes: int = 4 * 1024 * 1024
    fsync: bool = True
    # host:port of the Prometheus endpoint; None = off.
    metrics: str | None = None
    # Limits (each failure is terminal, RESOURCE_EXHAUSTED, with a message saying which).
    max_journal_entries: int = 10_000
    max_state_bytes: int = 16 * 1024 * 1024
    # Attempts in flight per deployment; the rest wait in line (0 = no limit).
    max_concurrency: int = 0
    # An attempt whose endpoint sends nothing for this long is abandoned and retried
    # (a hung handler or stream); long side effects must finish within it.
    inactivity_timeout: float = 600.0
    # First attempts of fresh invocations on endpoints that do not multiplex go as one
    # unary call; see Invoker._unary.
    unary_first: bool = True
    # Streaming attempts to endpoints that offer it share one Multiplex stream.
    multiplex: bool = True
    # A non-determinism report from the SDK ends the invocation with INTERNAL instead of
    # being retried. Off in production (a fixed deployment can then recover it); on in
    # `durable.testing`, so a test sees the divergence instead of a retry that may pass.
    non_determinism_terminal: bool = False
    admin_token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    endpoint_secret: str | None = None
    # Open a data dir whose journal lost acknowledged writes (a damaged, truncated or
    # deleted write-ahead log) with what is left, instead of refusing to start.
    accept_data_loss: bool = False
    # host:port of the web console; None = off.
    console: str | None = None
    # A Jaeger UI's base URL, for links from the console to an invocation's trace.
    jaeger_ui: str | None = None

    def backoff(self, attempts: int) -> float:
        """Delay before the retry that follows `attempts` failed attempts."""
        return min(self.retry_initial * self.retry_factor ** max(attempts - 1, 0), self.retry_max)


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def parse_args(argv: list[str] | None = None) -> Settings:
    """Settings from the command line, falling back to `BROKER_*` variables."""
    d = Settings()
    p = argparse.ArgumentParser(
        prog="python -m broker", description="The durable invocation broker."
    )
    p.add_argument("--ingress", default=_env("BROKER_INGRESS", d.ingress), help="ingress address")
    p.add_argument("--admin", default=_env("BROKER_ADMIN", d.admin), help="admin API address")
    p.add_argument(
        "--data-dir", default=_env("BROKER_DATA_DIR", d.data_dir or ""), help="RocksDB directory"
    )
    p.add_argument("--log-level", default=_env("BROKER_LOG_LEVEL", d.log_level))
    p.add_argument(
        "--suspend-after",
        type=parse_duration,
        default=parse_duration(_env("BROKER_SUSPEND_AFTER", "1s")),
        help="suspend handlers blocked this long; 0 = at every await (default 1s)",
    )
    p.add_argument(
        "--retry-initial",
        type=parse_duration,
        default=parse_duration(_env("BROKER_RETRY_INITIAL", "100ms")),
    )
    p.add_argument("--retry-factor", type=float, default=float(_env("BROKER_RETRY_FACTOR", "2")))
    p.add_argument(
        "--retry-max", type=parse_duration, default=parse_duration(_env("BROKER_RETRY_MAX", "30s"))
    )
    p.add_argument(
        "--retention",
        type=parse_duration,
        default=parse_duration(_env("BROKER_RETENTION", "24h")),
        help="how long completed invocations and idempotency keys are kept",
    )
    p.add_argument(
        "--max-payload-bytes",
        type=int,
        default=int(_env("BROKER_MAX_PAYLOAD_BYTES", str(d.max_payload_bytes))),
    )
    p.add_argument(
        "--no-fsync",
        action="store_true",
        default=_env("BROKER_NO_FSYNC", "") == "1",
        help="skip fsync (benchmarks of the rest only; not durable against power loss)",
    )
    p.add_argument(
        "--metrics",
        default=_env("BROKER_METRICS", ""),
        help="serve Prometheus metrics at http://ADDRESS/metrics (off by default)",
    )
    p.add_argument(
        "--max-journal-entries",
        type=int,
        default=int(_env("BROKER_MAX_JOURNAL_ENTRIES", str(d.max_journal_entries))),
    )
    p.add_argument(
        "--max-state-bytes",
        type=int,
        default=int(_env("BROKER_MAX_STATE_BYTES", str(d.max_state_bytes))),
        help="state per virtual-object key",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=int(_env("BROKER_MAX_CONCURRENCY", "0")),
        help="attempts in flight per deployment; more wait in line (0 = no limit)",
    )
    p.add_argument(
        "--inactivity-timeout",
        type=parse_duration,
        default=parse_duration(_env("BROKER_INACTIVITY_TIMEOUT", "10m")),
        help="abandon (and retry) an attempt whose endpoint sends nothing this long",
    )
    p.add_argument(
        "--no-unary-first",
        action="store_true",
        default=_env("BROKER_NO_UNARY_FIRST", "") == "1",
        help="drive endpoints that do not multiplex over a stream per attempt, first "
        "attempts included (not one unary call first)",
    )
    p.add_argument(
        "--no-multiplex",
        action="store_true",
        default=_env("BROKER_NO_MULTIPLEX", "") == "1",
        help="open a stream per attempt even to endpoints that serve Multiplex",
    )
    p.add_argument(
        "--admin-token",
        default=os.environ.get("BROKER_ADMIN_TOKEN"),
        help="require `authorization: Bearer TOKEN` on admin calls (not empty)",
    )
    p.add_argument("--tls-cert", default=_env("BROKER_TLS_CERT", ""), help="PEM certificate")
    p.add_argument("--tls-key", default=_env("BROKER_TLS_KEY", ""), help="PEM private key")
    p.add_argument(
        "--endpoint-secret",
        default=_env("BROKER_ENDPOINT_SECRET", ""),
        help="shared secret sent to service endpoints (x-durable-secret)",
    )
    p.add_argument(
        "--accept-data-loss",
        action="store_true",
        default=_env("BROKER_ACCEPT_DATA_LOSS", "") == "1",
        help="start on a data dir whose journal lost acknowledged writes (a damaged, "
        "truncated or deleted write-ahead log) with what is left, and log what was lost; "
        "without it such a data dir stops the broker",
    )
    p.add_argument(
        "--console",
        default=_env("BROKER_CONSOLE", ""),
        help="serve the web console at http://ADDRESS/ (off by default; same token and "
        "TLS as the admin API)",
    )
    p.add_argument(
        "--jaeger-ui",
        default=_env("BROKER_JAEGER_UI", ""),
        help="Jaeger UI base URL, e.g. http://127.0.0.1:16686: the console links traces",
    )
    a = p.parse_args(argv)
    if a.admin_token is not None and not a.admin_token.strip():
        # An empty token would silently mean "no access control" to whoever set it.
        p.error(
            "--admin-token (BROKER_ADMIN_TOKEN) is empty: give a token, or leave both "
            "unset to serve the admin API without one"
        )
    if bool(a.tls_cert) != bool(a.tls_key):
        p.error("--tls-cert and --tls-key go together")
    return Settings(
        ingress=a.ingress,
        admin=a.admin,
        data_dir=a.data_dir or None,
        log_level=a.log_level.upper(),
        suspend_after=a.suspend_after,
        retry_initial=a.retry_initial,
        retry_factor=a.retry_factor,
        retry_max=a.retry_max,
        retention=a.retention,
        max_payload_bytes=a.max_payload_bytes,
        fsync=not a.no_fsync,
        metrics=a.metrics or None,
        max_journal_entries=a.max_journal_entries,
        max_state_bytes=a.max_state_bytes,
        max_concurrency=a.max_concurrency,
        inactivity_timeout=a.inactivity_timeout,
        unary_first=not a.no_unary_first,
        multiplex=not a.no_multiplex,
        admin_token=a.admin_token or None,
        tls_cert=a.tls_cert or None,
        tls_key=a.tls_key or None,
        endpoint_secret=a.endpoint_secret or None,
        accept_data_loss=a.accept_data_loss,
        console=a.console or None,
        jaeger_ui=a.jaeger_ui.rstrip("/") or None,
    )
