"""Taking the broker's messages as a hostile or buggy peer may send them.

grpc parses each request before the servicer sees it; a body that does not parse would
reach the caller as UNKNOWN and log a traceback here, as if the endpoint were broken.
The endpoint registers its methods with `durable.wire.lenient` parsers instead: a body
that does not parse arrives as `Unparsed`, and the method refuses it with
INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc
from google.protobuf import message as protobuf_message

from durable.v1 import protocol_pb2, protocol_pb2_grpc

from ._errors import ProtocolViolation
from .wire import Unparsed, lenient

M = TypeVar("M", bound=protobuf_message.Message)


def _lenient(message_type: type[M]) -> Callable[[bytes], M | Unparsed]:
    return lenient(message_type.FromString, message_type.DESCRIPTOR.full_name)


def add_to_server(
    servicer: protocol_pb2_grpc.ServiceEndpointServicer, server: grpc.aio.Server
) -> None:
    """Serves `durable.v1.ServiceEndpoint` with `durable.wire.lenient` request parsers (what the
    generated `add_ServiceEndpointServicer_to_server` does, but with grpc's own)."""
    p = protocol_pb2
    handlers = {
        "Discover": grpc.unary_unary_rpc_method_handler(
            servicer.Discover,
            request_deserializer=_lenient(p.DiscoverRequest),
            response_serializer=p.DiscoverResponse.SerializeToString,
        ),
        "Invoke": grpc.stream_stream_rpc_method_handler(
            servicer.Invoke,
            request_deserializer=_lenient(p.InvokeRequest),
            response_serializer=p.InvokeResponse.SerializeToString,
        ),
        "InvokeOnce": grpc.unary_unary_rpc_method_handler(
            servicer.InvokeOnce,
            request_deserializer=_lenient(p.InvokeRequest),
            response_serializer=p.InvokeOnceResponse.SerializeToString,
        ),
        "Multiplex": grpc.stream_stream_rpc_method_handler(
            servicer.Multiplex,
            request_deserializer=_lenient(p.MultiplexRequest),
            response_serializer=p.MultiplexResponse.SerializeToString,
        ),
    }
    name = "durable.v1.ServiceEndpoint"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)  # type: ignore[attr-defined]


def check_start(request: protocol_pb2.InvokeRequest | Unparsed) -> protocol_pb2.StartMessage:
    """The start message `request` must be, as the first (or only) message of an attempt.

    Raises:
        ProtocolViolation: It does not parse, or is not a start.
    """
    if isinstance(request, Unparsed):
        raise ProtocolViolation(request.problem)
    if not request.HasField("start"):
        kind = request.WhichOneof("message") or "an empty message"
        raise ProtocolViolation(f"an attempt must begin with start, not {kind}")
    return request.start


def protocol_error(problem: str) -> protocol_pb2.InvokeResponse:
    """Ends an attempt because of what the broker sent (the broker retries it)."""
    error = protocol_pb2.ErrorMessage(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
        message=f"the endpoint rejected the broker's message: {problem}",
        entry_index=-1,
    )
    return protocol_pb2.InvokeResponse(error=error)
