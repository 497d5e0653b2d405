"""The broker's metadata that `pyproject.toml` cannot state without repeating the SDK's.

Its version is the SDK's (`sdk_python/durable/_version.py`, the one place it is declared),
and it pins that exact SDK: broker and SDK speak one wire protocol. The runtime pins the
two share (grpcio, protobuf, OpenTelemetry, uvloop) are the SDK's and come with it; only
what the broker alone needs is pinned here.
"""

import re
from pathlib import Path

from setuptools import setup

_VERSION_FILE = Path(__file__).resolve().parent / "sdk_python" / "durable" / "_version.py"
_match = re.search(r'^__version__ = "([^"]+)"$', _VERSION_FILE.read_text(), re.MULTILINE)
if _match is None:
    raise SystemExit(f"no __version__ in {_VERSION_FILE}")
VERSION = _match.group(1)

# Pinned with grpcio (in the SDK's pyproject.toml): same release.
BROKER_ONLY = [
    "grpcio-reflection==1.85.1",
    "rocksdict==0.3.29",
    # The web console's HTTP server (runs in the broker's own event loop).
    "aiohttp==3.14.5",
    # Durable schedules' cron expressions (time zones come from the stdlib's zoneinfo).
    "croniter==7.0.0",
    # Cluster mode's client of NATS JetStream (the replicated partition logs, leases).
    "nats-py==2.16.0",
]

setup(version=VERSION, install_requires=[f"durable-sdk=={VERSION}", *BROKER_ONLY])
