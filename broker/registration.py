"""Registering an endpoint: its URI checked, its discovery answer fetched and checked.

Every way a registration can fail maps to a status a person can act on:
  INVALID_ARGUMENT     the URI is not one the broker can dial (too long, no port, a
                       port out of range, a path, an unsupported scheme); a service
                       that cannot be served as declared (see `registry.check`), or
                       one named like the broker's own (`durable.v1.*`, gRPC health
                       and reflection)
  UNAVAILABLE          the endpoint cannot be reached, or refused the call (the
                       details carry its status); the broker cannot write its journal
  FAILED_PRECONDITION  something answers there but breaks the protocol: it does not
                       serve Discover, its answer does not parse, names no services
                       (or one twice), speaks another protocol version, or sends
                       descriptors that do not build; with `check`, recorded
                       journals do not replay on it (every divergence listed, see
                       `broker.deploy_check`)
"""

from __future__ import annotations

import re

import grpc
from durable.v1 import protocol_pb2, protocol_pb2_grpc

from . import endpoint_uri
from .invoker import Invoker
from .registry import Registry

# The broker's own services (ingress, admin, health, reflection) live under these.
RESERVED_PREFIXES = ("durable.v1.", "grpc.health.", "grpc.reflection.")
# The service protocol version this broker speaks (`DiscoverResponse.protocol_version`).
PROTOCOL_VERSION = 1
DISCOVER_TIMEOUT_S = 10.0
# What a deployment id looks like (`dp_` + 16 hex digits when the broker picks one).
_DEPLOYMENT_ID = re.compile(r"dp_[0-9a-f]{1,64}")


class Refused(Exception):
    """A registration the broker turns down, with the status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def canonical_uri(raw: str) -> str:
    """The URI in the one form the broker stores and compares.

    Raises:
        Refused: INVALID_ARGUMENT, saying what is wrong with it.
    """
    try:
        return endpoint_uri.canonical(raw)
    except endpoint_uri.BadUri as e:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None


async def discover(invoker: Invoker, uri: str) -> protocol_pb2.DiscoverResponse:
    """Asks the endpoint at `uri` (canonical) what it hosts; checks the answer's shape.

    Raises:
        Refused: UNAVAILABLE when it cannot be reached or refuses the call,
            FAILED_PRECONDITION when its answer breaks the protocol.
    """
    channel = invoker.new_channel(uri)
    try:
        stub = protocol_pb2_grpc.ServiceEndpointStub(channel)
        reply: protocol_pb2.DiscoverResponse | None = await stub.Discover(
            protocol_pb2.DiscoverRequest(), timeout=DISCOVER_TIMEOUT_S, metadata=invoker.metadata
        )
    except grpc.aio.AioRpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the server at {uri} does not serve durable.v1.ServiceEndpoint/Discover "
                f"({e.details()}): is it a durable service endpoint (durable.serve)?",
            ) from None
        raise Refused(
            grpc.StatusCode.UNAVAILABLE,
            f"cannot discover the endpoint at {uri}: {e.code().name}: {e.details()}",
        ) from None
    finally:
        await channel.close(None)
    return check_reply(uri, reply)


def check_reply(
    uri: str, reply: protocol_pb2.DiscoverResponse | None
) -> protocol_pb2.DiscoverResponse:
    """`reply` if it is a well-formed discovery answer.

    Raises:
        Refused: FAILED_PRECONDITION naming the endpoint and what is wrong.
    """

    def violation(what: str) -> Refused:
        return Refused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"protocol violation by the endpoint at {uri}: {what}",
        )

    # grpc.aio hands over None for a reply it cannot parse.
    if reply is None:
        raise violation("its Discover reply does not parse as a durable.v1.DiscoverResponse")
    if reply.protocol_version == 0:
        raise violation(
            "its Discover reply names no protocol version (an empty or foreign message); "
            "is it a durable service endpoint?"
        )
    if reply.protocol_version != PROTOCOL_VERSION:
        raise violation(
            f"it speaks service protocol version {reply.protocol_version}; this broker "
            f"speaks {PROTOCOL_VERSION} (upgrade the SDK or the broker)"
        )
    if not reply.services:
        raise violation("its Discover reply lists no services")
    listed = list(reply.services)
    twice = sorted({name for name in listed if listed.count(name) > 1})
    if twice:
        raise violation(f"its Discover reply lists {', '.join(twice)} more than once")
    if not reply.files.file:
        raise violation("its Discover reply carries no descriptor files")
    for name in listed:
        if name.startswith(RESERVED_PREFIXES):
            # The broker serves these itself: calls would never reach the endpoint.
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the endpoint at {uri} hosts {name}, a name the broker reserves for its "
                f"own services ({', '.join(p + '*' for p in RESERVED_PREFIXES)}): rename it",
            )
    return reply


def check_wanted_id_form(wanted_id: str) -> None:
    """Refuses a front-chosen deployment id (`RegisterDeploymentRequest.deployment_id`)
    that is not one the broker could have made ("" passes: none was asked for).

    Raises:
        Refused: INVALID_ARGUMENT.
    """
    if wanted_id and not _DEPLOYMENT_ID.fullmatch(wanted_id):
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"deployment_id {wanted_id[:80]!r} is not dp_ and hex digits; leave it empty "
            "(only a --workers broker's front sets it)",
        )


def check_wanted_id(registry: Registry, wanted_id: str, uri: str, current: str | None) -> None:
    """Refuses a front-chosen id that would give this partition a second id for `uri`
    (`current`: its id here, or the one a removed deployment of it had), or give `uri`
    the id of another endpoint's deployment: partitions must agree on both.

    Raises:
        Refused: FAILED_PRECONDITION.
    """
    if current and current != wanted_id:
        raise Refused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{uri} is deployment {current} in this partition, not {wanted_id}",
        )
    holder = registry.deployment(wanted_id)
    if holder is not None and endpoint_uri.comparable(holder.uri) != uri:
        raise Refused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{wanted_id} is the deployment of {holder.uri} in this partition, not of {uri}",
        )
