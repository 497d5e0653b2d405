"""Server reflection over whatever services are registered right now."""

from __future__ import annotations

from typing import Any

from grpc_reflection.v1alpha import _async as reflection

from .. import registry as reg


class DynamicReflection(reflection.ReflectionServicer):  # type: ignore[misc]
    """Answers `grpcurl list/describe` from the registry's current descriptor pool."""

    def __init__(self, registry: reg.Registry, extra: tuple[str, ...] = ()) -> None:
        super().__init__(service_names=extra)
        self._registry = registry
        self._extra = extra

    @property
    def _pool(self) -> Any:
        return self._registry.pool

    @_pool.setter
    def _pool(self, value: Any) -> None:
        pass  # the base class assigns it; the registry owns the pool

    @property
    def _service_names(self) -> tuple[str, ...]:
        return tuple(sorted({*self._extra, *(s.name for s in self._registry.services())}))

    @_service_names.setter
    def _service_names(self, value: Any) -> None:
        pass
