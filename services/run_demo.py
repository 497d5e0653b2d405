"""`make run`: the broker and the four demo services, registered and ready to call.

Starts every process, waits until each answers gRPC health checks, registers the
services with the broker's admin API, prints how to call them, and on Ctrl-C, SIGTERM
or SIGHUP (the terminal closed) stops them all (SIGTERM, then SIGKILL after 10 s). If any
process dies on its own, it says so, stops the rest and exits non-zero.

Every port is checked before anything starts: a port already in use (another `make run`
still running, say) is named with the variable that moves it, and nothing is started.
Addresses come from the variables the processes read themselves: `BROKER_INGRESS`,
`BROKER_ADMIN`, `BROKER_DATA_DIR`, `BROKER_METRICS` (off unless set), `FLIGHTS_LISTEN`,
`CARS_LISTEN`, `PAYMENTS_LISTEN`, `TRIPS_LISTEN`.
"""

from __future__ import annotations

import os
import sys

from services._launch import (
    BIN,
    ROOT,
    Child,
    check_ports,
    register,
    run,
    shown,
    spawn,
    wait_all_healthy,
)
from services.trips.notifications import DEFAULT_PATH as NOTIFICATION_LOG
from services.trips.service import RUN_TYPES

INGRESS = os.environ.get("BROKER_INGRESS", "127.0.0.1:9090")
ADMIN = os.environ.get("BROKER_ADMIN", "127.0.0.1:9091")
DATA_DIR = os.environ.get("BROKER_DATA_DIR", ".data/broker")
# The broker reads BROKER_METRICS itself; it is here only so its port is checked too.
METRICS = os.environ.get("BROKER_METRICS", "")
# The web console (the broker serves it; off unless the flag is given).
CONSOLE = os.environ.get("BROKER_CONSOLE", "127.0.0.1:9093")
# (module under services/, its address); the same variables the services read.
SERVICES = [
    ("flights", os.environ.get("FLIGHTS_LISTEN", "127.0.0.1:9101")),
    ("cars", os.environ.get("CARS_LISTEN", "127.0.0.1:9102")),
    ("payments", os.environ.get("PAYMENTS_LISTEN", "127.0.0.1:9103")),
    ("trips", os.environ.get("TRIPS_LISTEN", "127.0.0.1:9104")),
]
# What listens where, and the variable that moves it.
SERVICE_PORTS = [(name, address, f"{name.upper()}_LISTEN") for name, address in SERVICES]
PORTS = [
    ("the broker's ingress", INGRESS, "BROKER_INGRESS"),
    ("the broker's admin API", ADMIN, "BROKER_ADMIN"),
    ("the broker's console", CONSOLE, "BROKER_CONSOLE"),
    *([("the broker's metrics", METRICS, "BROKER_METRICS")] if METRICS else []),
    *SERVICE_PORTS,
]


def _check_ports() -> None:
    check_ports(
        PORTS,
        "the demo",
        "Is another `make run` still running? Stop it, or move the ports with the "
        "variables named, e.g. BROKER_INGRESS=127.0.0.1:9190 make run",
    )


def start_services(children: list[Child]) -> None:
    """Starts the four demo services, each appended to `children` once started."""
    for name, address in SERVICES:
        children.append(spawn(name, ["-m", f"services.{name}", "--listen", address], [address]))


def register_services(admin: str) -> None:
    """Registers the four demo services through the admin API at `admin`."""
    register(admin, [f"http://{address}" for _, address in SERVICES])


def call_examples(ingress: str) -> str:
    """How to call the demo through `ingress`."""
    failures = ", ".join(t for t in RUN_TYPES if t.startswith("fail"))
    grpcurl = f"{shown(BIN / 'grpcurl')} -plaintext"
    call = f"{grpcurl} -d"
    return f"""Book a trip:
  {call} '{{}}' {ingress} trips.Trips/Reserve
Make a step fail, so the saga compensates (run_type: {failures}):
  {call} '{{"run_type": "failPayment"}}' {ingress} trips.Trips/Reserve
A flaky payment: it fails twice, is retried, and the trip succeeds:
  {call} '{{"run_type": "flakyPayment"}}' {ingress} trips.Trips/Reserve
A booking's state (the tripId from a response; also cars.Cars/Get, payments.Payments/Get):
  {call} '{{"trip_id": "<tripId>"}}' {ingress} flights.Flights/Get
What the ingress serves:
  {grpcurl} {ingress} list
Notifications: {shown(ROOT / os.environ.get("TRIPS_NOTIFICATION_LOG", NOTIFICATION_LOG))}"""


def _usage() -> str:
    return f"""
The holiday demo is running: ingress {INGRESS}, admin {ADMIN}.
Console: http://{CONSOLE}/

{call_examples(INGRESS)}
Operate the broker: {shown(BIN / "brokerctl")} --help

Press Ctrl-C to stop everything.
"""


def _start(children: list[Child]) -> str:
    broker_args = ["-m", "broker", "--ingress", INGRESS, "--admin", ADMIN, "--console", CONSOLE]
    children.append(spawn("broker", [*broker_args, "--data-dir", DATA_DIR], [INGRESS, ADMIN]))
    start_services(children)
    wait_all_healthy(children)
    register_services(ADMIN)
    return _usage()


def main() -> int:
    """Runs the demo until Ctrl-C/SIGTERM/SIGHUP (exit 0) or until a process fails (exit 1)."""
    return run("the demo", _check_ports, _start)


if __name__ == "__main__":
    sys.exit(main())
