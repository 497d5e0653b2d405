"""The handler logic that both bench servers run, durable or not, so they differ only in
what carries the call."""

from __future__ import annotations

from benchsvc import benchsvc_pb2 as pb


def echo(request: pb.EchoRequest) -> pb.EchoResponse:
    """Returns the request's payload: the cheapest handler there is."""
    return pb.EchoResponse(payload=request.payload)


def step(index: int) -> int:
    """One step of the `Steps` loop: a trivial side effect whose result is journaled."""
    return index
