"""`python -m tests.endpoints.versioned --listen ADDR --variant V`: one version of a
small contract, `versioned.Greeter/Greet`, for tests of deployment versioning.

The variants differ the way real releases of a `.proto` do:
  v1          the file `versioned/greeter.proto`: `GreetRequest` -> `GreetReply`
  v2-renamed  the same file, its messages renamed `HelloRequest` -> `HelloReply`
  v2-moved    v1's messages in a file of another name (`other/greeter_v2.proto`), as
              the same `.proto` compiled from another include root would be
The wire format is the same in all three, so a client built from any of them can call
any of them. `Greet` replies `"<variant>: hello <name>"`; with `wait` set it first waits
for an awakeable and appends the JSON value it was resolved with.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

import durable
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

SERVICE = "versioned.Greeter"
VARIANTS = ("v1", "v2-renamed", "v2-moved")
_FILE = {"v1": "versioned/greeter.proto", "v2-renamed": "versioned/greeter.proto"}
_PREFIX = {"v1": "Greet", "v2-moved": "Greet", "v2-renamed": "Hello"}


def contract(variant: str) -> descriptor_pb2.FileDescriptorProto:
    """The `.proto` file of a variant, as protoc would describe it."""
    prefix = _PREFIX[variant]
    f = descriptor_pb2.FileDescriptorProto(
        name=_FILE.get(variant, "other/greeter_v2.proto"), package="versioned", syntax="proto3"
    )
    string, boolean = (
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    )
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    request = f.message_type.add(name=f"{prefix}Request")
    request.field.add(name="name", number=1, type=string, label=optional, json_name="name")
    request.field.add(name="wait", number=2, type=boolean, label=optional, json_name="wait")
    reply = f.message_type.add(name=f"{prefix}Reply")
    reply.field.add(name="text", number=1, type=string, label=optional, json_name="text")
    f.service.add(name="Greeter").method.add(
        name="Greet",
        input_type=f".versioned.{prefix}Request",
        output_type=f".versioned.{prefix}Reply",
    )
    return f


def service_descriptor(variant: str) -> descriptor.ServiceDescriptor:
    """`versioned.Greeter` as a variant declares it (in a pool of its own)."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(contract(variant))
    return pool.FindServiceByName(SERVICE)


def message_types(variant: str) -> tuple[type[Message], type[Message]]:
    """The request and reply classes of a variant, for clients in tests."""
    method = service_descriptor(variant).methods_by_name["Greet"]
    return (
        message_factory.GetMessageClass(method.input_type),
        message_factory.GetMessageClass(method.output_type),
    )


def greeter(variant: str) -> durable.Service:
    """The durable service of a variant."""
    service = durable.Service(service_descriptor(variant))
    reply_type = message_factory.GetMessageClass(
        service.descriptor.methods_by_name["Greet"].output_type
    )

    @service.handler("Greet")
    async def greet(ctx: durable.Context, request: Any) -> Message:
        text = f"{variant}: hello {request.name}"
        if request.wait:
            _, value = ctx.awakeable()
            text += f": {json.dumps(await value)}"
        return reply_type(text=text)

    return service


def main() -> None:
    """Serves one variant until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m tests.endpoints.versioned")
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--variant", required=True, choices=VARIANTS)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    durable.serve([greeter(args.variant)], args.listen)


if __name__ == "__main__":
    main()
