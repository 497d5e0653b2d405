"""Binding handlers to a proto service."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message

from durable.v1 import options_pb2

from ._retry import RetryPolicy

HandlerFn = Callable[[Any, Any], Awaitable[Message]]


@dataclasses.dataclass(frozen=True)
class Handler:
    """One handler: its method, message types and function."""

    name: str
    fn: HandlerFn
    input_type: type[Message]
    output_type: type[Message]
    shared: bool
    retry_policy: RetryPolicy | None = None


class Servicer:
    """Base of the generated `<Service>Servicer` classes.

    Set `RETRY_POLICY` (every handler) or `RETRY_POLICIES` (by method name) on a
    subclass to change how the broker retries its failed attempts.
    """

    SERVICE_DESCRIPTOR: ClassVar[descriptor.ServiceDescriptor]
    RETRY_POLICY: ClassVar[RetryPolicy | None] = None
    RETRY_POLICIES: ClassVar[dict[str, RetryPolicy]] = {}


class Service:
    """A proto service whose handlers run durably.

    Either decorate functions::

        flights = durable.Service(flights_pb2.DESCRIPTOR.services_by_name["Flights"])

        @flights.handler("Reserve")
        async def reserve(ctx: durable.ObjectContext, req: ReserveRequest) -> BookingStatus: ...

    or subclass the generated `FlightsServicer` and pass an instance to `durable.serve`.

    Args:
        descriptor: The service's descriptor from the generated `_pb2` module.
    """

    def __init__(
        self, descriptor: descriptor.ServiceDescriptor, retry_policy: RetryPolicy | None = None
    ) -> None:
        self.descriptor = descriptor
        self.retry_policy = retry_policy
        self.handlers: dict[str, Handler] = {}

    @property
    def name(self) -> str:
        """The fully-qualified service name, e.g. `flights.Flights`."""
        return self.descriptor.full_name

    @property
    def kind(self) -> str:
        """ "service", "virtual_object" or "workflow", from the proto options."""
        kind = self.descriptor.GetOptions().Extensions[options_pb2.service_kind]
        return {options_pb2.VIRTUAL_OBJECT: "virtual_object", options_pb2.WORKFLOW: "workflow"}.get(
            kind, "service"
        )

    @property
    def keyed(self) -> bool:
        """Whether the service is a virtual object or a workflow."""
        return self.kind != "service"

    def handler(
        self, name: str | None = None, *, retry_policy: RetryPolicy | None = None
    ) -> Callable[[HandlerFn], HandlerFn]:
        """Registers an `async def handler(ctx, request) -> response` for method `name`
        (by default the function's name), optionally with its own retry policy."""

        def register(fn: HandlerFn) -> HandlerFn:
            self._add(name or fn.__name__, fn, retry_policy)
            return fn

        return register

    @classmethod
    def from_servicer(cls, servicer: Servicer) -> Service:
        """The service whose handlers are the methods a `Servicer` subclass overrides."""
        service = cls(servicer.SERVICE_DESCRIPTOR, retry_policy=servicer.RETRY_POLICY)
        for method in service.descriptor.methods:
            owner = next((k for k in type(servicer).__mro__ if method.name in vars(k)), None)
            # Methods still defined by the generated base are not implemented.
            if owner is None or "SERVICE_DESCRIPTOR" in vars(owner):
                continue
            service._add(
                method.name,
                getattr(servicer, method.name),
                servicer.RETRY_POLICIES.get(method.name),
            )
        return service

    def _add(self, name: str, fn: HandlerFn, retry_policy: RetryPolicy | None = None) -> None:
        method = self.descriptor.methods_by_name.get(name)
        if method is None:
            raise ValueError(f"{self.name} has no method {name!r}")
        if method.client_streaming or method.server_streaming:
            raise ValueError(f"{self.name}/{name}: only unary methods can be durable handlers")
        shared = method.GetOptions().Extensions[options_pb2.handler_kind] == options_pb2.SHARED
        self.handlers[name] = Handler(
            name=name,
            fn=fn,
            input_type=message_factory.GetMessageClass(method.input_type),
            output_type=message_factory.GetMessageClass(method.output_type),
            shared=shared,
            retry_policy=retry_policy or self.retry_policy,
        )
