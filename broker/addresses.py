"""HOST:PORT strings, as every listener of the broker is given one (`--ingress`,
`--admin`, `--metrics`, `--console`, a worker's private ports)."""

from __future__ import annotations

import errno
import socket

from durable import process


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT, an IPv6 host without its brackets.

    Raises:
        ValueError: not HOST:PORT.
    """
    host, _, port = address.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()):
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def with_port(address: str, port: int) -> str:
    """`address` with its port replaced (e.g. the one a `:0` bind actually got)."""
    return f"{address.rpartition(':')[0]}:{port}"


def listened(address: str) -> bool:
    """Whether something listens on `address` (`host:port`; port 0, an ephemeral one, is
    always free), or holds it bound without SO_REUSEADDR.

    The probe binds without SO_REUSEPORT (with SO_REUSEADDR, so that connections of an
    earlier run in TIME_WAIT do not count).

    Raises:
        OSError: the address cannot be bound for another reason (not this machine's).
    """
    host, port = split_address(address)
    if port == 0:
        return False
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def in_use(address: str) -> str:
    """`already in use by ...`, naming what listens on `address` when this process may
    see it."""
    return process.taken_by(split_address(address)[1])
