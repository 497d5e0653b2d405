"""Access control: the admin token, TLS credentials, and the endpoint shared secret.

* `--admin-token` (`BROKER_ADMIN_TOKEN`): every admin call but health checks must carry
  `authorization: Bearer <token>`; others get UNAUTHENTICATED.
* `--tls-cert`/`--tls-key`: the ingress and admin ports serve TLS only.
* `--endpoint-secret` (`BROKER_ENDPOINT_SECRET`): sent to service endpoints as
  `x-durable-secret`, so an endpoint started with the same secret serves only us.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from .addresses import in_use, listened

ENDPOINT_SECRET_HEADER = "x-durable-secret"
# Health checks and the schema (reflection) stay open; they reveal no data.
_OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Rejects calls without the bearer token (health checks stay open)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the admin token must not be empty")
        self._expected = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = handler_call_details.method
        if method.startswith(_OPEN):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        if hmac.compare_digest(_bearer(str(metadata.get("authorization", ""))), self._expected):
            return await continuation(handler_call_details)
        return _deny(method)


def _bearer(authorization: str) -> bytes:
    """The credentials of a `Bearer` authorization; the scheme is case-insensitive and
    may be followed by any run of spaces (RFC 7235)."""
    scheme, _, credentials = authorization.strip().partition(" ")
    return credentials.strip().encode() if scheme.lower() == "bearer" else b""


def _deny(method: str) -> grpc.RpcMethodHandler[Any, Any]:
    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            f"{method} needs the admin token: pass --token or set BROKER_ADMIN_TOKEN",
        )

    handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(abort)
    return handler


def server_credentials(cert_path: str, key_path: str) -> grpc.ServerCredentials:
    """TLS credentials from PEM files."""
    with open(key_path, "rb") as k, open(cert_path, "rb") as c:
        return grpc.ssl_server_credentials([(k.read(), c.read())])


async def bind(
    server: grpc.aio.Server, address: str, tls_cert: str | None, tls_key: str | None
) -> int:
    """Binds `address` (with TLS when both files are given); returns the port.

    A server that cannot bind (the port taken, a certificate that does not load) is
    stopped here, on the event loop, before the error goes on: left to the garbage
    collector it would try to stop itself once the loop had closed, and print a
    traceback under the real error.
    """
    try:
        if tls_cert and tls_key:
            return server.add_secure_port(address, server_credentials(tls_cert, tls_key))
        return server.add_insecure_port(address)
    except BaseException as e:
        await server.stop(None)
        # grpc says only "Failed to bind to address": say why when it is a listener.
        if isinstance(e, RuntimeError) and _listened(address):
            raise RuntimeError(f"cannot listen on {address}: it is {in_use(address)}") from None
        raise


def _listened(address: str) -> bool:
    try:
        return listened(address)
    except (OSError, ValueError):
        return False  # not this machine's address, or not HOST:PORT: grpc's error stands
