"""The broker's JSON renderings of journal payloads (`broker.rendering`), no network."""

from __future__ import annotations

import json
from typing import Any

from durable.v1 import invocation_pb2, journal_pb2
from flights import flights_pb2
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from trips import trips_pb2

from broker import rendering
from tests.unit.test_partition import make_registry

Entry = journal_pb2.JournalEntry
FieldType = descriptor_pb2.FieldDescriptorProto.Type
Label = descriptor_pb2.FieldDescriptorProto.Label
Result = journal_pb2.Result


def test_as_json_renders_the_type_and_refuses_other_bytes() -> None:
    data = trips_pb2.ReserveTripResponse(status="success", tripId="t1").SerializeToString()
    assert json.loads(rendering.as_json(trips_pb2.ReserveTripResponse, data)) == {
        "status": "success",
        "tripId": "t1",
    }
    assert rendering.as_json(trips_pb2.ReserveTripResponse, b"\xff\xff") == ""
    # JSON bytes parse as a message with unknown fields only: not this type.
    assert rendering.as_json(trips_pb2.ReserveTripResponse, b'{"x": 1}') == ""


def test_render_uses_each_entry_s_method_types() -> None:
    registry = make_registry()
    record = invocation_pb2.Invocation(
        service="trips.Trips",
        method="Reserve",
        result=Result(value=trips_pb2.ReserveTripResponse(status="success").SerializeToString()),
    )
    flight = flights_pb2.ReserveRequest(trip_id="t1")
    journal = [
        Entry(
            input=journal_pb2.InputCommand(
                request=trips_pb2.ReserveTripRequest().SerializeToString()
            )
        ),
        Entry(
            call=journal_pb2.CallCommand(
                service="flights.Flights", method="Reserve", request=flight.SerializeToString()
            ),
            result=Result(
                value=flights_pb2.BookingStatus(trip_id="t1", state="reserved").SerializeToString()
            ),
        ),
        Entry(call=journal_pb2.CallCommand(service="gone.Gone", method="X", request=b"\x08\x01")),
        Entry(run=journal_pb2.RunCommand(name="n"), result=Result(value=b"1")),
        Entry(output=journal_pb2.OutputCommand(), result=record.result),
    ]

    rendered, result_json = rendering.render(registry, record, journal, lambda _: None)

    assert [(r.request_json, r.result_json) for r in rendered] == [
        ("{}", ""),
        ('{"tripId": "t1"}', '{"tripId": "t1", "state": "reserved"}'),
        ("", ""),
        ("", ""),
        ("", '{"status": "success"}'),
    ]
    assert result_json == '{"status": "success"}'


def _types_with_any() -> tuple[type[Message], type[Message]]:
    """`anyx.Req` (a `google.protobuf.Any` field) and `anyx.Inner`, in a pool of their
    own: where the broker keeps a deployment's types, not protobuf's default pool."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(any_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="anyx.proto", package="anyx", syntax="proto3", dependency=["google/protobuf/any.proto"]
    )
    inner = file.message_type.add(name="Inner")
    inner.field.add(name="units", number=1, type=FieldType.TYPE_INT64, label=Label.LABEL_OPTIONAL)
    req = file.message_type.add(name="Req")
    req.field.add(
        name="extra",
        number=1,
        type=FieldType.TYPE_MESSAGE,
        type_name=".google.protobuf.Any",
        label=Label.LABEL_OPTIONAL,
    )
    pool.Add(file)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("anyx.Req")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("anyx.Inner")),
    )


def test_an_any_of_the_services_own_type_renders() -> None:
    # describe, export and the console's invocation page failed on it: "Can not find
    # message descriptor by type_url: type.googleapis.com/anyx.Inner".
    req_type, inner_type = _types_with_any()
    request: Any = req_type()
    request.extra.Pack(inner_type(units=7))
    data = request.SerializeToString()
    expected = {"extra": {"@type": "type.googleapis.com/anyx.Inner", "units": "7"}}
    assert json.loads(rendering.as_json(req_type, data)) == expected
    # An Any of a type no registered file defines is shown as not renderable.
    unknown: Any = req_type()
    unknown.extra.type_url = "type.googleapis.com/nowhere.Gone"
    unknown.extra.value = b"\x08\x01"
    assert rendering.as_json(req_type, unknown.SerializeToString()) == ""
    # Nor one of a known type whose value does not parse (describe failed UNKNOWN).
    corrupt: Any = req_type()
    corrupt.extra.type_url = "type.googleapis.com/anyx.Inner"
    corrupt.extra.value = b"\xff\xff\xff"
    assert rendering.as_json(req_type, corrupt.SerializeToString()) == ""
