"""The services the broker serves: built from registered deployments' descriptors.

A service is routed to the newest deployment that hosts it; invocations stay pinned to
the deployment they started on. Service kinds and keys come from the durable options in
the descriptors (read from the `FileDescriptorProto`s, where the options are parsed with
our extensions known).
"""

from __future__ import annotations

import dataclasses

from durable.v1 import ingress_pb2, journal_pb2, options_pb2, protocol_pb2, storage_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

Deployment = storage_pb2.DeploymentRecord

KIND_NAMES = {
    options_pb2.SERVICE_KIND_UNSPECIFIED: "service",
    options_pb2.VIRTUAL_OBJECT: "virtual_object",
    options_pb2.WORKFLOW: "workflow",
}


class RegistrationError(ValueError):
    """The endpoint's services cannot be served as declared."""


@dataclasses.dataclass(frozen=True)
class Method:
    """One handler as the broker sees it."""

    name: str
    input_type: type[Message]
    output_type: type[Message]
    shared: bool
    key_field: str | None


@dataclasses.dataclass(frozen=True)
class Service:
    """A routable service."""

    name: str
    kind: str
    deployment_id: str
    methods: dict[str, Method]

    @property
    def keyed(self) -> bool:
        """Virtual objects and workflows are addressed by key."""
        return self.kind != "service"


def _messages(
    files: descriptor_pb2.FileDescriptorSet,
) -> dict[str, descriptor_pb2.DescriptorProto]:
    out: dict[str, descriptor_pb2.DescriptorProto] = {}

    def visit(prefix: str, messages: list[descriptor_pb2.DescriptorProto]) -> None:
        for m in messages:
            out[f"{prefix}.{m.name}"] = m
            visit(f"{prefix}.{m.name}", list(m.nested_type))

    for f in files.file:
        visit(f".{f.package}" if f.package else "", list(f.message_type))
    return out


def _services(
    files: descriptor_pb2.FileDescriptorSet,
) -> dict[str, tuple[descriptor_pb2.FileDescriptorProto, descriptor_pb2.ServiceDescriptorProto]]:
    out = {}
    for f in files.file:
        for s in f.service:
            out[f"{f.package}.{s.name}" if f.package else s.name] = (f, s)
    return out


class Registry:
    """Deployments and the services they make routable."""

    def __init__(self) -> None:
        self._deployments: dict[str, Deployment] = {}
        self._services: dict[str, Service] = {}
        self.pool = descriptor_pool.DescriptorPool()
        self._rebuild({})

    def deployments(self) -> list[Deployment]:
        """Every deployment, oldest first."""
        return sorted(self._deployments.values(), key=lambda d: (d.created_at_ms, d.id))

    def deployment(self, deployment_id: str) -> Deployment | None:
        """A deployment by id."""
        return self._deployments.get(deployment_id)

    def by_uri(self, uri: str) -> Deployment | None:
        """The deployment registered for `uri`, if any."""
        return next((d for d in self._deployments.values() if d.uri == uri), None)

    def retry_policy(self, service: str, method: str) -> protocol_pb2.RetryPolicy | None:
        """The retry policy the hosting deployment declared for a handler, if any."""
        target = self._services.get(service)
        deployment = self._deployments.get(target.deployment_id) if target else None
        if deployment is None:
            return None
        for p in deployment.retry_policies:
            if p.service == service and p.method == method:
                return p.policy
        return None

    def services(self) -> list[Service]:
        """Every routable service, by name."""
        return [self._services[name] for name in sorted(self._services)]

    def service(self, name: str) -> Service | None:
        """A routable service by name."""
        return self._services.get(name)

    def add(self, deployment: Deployment) -> None:
        """Adds or replaces a deployment and rebuilds the routing table.

        Raises:
            RegistrationError: the deployment's services cannot be served.
        """
        self.check(deployment)
        candidate = dict(self._deployments)
        candidate[deployment.id] = deployment
        self._rebuild(candidate)

    def remove(self, deployment_id: str) -> None:
        """Drops a deployment; its services route to the next newest that hosts them."""
        remaining = {k: v for k, v in self._deployments.items() if k != deployment_id}
        self._rebuild(remaining)

    def check(self, deployment: Deployment) -> None:
        """Validates a deployment's services without adding it.

        Raises:
            RegistrationError: naming the service, method or field at fault.
        """
        services = _services(deployment.files)
        messages = _messages(deployment.files)
        if not deployment.services:
            raise RegistrationError("the endpoint hosts no services")
        for name in deployment.services:
            if name not in services:
                raise RegistrationError(
                    f"service {name} is missing from the endpoint's descriptors"
                )
            _, proto = services[name]
            kind = proto.options.Extensions[options_pb2.service_kind]
            keyed = kind != 0
            if kind == options_pb2.WORKFLOW:
                runs = [
                    m.name
                    for m in proto.method
                    if m.options.Extensions[options_pb2.handler_kind] != options_pb2.SHARED
                ]
                if len(runs) != 1:
                    raise RegistrationError(
                        f"workflow {name} needs exactly one run (non-shared) handler, has "
                        f"{len(runs)}: mark the others with (durable.v1.handler_kind) = SHARED"
                    )
            for m in proto.method:
                if m.client_streaming or m.server_streaming:
                    raise RegistrationError(
                        f"{name}/{m.name} is a streaming method; durable handlers are unary"
                    )
                if keyed:
                    keys = [
                        f
                        for f in messages[m.input_type].field
                        if f.options.Extensions[options_pb2.key]
                    ]
                    if (
                        len(keys) != 1
                        or keys[0].type != descriptor_pb2.FieldDescriptorProto.TYPE_STRING
                    ):
                        raise RegistrationError(
                            f"{name}/{m.name}: the request {m.input_type.lstrip('.')} of a keyed "
                            "service needs exactly one string field marked "
                            "[(durable.v1.key) = true]"
                        )

    def _rebuild(self, deployments: dict[str, Deployment]) -> None:
        ordered = sorted(deployments.values(), key=lambda d: (d.created_at_ms, d.id))
        pool = descriptor_pool.DescriptorPool()
        added: set[str] = set()
        # The ingress's own services (health and reflection included, so that grpcurl can
        # resolve `grpc.health.v1.Health/Check` as on any gRPC server) come first.
        for own in (
            journal_pb2.DESCRIPTOR,
            ingress_pb2.DESCRIPTOR,
            health_pb2.DESCRIPTOR,
            reflection_pb2.DESCRIPTOR,
        ):
            own_file = descriptor_pb2.FileDescriptorProto()
            own.CopyToProto(own_file)
            added.add(own_file.name)
            pool.AddSerializedFile(own_file.SerializeToString())
        # Newest files win when two deployments ship different versions of one file.
        for d in reversed(ordered):
            for f in d.files.file:
                if f.name not in added:
                    added.add(f.name)
                    pool.AddSerializedFile(f.SerializeToString())
        routes: dict[str, Service] = {}
        for d in ordered:
            services = _services(d.files)
            messages = _messages(d.files)
            for name in d.services:
                _, proto = services[name]
                kind = KIND_NAMES.get(proto.options.Extensions[options_pb2.service_kind], "service")
                methods = {}
                for m in proto.method:
                    key_field = next(
                        (
                            f.name
                            for f in messages[m.input_type].field
                            if f.options.Extensions[options_pb2.key]
                        ),
                        None,
                    )
                    methods[m.name] = Method(
                        name=m.name,
                        input_type=message_factory.GetMessageClass(
                            pool.FindMessageTypeByName(m.input_type.lstrip("."))
                        ),
                        output_type=message_factory.GetMessageClass(
                            pool.FindMessageTypeByName(m.output_type.lstrip("."))
                        ),
                        shared=m.options.Extensions[options_pb2.handler_kind] == options_pb2.SHARED,
                        key_field=key_field if kind != "service" else None,
                    )
                routes[name] = Service(name=name, kind=kind, deployment_id=d.id, methods=methods)
        self._deployments = deployments
        self._services = routes
        self.pool = pool


class BadRequest(Exception):
    """A call the broker rejects before journaling anything."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def resolve(
    registry: Registry, service: str, method: str, body: bytes
) -> tuple[Service, Method, str]:
    """Finds the target of a call and extracts its key.

    Raises:
        BadRequest: UNIMPLEMENTED for an unknown service or method, INVALID_ARGUMENT for
            a body that does not parse or a keyed call without its key.
    """
    svc = registry.service(service)
    if svc is None:
        raise BadRequest(12, f"unknown service {service}: no registered deployment hosts it")
    m = svc.methods.get(method)
    if m is None:
        raise BadRequest(12, f"unknown method {method} of service {service}")
    try:
        message = m.input_type.FromString(body)
    except Exception as e:  # DecodeError and friends
        raise BadRequest(
            3, f"the request body does not parse as {m.input_type.DESCRIPTOR.full_name}: {e}"
        ) from None
    key = ""
    if m.key_field is not None:
        key = str(getattr(message, m.key_field))
        if not key:
            raise BadRequest(
                3,
                f"missing key: {service} is keyed by the field {m.key_field!r} of "
                f"{m.input_type.DESCRIPTOR.full_name}, which must be set",
            )
    return svc, m, key
