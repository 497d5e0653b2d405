"""Whether a deployment replaced in place breaks what its invocations in flight rely on.

An invocation in flight replays its journal on whatever code its deployment's URI serves
next, which reads the request (and the responses) journaled under the old contract. What
must hold is protobuf's own compatibility, field by field number, read from old to new: a
field present in both keeps its cardinality, its type or a wider one that reads the same
bytes as the same values (int32 to int64 does; int64 to int32 cuts, int64 to string
breaks), its proto2 default, and, for a message, the same again inside it; and fields
that were apart do not come to share a oneof. Fields added or removed, renamed fields
or messages, the order of declarations, files or services, comments, and other handlers
break nothing on the wire, and a restart of the same code, or the most common change (a
new field), must not be refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor as F

from .registry import Registry, Service

# Old type -> new type changes that read the old bytes as the same values: widening
# only (an int64 read as int32 is cut silently, bytes read as string may not decode).
_READS_THE_SAME = {
    (F.TYPE_INT32, F.TYPE_INT64),
    (F.TYPE_UINT32, F.TYPE_UINT64),
    (F.TYPE_UINT32, F.TYPE_INT64),
    (F.TYPE_SINT32, F.TYPE_SINT64),
    (F.TYPE_STRING, F.TYPE_BYTES),
    (F.TYPE_ENUM, F.TYPE_INT32),
    (F.TYPE_ENUM, F.TYPE_INT64),
}


def breaks(old: Any, new: Any) -> list[str]:
    """How reading `old`'s bytes (a message descriptor) as `new` goes wrong: one line per
    field, empty when it does not."""
    return _Comparison().breaks(old, new)


class _Comparison:
    """One comparison's memory: each pair of message types is compared once, however
    many fields hold it (a contract that reuses a message at every level made the
    walk exponential: seconds at depth 12, with the broker's loop held)."""

    def __init__(self) -> None:
        self._done: dict[tuple[str, str], list[str]] = {}

    def breaks(self, old: Any, new: Any) -> list[str]:
        pair = (old.full_name, new.full_name)
        known = self._done.get(pair)
        if known is not None:
            return known  # compared already (or being compared: a recursive type)
        out: list[str] = []
        self._done[pair] = out
        by_number = {f.number: f for f in new.fields}
        for was in old.fields:
            now = by_number.get(was.number)
            if now is None:
                continue
            where = f"field {was.number} ({was.name})"
            if was.is_repeated != now.is_repeated:
                out.append(f"{where} is {_cardinality(now)}, was {_cardinality(was)}")
            elif was.type != now.type and (was.type, now.type) not in _READS_THE_SAME:
                out.append(f"{where} is a {_type_name(now)}, was a {_type_name(was)}")
            elif not _same(_default(was), _default(now)):
                out.append(f"{where} defaults to {_default(now)!r}, was {_default(was)!r}")
            elif was.message_type is not None and now.message_type is not None:
                inner = self.breaks(was.message_type, now.message_type)
                out += [f"{where}: {b}" for b in inner]
        out += _oneofs_merged(old, new, by_number)
        return out


def _oneofs_merged(old: Any, new: Any, by_number: dict[int, Any]) -> list[str]:
    """Fields that were apart and now share a oneof: of old bytes that set several of
    them, only the last one read survives."""
    out = []
    for oneof in new.oneofs:
        kept = [f for f in old.fields if f.number in {g.number for g in oneof.fields}]
        groups = {f.containing_oneof.full_name if f.containing_oneof else f.number for f in kept}
        if len(kept) > 1 and len(groups) > 1:
            names = ", ".join(f"{f.number} ({f.name})" for f in kept)
            out.append(f"fields {names} are now in one oneof {oneof.name}")
    return out


def _same(a: object, b: object) -> bool:
    """Equal defaults (a NaN default is its own)."""
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return a == b or both_nan


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
        if new_service is None or new is None or (old.implemented and not new.implemented):
            out.append(f"{name} is gone")
            continue
        if new_service.kind != old_service.kind:
            out.append(f"{name}: the service is a {new_service.kind}, was a {old_service.kind}")
        if new.shared != old.shared or _key_number(new) != _key_number(old):
            out.append(f"{name}: its handler kind or key field changed")
        for what, was, now in (
            ("request", old.input_type, new.input_type),
            ("response", old.output_type, new.output_type),
        ):
            problems = breaks(was.DESCRIPTOR, now.DESCRIPTOR)
            if problems:
                out.append(f"{name}: its {what} {'; '.join(problems)}")
    return out


def _key_number(method: Any) -> int | None:
    """The key field's number (a renamed key field is the same key; another number is
    not)."""
    if method.key_field is None:
        return None
    field = method.input_type.DESCRIPTOR.fields_by_name.get(method.key_field)
    return None if field is None else int(field.number)
