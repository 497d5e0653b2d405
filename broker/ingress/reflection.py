"""Server reflection over whatever services are registered right now."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from durable.v1 import ingress_pb2
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import _async as reflection
from grpc_reflection.v1alpha import reflection_pb2

from .. import registry as reg

T = TypeVar("T")


def _own_pool() -> descriptor_pool.DescriptorPool:
    """The broker's own ingress API, health and reflection (and what they import), served
    beside the services, so that grpcurl resolves `grpc.health.v1.Health/Check` as on
    any gRPC server."""
    pool = descriptor_pool.DescriptorPool()

    def add(f: descriptor.FileDescriptor) -> None:
        for dep in f.dependencies:
            add(dep)
        try:
            pool.FindFileByName(f.name)
        except KeyError:
            proto = descriptor_pb2.FileDescriptorProto()
            f.CopyToProto(proto)
            pool.AddSerializedFile(proto.SerializeToString())

    for own in (ingress_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        add(own)
    return pool


class _Descriptors:
    """What the reflection base class calls its pool: every deployment's pool behind one
    face. A service's symbols come from the newest deployment that hosts it; anything
    else from the first pool that has it, newest deployment first."""

    def __init__(self, registry: reg.Registry) -> None:
        self._registry = registry
        self._own = _own_pool()

    def _first(self, symbol: str, find: Callable[[descriptor_pool.DescriptorPool], T]) -> T:
        for pool in (*self._registry.pools(symbol), self._own):
            try:
                return find(pool)
            except KeyError:
                continue
        raise KeyError(symbol)

    def FindFileByName(self, name: str) -> descriptor.FileDescriptor:
        return self._first("", lambda p: p.FindFileByName(name))

    def FindFileContainingSymbol(self, symbol: str) -> descriptor.FileDescriptor:
        return self._first(symbol, lambda p: p.FindFileContainingSymbol(symbol))

    def FindMessageTypeByName(self, name: str) -> descriptor.Descriptor:
        return self._first(name, lambda p: p.FindMessageTypeByName(name))

    # Extensions live in the pool of the message they extend.
    def FindExtensionByNumber(
        self, message: descriptor.Descriptor, number: int
    ) -> descriptor.FieldDescriptor:
        return message.file.pool.FindExtensionByNumber(message, number)

    def FindAllExtensions(self, message: descriptor.Descriptor) -> list[descriptor.FieldDescriptor]:
        return list(message.file.pool.FindAllExtensions(message))


class DynamicReflection(reflection.ReflectionServicer):  # type: ignore[misc]
    """Answers `grpcurl list/describe` from the registered deployments' descriptors."""

    def __init__(self, registry: reg.Registry, extra: tuple[str, ...] = ()) -> None:
        super().__init__(service_names=extra)
        self._registry = registry
        self._extra = extra
        self._descriptors = _Descriptors(registry)

    @property
    def _pool(self) -> Any:
        return self._descriptors

    @_pool.setter
    def _pool(self, value: Any) -> None:
        pass  # the base class assigns it; the registry owns the pools

    @property
    def _service_names(self) -> tuple[str, ...]:
        return tuple(sorted({*self._extra, *(s.name for s in self._registry.services())}))

    @_service_names.setter
    def _service_names(self, value: Any) -> None:
        pass
