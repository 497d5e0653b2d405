"""Endpoint URIs: one canonical form, so that one endpoint is one deployment.

`http://127.0.0.1:9101/`, `127.0.0.1:9101`, `grpc://127.0.0.1:9101` and
`dns:///127.0.0.1:9101` all name the same plaintext gRPC endpoint; the broker stores,
compares and shows them as `http://127.0.0.1:9101`.
"""

from __future__ import annotations

import ipaddress
import re

# Far above any real host:port, far below gRPC's 8 KiB metadata limit (an error that
# quotes a URI must still fit in a status message).
MAX_URI_LENGTH = 2048

_PLAINTEXT_SCHEMES = ("http://", "grpc://", "h2c://", "dns:///", "dns:")
# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")


class BadUri(ValueError):
    """The text is not an endpoint URI the broker can dial; the message says why."""


def canonical(raw: str) -> str:
    """The canonical form of an endpoint URI: `http://HOST:PORT`.

    Accepts a plaintext scheme (`http://`, `grpc://`, `h2c://`, `dns:///`) or none, an
    optional trailing `/`, a host name, an IPv4 address or a bracketed IPv6 address, and
    a port from 1 to 65535. The host is lower-cased (names are case-insensitive).

    Raises:
        BadUri: naming what is wrong; never quoting more than `MAX_URI_LENGTH` characters.
    """
    if len(raw) > MAX_URI_LENGTH:
        raise BadUri(
            f"the endpoint URI is {len(raw)} characters long; the limit is {MAX_URI_LENGTH}"
        )
    uri = raw.strip()
    if not uri:
        raise BadUri("the endpoint URI is empty (expected http://HOST:PORT)")
    lowered = uri.lower()
    if lowered.startswith("https://"):
        raise BadUri(
            f"{raw!r}: the broker reaches endpoints over plaintext gRPC; use http://HOST:PORT"
        )
    for scheme in _PLAINTEXT_SCHEMES:
        if lowered.startswith(scheme):
            uri = uri[len(scheme) :]
            break
    else:
        if "://" in uri:
            raise BadUri(
                f"{raw!r}: unsupported scheme {uri.split('://', 1)[0]!r} (expected http://HOST:PORT)"
            )
    if uri.endswith("/"):
        uri = uri[:-1]
    if any(c in uri for c in "/?#@") or any(c.isspace() for c in uri):
        raise BadUri(
            f"{raw!r} is not an endpoint URI: expected http://HOST:PORT, without a path, "
            "query or user name"
        )
    host, sep, port = uri.rpartition(":")
    if not sep or not host:
        raise BadUri(f"{raw!r} is not an endpoint URI: expected http://HOST:PORT")
    return f"http://{_host(raw, host)}:{_port(raw, port)}"


def comparable(uri: str) -> str:
    """`uri` in canonical form, or as it is when it has none (a record stored before
    URIs were checked), so that it still equals itself."""
    try:
        return canonical(uri)
    except BadUri:
        return uri


def _port(raw: str, port: str) -> int:
    if not port.isascii() or not port.isdigit():
        raise BadUri(f"{raw!r}: the port {port!r} is not a number (expected http://HOST:PORT)")
    value = int(port)
    if not 1 <= value <= 65535:
        raise BadUri(f"{raw!r}: the port {value} is out of range (1 to 65535)")
    return value


def _host(raw: str, host: str) -> str:
    if host.startswith("[") and host.endswith("]"):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            raise BadUri(f"{raw!r}: {host} is not an IPv6 address") from None
    if ":" in host:
        raise BadUri(f"{raw!r}: write an IPv6 address in brackets, e.g. http://[::1]:9101")
    lowered = host.lower().rstrip(".")
    if not lowered.isascii() or not _HOST_NAME.fullmatch(lowered):
        raise BadUri(f"{raw!r}: {host!r} is not a host name or IP address")
    if all(label.isdigit() for label in lowered.split(".")):
        try:
            return str(ipaddress.IPv4Address(lowered))
        except ValueError:
            raise BadUri(f"{raw!r}: {host} is not an IPv4 address") from None
    return lowered
