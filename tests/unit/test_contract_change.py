"""What counts as a changed contract when a deployment is replaced in place under
invocations in flight (`broker.contract_change`): the wire contract of a message, not
the order its fields are declared in. An attack restarted the same code with its
services in another order, or a message's declarations reordered, and registration was
refused."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool

from broker.contract_change import message_shape

Field = descriptor_pb2.FieldDescriptorProto


def _shape(*fields: tuple[str, int, Any], enum_values: tuple[str, ...] = ("A", "B")) -> Any:
    """The shape of `t.M` built from `fields` (name, number, type), declared in that
    order, with a nested `t.Inner` for TYPE_MESSAGE fields and `t.E` for TYPE_ENUM."""
    file = descriptor_pb2.FileDescriptorProto(name="t.proto", package="t", syntax="proto3")
    enum = file.enum_type.add(name="E")
    for number, name in enumerate(enum_values):
        enum.value.add(name=name, number=number)
    inner = file.message_type.add(name="Inner")
    inner.field.add(name="x", number=1, type=Field.TYPE_INT64, label=Field.LABEL_OPTIONAL)
    message = file.message_type.add(name="M")
    for name, number, kind in fields:
        field = message.field.add(name=name, number=number, type=kind, label=Field.LABEL_OPTIONAL)
        if kind == Field.TYPE_MESSAGE:
            field.type_name = ".t.Inner"
        if kind == Field.TYPE_ENUM:
            field.type_name = ".t.E"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_shape(pool.FindMessageTypeByName("t.M"))


A = ("a", 1, Field.TYPE_STRING)
B = ("b", 2, Field.TYPE_MESSAGE)
C = ("c", 3, Field.TYPE_ENUM)


def test_the_order_of_declarations_is_not_the_contract() -> None:
    assert _shape(A, B, C) == _shape(C, A, B)


def test_nor_is_a_message_s_name() -> None:
    # A message renamed (or moved to another file) keeps its wire form, as the
    # versioning tests' `v2-renamed` release does.
    file = descriptor_pb2.FileDescriptorProto(name="n.proto", package="n", syntax="proto3")
    for name in ("GreetRequest", "HelloRequest"):
        message = file.message_type.add(name=name)
        message.field.add(name="name", number=1, type=Field.TYPE_STRING, label=Field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    greet, hello = (pool.FindMessageTypeByName(f"n.{n}") for n in ("GreetRequest", "HelloRequest"))
    assert message_shape(greet) == message_shape(hello)


def test_a_type_number_name_or_nested_change_is() -> None:
    base = _shape(A, B, C)
    assert _shape(("a", 1, Field.TYPE_INT64), B, C) != base  # the attack's change
    assert _shape(("a", 4, Field.TYPE_STRING), B, C) != base
    assert _shape(("z", 1, Field.TYPE_STRING), B, C) != base
    assert _shape(A, B) != base
    assert _shape(A, B, C, enum_values=("A", "C")) != base


def test_a_recursive_message_has_a_shape() -> None:
    file = descriptor_pb2.FileDescriptorProto(name="r.proto", package="r", syntax="proto3")
    node = file.message_type.add(name="Node")
    node.field.add(
        name="next",
        number=1,
        type=Field.TYPE_MESSAGE,
        type_name=".r.Node",
        label=Field.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    shape = message_shape(pool.FindMessageTypeByName("r.Node"))
    assert shape == ((1, "next", Field.TYPE_MESSAGE, False, ("recursive", "r.Node")),)
