"""What breaks invocations in flight when a deployment is replaced in place
(`broker.contract_change.breaks`): protobuf's own compatibility, field by number. The
attack's change (int64 to string) breaks; a restart with the services in another order,
declarations reordered, a new field, a renamed message, int32 to int64 do not (a second
attack found the first cut refused those)."""

from __future__ import annotations

import time
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool

from broker.contract_change import breaks

Field = descriptor_pb2.FieldDescriptorProto
STRING, INT64, INT32 = Field.TYPE_STRING, Field.TYPE_INT64, Field.TYPE_INT32
MESSAGE = Field.TYPE_MESSAGE


def _message(
    *fields: tuple[str, int, Any],
    name: str = "M",
    repeated: tuple[str, ...] = (),
    syntax: str = "proto3",
    defaults: dict[str, str] | None = None,
    inner: Any = INT64,
) -> Any:
    """`t.<name>` with `fields` (name, number, type) declared in that order; a
    TYPE_MESSAGE field holds `t.Inner`, whose field 1 has type `inner`."""
    file = descriptor_pb2.FileDescriptorProto(name="t.proto", package="t", syntax=syntax)
    nested = file.message_type.add(name="Inner")
    nested.field.add(name="x", number=1, type=inner, label=Field.LABEL_OPTIONAL)
    message = file.message_type.add(name=name)
    for field_name, number, kind in fields:
        label = Field.LABEL_REPEATED if field_name in repeated else Field.LABEL_OPTIONAL
        field = message.field.add(name=field_name, number=number, type=kind, label=label)
        if kind == MESSAGE:
            field.type_name = ".t.Inner"
        if defaults and field_name in defaults:
            field.default_value = defaults[field_name]
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return pool.FindMessageTypeByName(f"t.{name}")


A, B, C = ("a", 1, STRING), ("b", 2, MESSAGE), ("c", 3, INT32)
BASE = _message(A, B, C)


def test_harmless_changes_break_nothing() -> None:
    assert breaks(BASE, _message(C, A, B)) == []  # declaration order
    assert breaks(BASE, _message(A, B, C, ("d", 4, STRING))) == []  # a new field
    assert breaks(BASE, _message(A, B)) == []  # a field removed
    assert breaks(BASE, _message(("z", 1, STRING), B, C)) == []  # a field renamed
    assert breaks(BASE, _message(A, B, ("c", 3, INT64))) == []  # int32 to int64
    assert breaks(BASE, _message(("a", 1, Field.TYPE_BYTES), B, C)) == []  # string to bytes
    nan = _message(("d", 1, Field.TYPE_DOUBLE), syntax="proto2", defaults={"d": "nan"})
    assert breaks(nan, nan) == []  # NaN != NaN refused it
    assert breaks(BASE, _message(A, B, C, name="Renamed")) == []


def test_what_reads_old_bytes_wrong_breaks() -> None:
    assert breaks(BASE, _message(("a", 1, INT64), B, C)) == ["field 1 (a) is a int64, was a string"]
    assert breaks(BASE, _message(A, B, C, repeated=("c",))) == [
        "field 3 (c) is repeated, was singular"
    ]
    assert breaks(BASE, _message(A, B, C, inner=STRING)) == [
        "field 2 (b): field 1 (x) is a string, was a int64"
    ]
    # Narrowing cuts silently (2**40 read as int32 is 0); bytes may not decode as text.
    assert breaks(_message(("c", 3, INT64)), _message(("c", 3, INT32))) == [
        "field 3 (c) is a int32, was a int64"
    ]
    assert breaks(_message(("a", 1, Field.TYPE_BYTES)), _message(A)) == [
        "field 1 (a) is a string, was a bytes"
    ]


def test_fields_that_come_to_share_a_oneof_break() -> None:
    # Old bytes that set both keep only the last one read.
    old = _message(A, C)
    file = descriptor_pb2.FileDescriptorProto(name="o.proto", package="t", syntax="proto3")
    message = file.message_type.add(name="M")
    message.oneof_decl.add(name="choice")
    for name, number, kind in (A, C):
        message.field.add(
            name=name, number=number, type=kind, label=Field.LABEL_OPTIONAL, oneof_index=0
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    new = pool.FindMessageTypeByName("t.M")
    assert breaks(old, new) == ["fields 1 (a), 3 (c) are now in one oneof choice"]


def test_a_widely_reused_message_is_compared_once() -> None:
    # Each level holds three fields of the next: the walk was exponential (2.2 s at
    # depth 12, hours at 20) with the broker's loop held.
    file = descriptor_pb2.FileDescriptorProto(name="d.proto", package="d", syntax="proto3")
    depth = 40
    for level in range(depth):
        message = file.message_type.add(name=f"L{level}")
        message.field.add(name="v", number=1, type=INT64, label=Field.LABEL_OPTIONAL)
        if level + 1 < depth:
            for number in (2, 3, 4):
                message.field.add(
                    name=f"f{number}",
                    number=number,
                    type=MESSAGE,
                    type_name=f".d.L{level + 1}",
                    label=Field.LABEL_OPTIONAL,
                )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    top = pool.FindMessageTypeByName("d.L0")
    started = time.perf_counter()
    assert breaks(top, top) == []
    assert time.perf_counter() - started < 5  # a bound on the walk, not a speed target


def test_a_proto2_default_that_changes_breaks() -> None:
    # An absent value reads as the default: an attack's in-flight call that never set
    # the field came back with the new default's effect.
    old = _message(("on", 1, Field.TYPE_BOOL), syntax="proto2")
    new = _message(("on", 1, Field.TYPE_BOOL), syntax="proto2", defaults={"on": "true"})
    assert breaks(old, new) == ["field 1 (on) defaults to True, was False"]


def test_a_recursive_message_renamed_breaks_nothing() -> None:
    def node(name: str) -> Any:
        file = descriptor_pb2.FileDescriptorProto(name="r.proto", package="r", syntax="proto3")
        message = file.message_type.add(name=name)
        message.field.add(
            name="next",
            number=1,
            type=MESSAGE,
            type_name=f".r.{name}",
            label=Field.LABEL_OPTIONAL,
        )
        pool = descriptor_pool.DescriptorPool()
        pool.Add(file)
        return pool.FindMessageTypeByName(f"r.{name}")

    assert breaks(node("Node"), node("Link")) == []
