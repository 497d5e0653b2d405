"""Whether a deployment replaced in place changes what its invocations in flight rely on.

An invocation in flight replays its journal on whatever code its deployment's URI serves
next. What that code must keep is each pinned handler's contract: its request and
response messages as the wire sees them (field numbers, types, cardinality, nested
messages and enums, recursively), its key field and its kind. Not the file layout: the
order files, services or field declarations come in, comments, other services, or a newer
protobuf's own descriptor files change nothing on the wire, and a restart of the same
code must not be refused over them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .registry import Registry, Service

# A message's shape, as nested tuples (equal shapes: the same wire contract).
Shape = tuple[object, ...]


def message_shape(message: Any, seen: frozenset[str] = frozenset()) -> Shape:
    """What of `message` (a message descriptor) the wire depends on: its fields in
    number order, with their names (the JSON form has them). A message met again inside
    itself (a recursive type) is named, not expanded."""
    if message.full_name in seen:
        return ("recursive", message.full_name)
    inside = seen | {message.full_name}
    fields = []
    for field in sorted(message.fields, key=lambda f: f.number):
        nested: object = None
        if field.message_type is not None:
            nested = message_shape(field.message_type, inside)
        elif field.enum_type is not None:
            nested = tuple(sorted((v.number, v.name) for v in field.enum_type.values))
        fields.append((field.number, field.name, field.type, field.is_repeated, nested))
    # Not its name: a message renamed (or moved to another file) keeps its wire form.
    return tuple(fields)


def changed(
    registry: Registry,
    deployment_id: str,
    replacement: dict[str, Service],
    pinned: Iterable[tuple[str, str]],
) -> list[str]:
    """The pinned handlers (service, method) whose contract `replacement` (the new
    code's services) does not keep, each with what changed."""
    out = []
    for service_name, method_name in sorted(set(pinned)):
        old_service = registry.service_on(deployment_id, service_name)
        old = old_service.methods.get(method_name) if old_service else None
        if old_service is None or old is None:
            continue  # nothing known to compare with
        name = f"{service_name}/{method_name}"
        new_service = replacement.get(service_name)
        new = new_service.methods.get(method_name) if new_service else None
        if new_service is None or new is None:
            out.append(f"{name} is gone")
        elif new_service.kind != old_service.kind:
            out.append(f"{name}: the service is a {new_service.kind}, was a {old_service.kind}")
        elif (new.shared, new.key_field) != (old.shared, old.key_field):
            out.append(f"{name}: its handler kind or key field changed")
        elif message_shape(new.input_type.DESCRIPTOR) != message_shape(old.input_type.DESCRIPTOR):
            out.append(f"{name}: its request {new.input_type.DESCRIPTOR.full_name} changed")
        elif message_shape(new.output_type.DESCRIPTOR) != message_shape(old.output_type.DESCRIPTOR):
            out.append(f"{name}: its response {new.output_type.DESCRIPTOR.full_name} changed")
    return out
