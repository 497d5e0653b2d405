"""Whether a deployment replaced in place breaks what its invocations in flight rely on.

An invocation in flight replays its journal on whatever code its deployment's URI serves
next, which reads the request (and the responses) journaled under the old contract. What
must hold is protobuf's own compatibility, field by field number: a field present in both
keeps its cardinality and a wire type that reads the same bytes (int32 and int64 do;
int64 and string do not), its proto2 default, and, for a message, the same again inside
it. Fields added or removed, renamed fields or messages, the order of declarations,
files or services, comments, and other handlers break nothing on the wire, and a restart
of the same code, or the most common change (a new field), must not be refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor as F

from .registry import Registry, Service

# Types that read one another's bytes (protobuf's compatibility rules, minus the
# lossy ones: a float is not a double).
_WIRE_CLASS = {
    **dict.fromkeys((F.TYPE_INT32, F.TYPE_INT64, F.TYPE_UINT32, F.TYPE_UINT64), "varint"),
    **dict.fromkeys((F.TYPE_BOOL, F.TYPE_ENUM), "varint"),
    **dict.fromkeys((F.TYPE_SINT32, F.TYPE_SINT64), "zigzag"),
    **dict.fromkeys((F.TYPE_FIXED32, F.TYPE_SFIXED32), "fixed32"),
    **dict.fromkeys((F.TYPE_FIXED64, F.TYPE_SFIXED64), "fixed64"),
    **dict.fromkeys((F.TYPE_STRING, F.TYPE_BYTES), "bytes"),
    F.TYPE_FLOAT: "float",
    F.TYPE_DOUBLE: "double",
    F.TYPE_MESSAGE: "message",
    F.TYPE_GROUP: "group",
}


def breaks(old: Any, new: Any, seen: frozenset[tuple[str, str]] = frozenset()) -> list[str]:
    """How reading `old`'s bytes (a message descriptor) as `new` goes wrong: one line per
    field, empty when it does not."""
    pair = (old.full_name, new.full_name)
    if pair in seen:
        return []  # a recursive type, compared already
    inside = seen | {pair}
    by_number = {f.number: f for f in new.fields}
    out = []
    for was in old.fields:
        now = by_number.get(was.number)
        if now is None:
            continue
        where = f"field {was.number} ({was.name})"
        if was.is_repeated != now.is_repeated:
            out.append(f"{where} is {_cardinality(now)}, was {_cardinality(was)}")
        elif _WIRE_CLASS.get(was.type) != _WIRE_CLASS.get(now.type):
            out.append(f"{where} is a {_type_name(now)}, was a {_type_name(was)}")
        elif _default(was) != _default(now):
            out.append(f"{where} defaults to {_default(now)!r}, was {_default(was)!r}")
        elif was.message_type is not None and now.message_type is not None:
            out += [f"{where}: {b}" for b in breaks(was.message_type, now.message_type, inside)]
    return out


def _cardinality(field: Any) -> str:
    return "repeated" if field.is_repeated else "singular"


def _type_name(field: Any) -> str:
    if field.message_type is not None:
        return f"message {field.message_type.full_name}"
    return descriptor_pb2.FieldDescriptorProto.Type.Name(field.type).removeprefix("TYPE_").lower()


def _default(field: Any) -> object:
    """What an absent value reads as (a proto2 field may declare it)."""
    if field.is_repeated or field.message_type is not None:
        return None
    value = field.default_value
    return value.encode() if isinstance(value, str) else value  # a string reads as bytes


def changed(
    registry: Registry,
    deployment_id: str,
    replacement: dict[str, Service],
    pinned: Iterable[tuple[str, str]],
) -> list[str]:
    """The pinned handlers (service, method) that `replacement` (the new code's
    services) breaks, each with how."""
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
            continue
        if new_service.kind != old_service.kind:
            out.append(f"{name}: the service is a {new_service.kind}, was a {old_service.kind}")
        if (new.shared, new.key_field) != (old.shared, old.key_field):
            out.append(f"{name}: its handler kind or key field changed")
        for what, was, now in (
            ("request", old.input_type, new.input_type),
            ("response", old.output_type, new.output_type),
        ):
            problems = breaks(was.DESCRIPTOR, now.DESCRIPTOR)
            if problems:
                out.append(f"{name}: its {what} {'; '.join(problems)}")
    return out
