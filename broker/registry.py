"""The services the broker serves: built from registered deployments' descriptors.

A service is routed to the newest deployment that hosts it; invocations stay pinned to
the deployment they started on. Every deployment keeps its own descriptor pool: versions
of one contract may rename messages or move them between files without clashing.
Service kinds and keys come from the durable options in the descriptors (read from the
`FileDescriptorProto`s, where the options are parsed with our extensions known).
"""

from __future__ import annotations

import dataclasses

from durable.v1 import options_pb2, protocol_pb2, storage_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from . import codes, endpoint_uri
from .core.limits import rate_problem
from .storage import keys

Deployment = storage_pb2.DeploymentRecord

KIND_NAMES = {
    options_pb2.SERVICE_KIND_UNSPECIFIED: "service",
    options_pb2.VIRTUAL_OBJECT: "virtual_object",
    options_pb2.WORKFLOW: "workflow",
}


class RegistrationError(ValueError):
    """The endpoint's services cannot be served as declared (INVALID_ARGUMENT)."""


class ProtocolViolation(RegistrationError):
    """The endpoint's discovery answer breaks the protocol: descriptors that do not
    build, services it does not describe (FAILED_PRECONDITION)."""


@dataclasses.dataclass(frozen=True)
class Method:
    """One handler as the broker sees it."""

    name: str
    input_type: type[Message]
    output_type: type[Message]
    shared: bool
    key_field: str | None
    # False when the deployment's endpoint has no handler for it (left unimplemented):
    # calls are refused rather than invoked and retried until someone notices.
    implemented: bool = True


@dataclasses.dataclass(frozen=True)
class Service:
    """A routable service."""

    name: str
    kind: str
    deployment_id: str
    methods: dict[str, Method]
    # (concurrency, rate) the `.proto` declares, by method ("" for the whole service).
    limits: dict[str, tuple[int, float]] = dataclasses.field(default_factory=dict)

    @property
    def keyed(self) -> bool:
        """Virtual objects and workflows are addressed by key."""
        return self.kind != "service"


@dataclasses.dataclass(frozen=True)
class Built:
    """A deployment ready to serve: its own descriptor pool and the services in it.

    Each deployment keeps its own pool, so two versions of a contract (a renamed
    message, the same messages in a file of another name) never meet in one pool, and
    invocations pinned to the older one keep the types they began with.
    """

    record: Deployment
    pool: descriptor_pool.DescriptorPool
    services: dict[str, Service]


class Registry:
    """Deployments and the services they make routable."""

    def __init__(self) -> None:
        self._deployments: dict[str, Built] = {}
        self._services: dict[str, Service] = {}

    def deployments(self) -> list[Deployment]:
        """Every deployment, oldest first."""
        return [b.record for b in self._ordered()]

    def _ordered(self) -> list[Built]:
        return sorted(
            self._deployments.values(), key=lambda b: (b.record.created_at_ms, b.record.id)
        )

    def deployment(self, deployment_id: str) -> Deployment | None:
        """A deployment by id."""
        built = self._deployments.get(deployment_id)
        return built.record if built else None

    def at(self, deployment_id: str) -> str:
        """` at URI` of a deployment it has, for messages naming where it runs; ""."""
        deployment = self.deployment(deployment_id)
        return f" at {deployment.uri}" if deployment is not None else ""

    def by_uri(self, uri: str) -> Deployment | None:
        """The deployment registered for `uri` (compared in canonical form), if any."""
        wanted = endpoint_uri.comparable(uri)
        return next(
            (
                b.record
                for b in self._deployments.values()
                if endpoint_uri.comparable(b.record.uri) == wanted
            ),
            None,
        )

    def retry_policy(
        self, service: str, method: str, deployment_id: str = ""
    ) -> protocol_pb2.RetryPolicy | None:
        """The retry policy declared for a handler by `deployment_id` (the one an
        invocation is pinned to) or, without it, by the deployment routing `service`."""
        if not deployment_id:
            target = self._services.get(service)
            deployment_id = target.deployment_id if target else ""
        built = self._deployments.get(deployment_id)
        if built is None:
            return None
        for p in built.record.retry_policies:
            if p.service == service and p.method == method:
                return p.policy
        return None

    def services(self) -> list[Service]:
        """Every routable service, by name."""
        return [self._services[name] for name in sorted(self._services)]

    def service(self, name: str) -> Service | None:
        """A routable service by name (as its newest deployment declares it)."""
        return self._services.get(name)

    def service_on(self, deployment_id: str, name: str) -> Service | None:
        """A service as a given deployment declares it (for pinned invocations)."""
        built = self._deployments.get(deployment_id)
        return built.services.get(name) if built else None

    def pools(self, symbol: str = "") -> list[descriptor_pool.DescriptorPool]:
        """Descriptor pools to look `symbol` up in, in order: the pool of the deployment
        routing the service that `symbol` names or lies in, then every deployment's,
        newest first."""
        ordered = [b.pool for b in reversed(self._ordered())]
        service = symbol
        while service:
            target = self._services.get(service)
            if target is not None:
                first = self._deployments[target.deployment_id].pool
                return [first, *(p for p in ordered if p is not first)]
            service = service.rpartition(".")[0]
        return ordered

    def add(self, deployment: Deployment) -> None:
        """Adds or replaces a deployment and rebuilds the routing table.

        Raises:
            RegistrationError: the deployment's services cannot be served.
        """
        self.install(self.prepare(deployment))

    def prepare(self, deployment: Deployment) -> Built:
        """Validates a deployment and builds its descriptors, changing nothing.

        Raises:
            ProtocolViolation: its descriptors do not build or lack a service it hosts.
            RegistrationError: a service cannot be served as declared.
        """
        pool = _pool(deployment.files)
        self.check(deployment, pool)
        return Built(deployment, pool, _routes(deployment, pool))

    def install(self, built: Built) -> None:
        """Adds (or replaces) a prepared deployment; each service routes to the newest
        deployment that hosts it."""
        self._deployments = {**self._deployments, built.record.id: built}
        self._reroute()

    def remove(self, deployment_id: str) -> None:
        """Drops a deployment; its services route to the next newest that hosts them."""
        self._deployments = {k: v for k, v in self._deployments.items() if k != deployment_id}
        self._reroute()

    def _reroute(self) -> None:
        routes: dict[str, Service] = {}
        for built in self._ordered():
            routes.update(built.services)
        self._services = routes

    def check(
        self, deployment: Deployment, pool: descriptor_pool.DescriptorPool | None = None
    ) -> None:
        """Validates a deployment's services without adding it.

        Raises:
            ProtocolViolation: its descriptors do not build or lack a service it hosts.
            RegistrationError: naming the service, method or field at fault.
        """
        if pool is None:
            pool = _pool(deployment.files)
        services = _services(deployment.files)
        messages = _messages(deployment.files)
        if not deployment.services:
            raise ProtocolViolation("the endpoint hosts no services")
        for name in deployment.services:
            if name not in services:
                raise ProtocolViolation(
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
                    request = _message(pool, messages, name, m.input_type)
                    keys = [f for f in request.field if f.options.Extensions[options_pb2.key]]
                    if (
                        len(keys) != 1
                        or keys[0].type != descriptor_pb2.FieldDescriptorProto.TYPE_STRING
                    ):
                        raise RegistrationError(
                            f"{name}/{m.name}: the request {m.input_type.lstrip('.')} of a keyed "
                            "service needs exactly one string field marked "
                            "[(durable.v1.key) = true]"
                        )
        hosted = {
            f"{name}/{m.name}" for name in deployment.services for m in services[name][1].method
        }
        for missing in deployment.missing_handlers:
            if missing not in hosted:
                raise ProtocolViolation(
                    f"it names {missing!r} among its missing handlers, which is not a method "
                    "of a service it hosts"
                )


def check_declared_limits(deployment: Deployment) -> None:
    """Refuses limits in the deployment's `.proto` that no limit may have (a new
    registration only: a deployment stored before keeps loading, its buckets bounded).

    Raises:
        RegistrationError: naming the service or handler and the limit's problem.
    """
    services = _services(deployment.files)
    for name in deployment.services:
        for method, (_, rate) in _declared_limits(services[name][1]).items():
            problem = rate_problem(rate)
            if problem is not None:
                scope = f"{name}/{method}" if method else name
                raise RegistrationError(f"{scope}: the limit it declares: {problem}")


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


def _pool(files: descriptor_pb2.FileDescriptorSet) -> descriptor_pool.DescriptorPool:
    """A pool of the deployment's own files alone, each added after its imports.

    Raises:
        ProtocolViolation: a file is sent twice, imports one that was not sent, or
            does not build (the message names it).
    """
    by_name: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for f in files.file:
        if f.name in by_name:
            raise ProtocolViolation(f"the descriptor file {f.name!r} was sent twice")
        by_name[f.name] = f
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str, path: tuple[str, ...]) -> None:
        if name in added:
            return
        if name in path:
            raise ProtocolViolation(f"descriptor files import each other: {' -> '.join(path)}")
        f = by_name[name]
        for dep in f.dependency:
            if dep not in by_name:
                raise ProtocolViolation(
                    f"the descriptor file {name!r} imports {dep!r}, which the endpoint did not send"
                )
            add(dep, (*path, name))
        try:
            pool.AddSerializedFile(f.SerializeToString())
        except Exception as e:  # TypeError from upb, whatever the message
            raise ProtocolViolation(f"the descriptor file {name!r} does not build: {e}") from None
        added.add(name)

    for name in by_name:
        add(name, ())
    return pool


def _message(
    pool: descriptor_pool.DescriptorPool,
    messages: dict[str, descriptor_pb2.DescriptorProto],
    service: str,
    type_name: str,
) -> descriptor_pb2.DescriptorProto:
    """The proto of a method's message type (read there, where our options parse).

    Raises:
        ProtocolViolation: the type is not in the endpoint's descriptors.
    """
    try:
        full = pool.FindMessageTypeByName(type_name.lstrip(".")).full_name
        return messages[f".{full}"]
    except KeyError:
        raise ProtocolViolation(
            f"{service} uses the message {type_name.lstrip('.')}, which is missing from the "
            "endpoint's descriptors"
        ) from None


def _routes(deployment: Deployment, pool: descriptor_pool.DescriptorPool) -> dict[str, Service]:
    """The services a deployment hosts, with message classes from its own pool."""
    services = _services(deployment.files)
    messages = _messages(deployment.files)
    routes: dict[str, Service] = {}
    missing = set(deployment.missing_handlers)
    for name in deployment.services:
        _, proto = services[name]
        kind = KIND_NAMES.get(proto.options.Extensions[options_pb2.service_kind], "service")
        methods = {}
        for m in proto.method:
            key_field = next(
                (
                    f.name
                    for f in _message(pool, messages, name, m.input_type).field
                    if f.options.Extensions[options_pb2.key]
                ),
                None,
            )
            try:
                input_type = pool.FindMessageTypeByName(m.input_type.lstrip("."))
                output_type = pool.FindMessageTypeByName(m.output_type.lstrip("."))
            except KeyError as e:
                raise ProtocolViolation(
                    f"{name}/{m.name}: a message type is missing from the endpoint's "
                    f"descriptors: {e}"
                ) from None
            methods[m.name] = Method(
                name=m.name,
                input_type=message_factory.GetMessageClass(input_type),
                output_type=message_factory.GetMessageClass(output_type),
                shared=m.options.Extensions[options_pb2.handler_kind] == options_pb2.SHARED,
                key_field=key_field if kind != "service" else None,
                implemented=f"{name}/{m.name}" not in missing,
            )
        routes[name] = Service(
            name=name,
            kind=kind,
            deployment_id=deployment.id,
            methods=methods,
            limits=_declared_limits(proto),
        )
    return routes


def _declared_limits(proto: descriptor_pb2.ServiceDescriptorProto) -> dict[str, tuple[int, float]]:
    """The (durable.v1.service_limits) and (durable.v1.handler_limits) options that are set."""
    found: dict[str, options_pb2.Limits] = {
        "": proto.options.Extensions[options_pb2.service_limits]
    }
    for m in proto.method:
        found[m.name] = m.options.Extensions[options_pb2.handler_limits]
    return {
        method: (limit.concurrency, limit.rate)
        for method, limit in found.items()
        if limit.concurrency or limit.rate > 0
    }


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
        BadRequest: UNIMPLEMENTED for an unknown service or method or one its endpoint
            left without a handler, INVALID_ARGUMENT for
            a body that does not parse or a keyed call without its key.
    """
    svc = registry.service(service)
    if svc is None:
        raise BadRequest(
            codes.UNIMPLEMENTED, f"unknown service {service}: no registered deployment hosts it"
        )
    m = svc.methods.get(method)
    if m is None:
        raise BadRequest(codes.UNIMPLEMENTED, f"unknown method {method} of service {service}")
    if not m.implemented:
        raise BadRequest(
            codes.UNIMPLEMENTED,
            f"{service}/{method} is not implemented: the endpoint"
            f"{registry.at(svc.deployment_id)} (deployment "
            f"{svc.deployment_id}) has no handler for it; implement it and register the "
            "deployment again",
        )
    try:
        message = m.input_type.FromString(body)
    except Exception as e:  # DecodeError and friends
        raise BadRequest(
            codes.INVALID_ARGUMENT,
            f"the request body does not parse as {m.input_type.DESCRIPTOR.full_name}: {e}",
        ) from None
    key = ""
    if m.key_field is not None:
        key = str(getattr(message, m.key_field))
        if not key:
            raise BadRequest(
                codes.INVALID_ARGUMENT,
                f"missing key: {service} is keyed by the field {m.key_field!r} of "
                f"{m.input_type.DESCRIPTOR.full_name}, which must be set",
            )
        check_key(service, key)
    return svc, m, key


def check_key(service: str, key: str) -> None:
    """Refuses an object or workflow key that storage cannot hold.

    Raises:
        BadRequest: INVALID_ARGUMENT naming the limit.
    """
    check_part(f"the key of {service}", key)


def check_part(what: str, value: str) -> None:
    """Refuses a key or a name stored in keys (`what` says which) that storage cannot
    hold.

    Raises:
        BadRequest: INVALID_ARGUMENT naming the limit.
    """
    try:
        keys.check_part(value.encode(), what)
    except keys.KeyTooLong as e:
        raise BadRequest(codes.INVALID_ARGUMENT, str(e)) from None
