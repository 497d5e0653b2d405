"""What `python -m broker --workers N` decides before it starts anything: whether the
start is possible (nothing is written when it is not), the partitions' private ports,
the public ingress port every worker binds, and each worker's command line.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection

from durable import process

from .. import addresses
from ..config import Settings
from . import layout
from .directory import Directory, PartitionAddress

# Flags the supervisor keeps for itself: the worker learns its partitions from the
# directory, and the public metrics and console addresses are the supervisor's.
_SUPERVISOR_FLAGS = ("--workers", "--partitions", "--metrics", "--console")
# Their variables, dropped from the workers' environment for the same reason.
SUPERVISOR_ENV = ("BROKER_WORKERS", "BROKER_PARTITIONS", "BROKER_METRICS", "BROKER_CONSOLE")


def check(settings: Settings) -> int:
    """The partition count of this start, refusing what cannot work; writes nothing.

    Raises:
        layout.LayoutError: the message says what to change.
    """
    assert settings.workers is not None
    if settings.data_dir is None:
        raise layout.LayoutError(
            "--workers needs a --data-dir: each partition keeps its journal on disk, so a "
            "restarted worker resumes its partitions"
        )
    return layout.check(settings.data_dir, settings.workers, settings.partitions)


def check_single(settings: Settings) -> None:
    """Refuses a single-process start that asks for partitions or opens a workers' data dir.

    Raises:
        layout.LayoutError: the message says what to change.
    """
    if settings.partitions is not None:
        raise layout.LayoutError(
            f"--partitions {settings.partitions} needs --workers: a single-process broker "
            "has one partition"
        )
    if settings.data_dir is not None:
        layout.refuse_cluster_dir(settings.data_dir)


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT.

    Raises:
        layout.LayoutError: not HOST:PORT.
    """
    try:
        return addresses.split_address(address)
    except ValueError as e:
        raise layout.LayoutError(str(e)) from None


def resolve_ingress(address: str) -> str:
    """The public ingress with a concrete port: every worker must bind the same one."""
    host, port = split_address(address)
    if port:
        return address
    bracketed = f"[{host}]" if ":" in host else host
    return f"{bracketed}:{process.free_ports(1, host)[0]}"


def plan(workers: int, partitions: int, metrics: bool, avoid: Collection[int] = ()) -> Directory:
    """Every partition's private addresses on 127.0.0.1, all distinct.

    Args:
        workers: The worker processes.
        partitions: The partition count.
        metrics: Whether each partition also serves /metrics on a private port.
        avoid: Ports the broker's own servers bind later (its admin API, metrics and
            console, bound once the workers are up): free now, not to be taken.
    """
    # Below the ephemeral range: a crashed worker binds its ports again when restarted,
    # and no outgoing connection can have taken them meanwhile.
    ports = iter(process.free_ports(partitions * (3 if metrics else 2), avoid=avoid))

    def address() -> str:
        return f"127.0.0.1:{next(ports)}"

    return Directory(
        workers=workers,
        secret=secrets.token_urlsafe(24),
        partitions=[
            PartitionAddress(
                ingress=address(), admin=address(), metrics=address() if metrics else None
            )
            for _ in range(partitions)
        ],
    )


def worker_argv(argv: list[str], ingress: str) -> list[str]:
    """The broker flags for a worker: `argv` without the supervisor's own flags, and
    the public ingress with its concrete port (the last `--ingress` wins)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _SUPERVISOR_FLAGS:
            skip = "=" not in arg
            continue
        out.append(arg)
    return [*out, "--ingress", ingress]
