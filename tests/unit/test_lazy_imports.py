"""Entry points import only what their default path needs.

Each `python -m broker`, `brokerctl` and demo service start pays for every module its entry
imports, and the test suite starts hundreds of them. Optional machinery (cluster mode's
NATS client, the web console's aiohttp, cron parsing, ...) is imported where it is used;
these tests keep it that way. They check which modules a fresh interpreter loaded, never
how long it took.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _loaded_after(statement: str) -> set[str]:
    """The modules a fresh interpreter has loaded after `statement`."""
    probe = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return set(loaded)


@pytest.mark.parametrize(
    ("entry", "unwanted"),
    [
        # The embedded broker: cluster mode (--nats) and the console (--console) are opt-in.
        ("import broker.__main__", {"nats", "aiohttp", "croniter", "dateutil"}),
        # Neither needs the SDK's handler runtime, only its protocol messages and wire.
        ("import broker.__main__", {"durable._context", "durable._endpoint"}),
        ("import broker.cli", {"durable._context", "durable._endpoint"}),
        # `--workers`: the supervisor serves the console only with --console.
        ("import broker.cluster.supervisor", {"nats", "aiohttp"}),
        # Tracing is off unless OTEL_EXPORTER_OTLP_ENDPOINT is set.
        ("import broker.__main__", {"opentelemetry"}),
        ("import services.trips.__main__", {"opentelemetry"}),
    ],
)
def test_entry_point_leaves_optional_packages_unimported(entry: str, unwanted: set[str]) -> None:
    loaded = _loaded_after(entry)
    assert {m for m in loaded if m in unwanted or m.split(".")[0] in unwanted} == set()


def test_the_sdk_api_is_still_importable_by_name() -> None:
    # Lazily imported by the package, but every public name resolves as before.
    loaded = _loaded_after(
        "import durable\n"
        "from durable import *\n"
        "assert durable.Context is Context and 'serve' in dir(durable)"
    )
    assert "durable._context" in loaded
