"""A raw service endpoint (no SDK) whose replies a test scripts message by message.

It speaks every transport the broker drives: `InvokeOnce` (request/response),
`Invoke` (a stream per attempt) and `Multiplex` (one stream per deployment), chosen by
`transport`. A script maps an attempt's start message to the messages the endpoint
sends back, in order; it may break the protocol in any way a test wants.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import Any

import durable
import grpc
from durable._endpoint import _files
from durable.v1 import journal_pb2, protocol_pb2
from google.protobuf import descriptor as _descriptor

from tests.support import free_port

# Messages to send, or raw bytes sent as the whole reply (or frame) to break the framing.
Script = Callable[[protocol_pb2.StartMessage], Sequence[protocol_pb2.InvokeResponse] | bytes]
TRANSPORTS = ("request-response", "stream", "multiplex")


def entry(index: int, **command: Any) -> protocol_pb2.InvokeResponse:
    """A proposed journal entry, e.g. `entry(1, output=..., result=...)`."""
    return protocol_pb2.InvokeResponse(
        entry=protocol_pb2.ProposedEntry(index=index, entry=journal_pb2.JournalEntry(**command))
    )


def end() -> protocol_pb2.InvokeResponse:
    """The attempt's last message after its output."""
    return protocol_pb2.InvokeResponse(end=protocol_pb2.EndMessage())


class FakeEndpoint:
    """Serves `services` on a free loopback port, answering attempts with `script`.

    Args:
        services: The service descriptors it claims to host.
        script: What to send for an attempt, given its start message.
        transport: One of `TRANSPORTS`: what Discover advertises and which RPC serves.
    """

    def __init__(
        self,
        services: Sequence[_descriptor.ServiceDescriptor],
        script: Script,
        transport: str = "multiplex",
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}")
        self.address = f"127.0.0.1:{free_port()}"
        self.uri = f"http://{self.address}"
        self._script = script
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        discover = protocol_pb2.DiscoverResponse(
            services=[s.full_name for s in services],
            files=_files([durable.Service(s) for s in services]),
            protocol_version=1,
            request_response=transport == "request-response",
            multiplex=transport == "multiplex",
        ).SerializeToString()
        methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Discover": grpc.unary_unary_rpc_method_handler(lambda request, context: discover),
        }
        if transport == "request-response":
            methods["InvokeOnce"] = grpc.unary_unary_rpc_method_handler(
                self._invoke_once, request_deserializer=protocol_pb2.InvokeRequest.FromString
            )
        elif transport == "stream":
            methods["Invoke"] = grpc.stream_stream_rpc_method_handler(
                self._invoke, request_deserializer=protocol_pb2.InvokeRequest.FromString
            )
        else:
            methods["Multiplex"] = grpc.stream_stream_rpc_method_handler(
                self._multiplex, request_deserializer=protocol_pb2.MultiplexRequest.FromString
            )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("durable.v1.ServiceEndpoint", methods),)
        )
        self._server.add_insecure_port(self.address)

    def _invoke_once(self, request: protocol_pb2.InvokeRequest, context: Any) -> bytes:
        messages = self._script(request.start)
        if isinstance(messages, bytes):
            return messages
        return protocol_pb2.InvokeOnceResponse(messages=messages).SerializeToString()

    def _invoke(
        self, requests: Iterator[protocol_pb2.InvokeRequest], context: Any
    ) -> Iterator[bytes]:
        messages = self._script(next(requests).start)
        if isinstance(messages, bytes):
            yield messages
            return
        for message in messages:
            yield message.SerializeToString()

    def _multiplex(
        self, requests: Iterator[protocol_pb2.MultiplexRequest], context: Any
    ) -> Iterator[bytes]:
        for frame in requests:
            for item in frame.items:
                if not item.message.HasField("start"):
                    continue
                messages = self._script(item.message.start)
                if isinstance(messages, bytes):
                    yield messages
                    continue
                items = [
                    protocol_pb2.AttemptResponse(attempt_id=item.attempt_id, message=message)
                    for message in messages
                ]
                yield protocol_pb2.MultiplexResponse(items=items).SerializeToString()

    def __enter__(self) -> FakeEndpoint:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(None)
