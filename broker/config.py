"""Broker settings: flags, each with an environment variable, and their defaults.

Each setting is declared once, as a `Settings` field whose metadata says how it is given
at start-up (its flag, its `BROKER_*` variable, its help and how its text is parsed);
`build_parser` and `parse_args` are built from that table, so a default cannot drift
between the dataclass and the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_T = TypeVar("_T")

# The most --ingress-servers: each is an accepting task and a listening socket.
MAX_INGRESS_SERVERS = 16
# The longest --stream-linger: it is a wait added to messages under load.
MAX_STREAM_LINGER_S = 0.1
# Completed invocations the admin API's index holds by default (about 250 bytes each).
ADMIN_INDEX_ROWS = 250_000
# The largest message the broker's gRPC servers send (their send cap): an admin answer,
# an ingress reply.
MAX_SEND_BYTES = 64 * 1024 * 1024
# The largest --max-payload-bytes: a request must reach its endpoint in one message (64
# MiB) with the rest of an attempt's start around it (see `parse_args`).
MAX_PAYLOAD_BYTES = MAX_SEND_BYTES - 1024 * 1024
# Room an admin answer leaves under the send cap for gRPC's own framing (and, in a
# listing, for the answer's other fields).
ANSWER_FRAMING_BYTES = 64 * 1024
# What a request may carry past its payload: the fields around it. A server takes in
# that much more than --max-payload-bytes and checks the payload itself, so a payload
# at the limit passes and one over it is refused naming the flag (gRPC's own refusal
# says only "larger than max").
REQUEST_FRAMING_BYTES = 64 * 1024


def receive_limit(max_payload: int) -> int:
    """A server's gRPC receive limit for `--max-payload-bytes` `max_payload`."""
    return max_payload + REQUEST_FRAMING_BYTES


# What a listing's records may add up to.
ADMIN_ANSWER_BYTES = MAX_SEND_BYTES - ANSWER_FRAMING_BYTES
# What one message in a repeated field adds to an answer besides itself: its tag and a
# length of up to five bytes.
REPEATED_ITEM_BYTES = 6
_OPTION = "option"


def parse_duration(text: str) -> float:
    """Seconds in `text`: `250ms`, `30s`, `5m`, `24h`, `7d`, or a bare number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 500ms, 30s, 24h)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def parse_address(text: str, dial: bool = False) -> str:
    """HOST:PORT to listen on (with `dial`, to connect to: port 0 names nothing there),
    checked before anything is opened: gRPC would take port 99999 as 34463 (mod 65536),
    and a missing port would fail only once the store had been recovered."""
    lowest, example = (
        (1, "127.0.0.1:9091") if dial else (0, "127.0.0.1:9090; port 0 picks a free one")
    )
    address = text.strip()
    host, sep, port = address.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) < lowest:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r} (e.g. {example})")
    if int(port) > 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r}: port {port} is out of range ({lowest} to 65535)"
        )
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise argparse.ArgumentTypeError(
            f"{text!r}: an IPv6 host goes in brackets, e.g. [::1]:9090"
        )
    return address


def _upper(text: str) -> str:
    return text.upper()


def _without_trailing_slash(text: str) -> str:
    return text.rstrip("/")


@dataclasses.dataclass(frozen=True)
class Option:
    """How one setting is given at start-up.

    Attributes:
        flag: The command-line flag, or None for a setting only code can change.
        env: The environment variable that replaces the default when set.
        help: The flag's help text.
        parse: Turns the flag's (or the variable's) text into the value.
        switch: A flag without a value; the variable turns it on with `1`.
        negated: The switch turns the setting off (`--no-fsync` sets `fsync` False).
        blank_is_none: An empty value means "unset" (None).
    """

    flag: str | None = None
    env: str | None = None
    help: str | None = None
    parse: Callable[[str], Any] = str
    switch: bool = False
    negated: bool = False
    blank_is_none: bool = False


def _setting(default: _T, flag: str | None = None, env: str | None = None, **how: Any) -> _T:
    """A `Settings` field: its default and how it is given (see `Option`)."""
    field: _T = dataclasses.field(
        default=default, metadata={_OPTION: Option(flag=flag, env=env, **how)}
    )
    return field


@dataclasses.dataclass
class Settings:
    """Everything the broker can be told at start-up."""

    ingress: str = _setting(
        "127.0.0.1:9090", "--ingress", "BROKER_INGRESS", parse=parse_address, help="ingress address"
    )
    admin: str = _setting(
        "127.0.0.1:9091", "--admin", "BROKER_ADMIN", parse=parse_address, help="admin API address"
    )
    # None keeps everything in memory (tests, the SDK's testing helper).
    data_dir: str | None = _setting(
        ".data/broker",
        "--data-dir",
        "BROKER_DATA_DIR",
        help="RocksDB directory",
        blank_is_none=True,
    )
    log_level: str = _setting("INFO", "--log-level", "BROKER_LOG_LEVEL", parse=_upper)
    # How long a handler may block on an incomplete step before it suspends;
    # 0 suspends at every such await (replay exercised constantly, used in tests).
    suspend_after: float = _setting(
        1.0,
        "--suspend-after",
        "BROKER_SUSPEND_AFTER",
        parse=parse_duration,
        help="suspend handlers blocked this long; 0 = at every await (default 1s)",
    )
    retry_initial: float = _setting(
        0.1, "--retry-initial", "BROKER_RETRY_INITIAL", parse=parse_duration
    )
    retry_factor: float = _setting(2.0, "--retry-factor", "BROKER_RETRY_FACTOR", parse=float)
    retry_max: float = _setting(30.0, "--retry-max", "BROKER_RETRY_MAX", parse=parse_duration)
    # Completed invocations (and their idempotency keys) are kept this long.
    retention: float = _setting(
        24 * 3600.0,
        "--retention",
        "BROKER_RETENTION",
        parse=parse_duration,
        help="how long completed invocations and idempotency keys are kept",
    )
    admin_index_rows: int = _setting(
        ADMIN_INDEX_ROWS,
        "--admin-index-rows",
        "BROKER_ADMIN_INDEX_ROWS",
        parse=int,
        help="completed invocations the admin API lists and counts per partition, the "
        "newest, about 250 bytes of memory each (older ones stay retained and can be "
        "described by id)",
    )
    max_payload_bytes: int = _setting(
        4 * 1024 * 1024, "--max-payload-bytes", "BROKER_MAX_PAYLOAD_BYTES", parse=int
    )
    fsync: bool = _setting(
        True,
        "--no-fsync",
        "BROKER_NO_FSYNC",
        switch=True,
        negated=True,
        help="skip fsync (benchmarks of the rest only; not durable against power loss)",
    )
    # host:port of the Prometheus endpoint; None = off.
    metrics: str | None = _setting(
        None,
        "--metrics",
        "BROKER_METRICS",
        blank_is_none=True,
        parse=parse_address,
        help="serve Prometheus metrics at http://ADDRESS/metrics (off by default)",
    )
    # Limits (each failure is terminal, RESOURCE_EXHAUSTED, with a message saying which).
    max_journal_entries: int = _setting(
        10_000, "--max-journal-entries", "BROKER_MAX_JOURNAL_ENTRIES", parse=int
    )
    max_state_bytes: int = _setting(
        16 * 1024 * 1024,
        "--max-state-bytes",
        "BROKER_MAX_STATE_BYTES",
        parse=int,
        help="state per virtual-object key",
    )
    # Attempts in flight per deployment; the rest wait in line (0 = no limit).
    max_concurrency: int = _setting(
        0,
        "--max-concurrency",
        "BROKER_MAX_CONCURRENCY",
        parse=int,
        help="attempts in flight per deployment; more wait in line (0 = no limit)",
    )
    # An attempt whose endpoint sends nothing for this long is abandoned and retried
    # (a hung handler or stream); long side effects must finish within it.
    inactivity_timeout: float = _setting(
        600.0,
        "--inactivity-timeout",
        "BROKER_INACTIVITY_TIMEOUT",
        parse=parse_duration,
        help="abandon (and retry) an attempt whose endpoint sends nothing this long",
    )
    # First attempts of fresh invocations on endpoints that do not multiplex go as one
    # unary call; see Invoker._unary.
    unary_first: bool = _setting(
        True,
        "--no-unary-first",
        "BROKER_NO_UNARY_FIRST",
        switch=True,
        negated=True,
        help="drive endpoints that do not multiplex over a stream per attempt, first "
        "attempts included (not one unary call first)",
    )
    # Streaming attempts to endpoints that offer it share one Multiplex stream.
    multiplex: bool = _setting(
        True,
        "--no-multiplex",
        "BROKER_NO_MULTIPLEX",
        switch=True,
        negated=True,
        help="open a stream per attempt even to endpoints that serve Multiplex",
    )
    # The one-process broker keeps its Python threads on one CPU while attempts come one
    # at a time (see broker.affinity); --workers and cluster nodes never pin.
    pin_when_quiet: bool = _setting(
        True,
        "--no-pin-when-quiet",
        "BROKER_NO_PIN_WHEN_QUIET",
        switch=True,
        negated=True,
        help="let the kernel place the broker's threads even while it serves one call at "
        "a time (by default they share the event loop's CPU then, for lower latency)",
    )
    # grpc.aio accepts one call per server per turn of the event loop: several servers
    # on the ingress port accept side by side (see broker.ingress.listen). 8 measured
    # best on 2 cores with 16 client connections (2, 4, 8 and 16 compared).
    ingress_servers: int = _setting(
        8,
        "--ingress-servers",
        "BROKER_INGRESS_SERVERS",
        parse=int,
        help="gRPC servers sharing the ingress port (SO_REUSEPORT), each accepting calls "
        f"on its own; more take in calls faster under load (1 to {MAX_INGRESS_SERVERS})",
    )
    # While the event loop is saturated, frames to endpoints wait this long to carry
    # several attempts' messages (see broker.multiplex.Linger); endpoints do likewise.
    stream_linger: float = _setting(
        0.005,
        "--stream-linger",
        "BROKER_STREAM_LINGER",
        parse=parse_duration,
        help="while the broker's event loop is saturated, how long a frame to an endpoint "
        "waits to carry more messages (0 = never; at most 100ms)",
    )
    # A non-determinism report from the SDK ends the invocation with INTERNAL instead of
    # being retried. Off in production (a fixed deployment can then recover it); on in
    # `durable.testing`, so a test sees the divergence instead of a retry that may pass.
    # No flag: only code (the testing helper) sets it.
    non_determinism_terminal: bool = _setting(False)
    # An empty token is refused by `parse_args`, never taken as "no token".
    admin_token: str | None = _setting(
        None,
        "--admin-token",
        "BROKER_ADMIN_TOKEN",
        help="require `authorization: Bearer TOKEN` on admin calls (not empty)",
    )
    tls_cert: str | None = _setting(
        None, "--tls-cert", "BROKER_TLS_CERT", help="PEM certificate", blank_is_none=True
    )
    tls_key: str | None = _setting(
        None, "--tls-key", "BROKER_TLS_KEY", help="PEM private key", blank_is_none=True
    )
    endpoint_secret: str | None = _setting(
        None,
        "--endpoint-secret",
        "BROKER_ENDPOINT_SECRET",
        blank_is_none=True,
        help="shared secret sent to service endpoints (x-durable-secret)",
    )
    # Open a data dir whose journal lost acknowledged writes (a damaged, truncated or
    # deleted write-ahead log) with what is left, instead of refusing to start.
    accept_data_loss: bool = _setting(
        False,
        "--accept-data-loss",
        "BROKER_ACCEPT_DATA_LOSS",
        switch=True,
        help="start on a data dir whose journal lost acknowledged writes (a damaged, "
        "truncated or deleted write-ahead log) with what is left, and log what was lost; "
        "without it such a data dir stops the broker",
    )
    # host:port of the web console; None = off.
    console: str | None = _setting(
        None,
        "--console",
        "BROKER_CONSOLE",
        blank_is_none=True,
        parse=parse_address,
        help="serve the web console at http://ADDRESS/ (off by default; same token and "
        "TLS as the admin API)",
    )
    # A Jaeger UI's base URL, for links from the console to an invocation's trace.
    jaeger_ui: str | None = _setting(
        None,
        "--jaeger-ui",
        "BROKER_JAEGER_UI",
        blank_is_none=True,
        parse=_without_trailing_slash,
        help="Jaeger UI base URL, e.g. http://127.0.0.1:16686: the console links traces",
    )

    # Partitions over processes on one machine; None runs the one embedded process.
    workers: int | None = _setting(
        None,
        "--workers",
        "BROKER_WORKERS",
        parse=int,
        help="run the partitions over N worker processes on this machine (same ingress, "
        "admin and data dir for clients); without it one process serves everything",
    )
    # Fixed when a --workers data dir is created; None: the recorded count, else one
    # per worker.
    partitions: int | None = _setting(
        None,
        "--partitions",
        "BROKER_PARTITIONS",
        parse=int,
        help="partitions of a new --workers data dir, or of a new --nats cluster (fixed "
        "once created; default: one per worker, or the cluster's)",
    )
    # Cluster mode: the partitions' logs live on NATS JetStream, replicated.
    nats: str | None = _setting(
        None,
        "--nats",
        "BROKER_NATS",
        blank_is_none=True,
        help="run as a node of a cluster whose partition logs live on NATS JetStream: "
        "nats://HOST:PORT[,nats://HOST:PORT...]",
    )
    node: str | None = _setting(
        None,
        "--node",
        "BROKER_NODE",
        blank_is_none=True,
        help="this node's name in a --nats cluster (unique in the cluster)",
    )
    snapshot_entries: int = _setting(
        10_000,
        "--snapshot-entries",
        "BROKER_SNAPSHOT_ENTRIES",
        parse=int,
        help="a --nats partition's leader snapshots its store after this many log entries "
        "and trims the log below the snapshot (and below every live follower)",
    )

    def backoff(self, attempts: int) -> float:
        """Delay before the retry that follows `attempts` failed attempts."""
        return min(self.retry_initial * self.retry_factor ** max(attempts - 1, 0), self.retry_max)


def options() -> list[tuple[dataclasses.Field[Any], Option]]:
    """Every `Settings` field with its `Option`, in declaration order."""
    return [(f, f.metadata[_OPTION]) for f in dataclasses.fields(Settings)]


def _parser_of(option: Option) -> Callable[[str], Any]:
    """`option.parse`, letting a blank value through where blank means unset."""
    if not option.blank_is_none or option.parse is str:
        return option.parse
    return lambda text: text if not text.strip() else option.parse(text)


def _default(p: argparse.ArgumentParser, field: dataclasses.Field[Any], option: Option) -> Any:
    """The flag's default: the environment variable when set, else the field's default.
    A variable that does not parse is a usage error naming it (exit code 2)."""
    text = os.environ.get(option.env) if option.env else None
    if option.switch:
        # The flag's own value (for a negated switch, on means the field is False).
        return text == "1"
    if text is None:
        return field.default
    try:
        return _parser_of(option)(text)
    except (argparse.ArgumentTypeError, ValueError) as e:
        p.error(f"{option.env} (for {option.flag}): {e}")


def build_parser() -> argparse.ArgumentParser:
    """The `python -m broker` parser; its defaults read the `BROKER_*` variables now."""
    p = argparse.ArgumentParser(
        prog="python -m broker", description="The durable invocation broker."
    )
    for field, option in options():
        if option.flag is None:
            continue
        if option.switch:
            p.add_argument(
                option.flag,
                dest=field.name,
                action="store_true",
                default=_default(p, field, option),
                help=option.help,
            )
        else:
            # Plain text needs no `type` (argparse keeps it as given).
            typed: dict[str, Any] = {} if option.parse is str else {"type": _parser_of(option)}
            p.add_argument(
                option.flag,
                dest=field.name,
                default=_default(p, field, option),
                help=option.help,
                **typed,
            )
    return p


def parse_args(argv: list[str] | None = None) -> Settings:
    """Settings from the command line, falling back to `BROKER_*` variables."""
    p = build_parser()
    a = p.parse_args(argv)
    if a.admin_token is not None and not a.admin_token.strip():
        # An empty token would silently mean "no access control" to whoever set it.
        p.error(
            "--admin-token (BROKER_ADMIN_TOKEN) is empty: give a token, or leave both "
            "unset to serve the admin API without one"
        )
    if bool(a.tls_cert) != bool(a.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if a.admin_index_rows < 1:
        p.error(
            f"--admin-index-rows (BROKER_ADMIN_INDEX_ROWS) is {a.admin_index_rows}: give at "
            "least 1; it bounds the memory the admin API's index of completed invocations takes"
        )
    if not 0 <= a.stream_linger <= MAX_STREAM_LINGER_S:
        p.error(
            f"--stream-linger (BROKER_STREAM_LINGER) is {a.stream_linger * 1000:g}ms: give "
            f"0 (never wait) up to {MAX_STREAM_LINGER_S * 1000:g}ms; it adds to the latency "
            "of messages under load"
        )
    if not 1 <= a.max_payload_bytes <= MAX_PAYLOAD_BYTES:
        # A payload is journaled, and every journal entry must reach the endpoint in one
        # message of at most 64 MiB: a larger request would be accepted, journaled, then
        # never delivered.
        p.error(
            f"--max-payload-bytes (BROKER_MAX_PAYLOAD_BYTES) is {a.max_payload_bytes}: give "
            f"1 up to {MAX_PAYLOAD_BYTES} (what one message to an endpoint carries, less "
            "room for the rest of an attempt's start)"
        )
    if not 1 <= a.ingress_servers <= MAX_INGRESS_SERVERS:
        p.error(
            f"--ingress-servers (BROKER_INGRESS_SERVERS) is {a.ingress_servers}: give 1 to "
            f"{MAX_INGRESS_SERVERS}"
        )
    values: dict[str, Any] = {}
    for field, option in options():
        if option.flag is None:
            continue
        value = getattr(a, field.name)
        if option.negated:
            value = not value
        elif option.blank_is_none:
            value = value or None
        values[field.name] = value
    return Settings(**values)
