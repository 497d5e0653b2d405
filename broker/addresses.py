"""HOST:PORT strings, as every listener of the broker is given one (`--ingress`,
`--admin`, `--metrics`, `--console`, a worker's private ports)."""

from __future__ import annotations


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT, an IPv6 host without its brackets.

    Raises:
        ValueError: not HOST:PORT.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def with_port(address: str, port: int) -> str:
    """`address` with its port replaced (e.g. the one a `:0` bind actually got)."""
    return f"{address.rpartition(':')[0]}:{port}"
