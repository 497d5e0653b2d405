"""Which host names the console takes for its own (see `_app`'s guard)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether `host` (an address, `[v6]`, or a name) is a loopback one or localhost."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower().rstrip(".") == "localhost"  # "localhost." is the same name


def names_loopback(host_header: str) -> bool:
    """Whether a request's Host header names a loopback address or localhost, port
    aside."""
    host = host_header if host_header.endswith("]") else host_header.rsplit(":", 1)[0]
    return is_loopback(host)
